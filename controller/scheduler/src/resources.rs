//! Resource arithmetic: what a pod requests and what a node can give, as integers.
//!
//! CPU is counted in millicores, memory and ephemeral storage in bytes, extended
//! resources (`example.com/gpu`, `hugepages-2Mi`) in whole units. A pod's request follows
//! upstream's rule: the larger of the sum over app containers (plus restartable "sidecar"
//! init containers) and the peak of any single init container (plus the sidecars started
//! before it), plus the pod overhead.

use std::collections::BTreeMap;

use flotilla_shared::quantity::Quantity;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;

/// CPU assumed for scoring when a container states no CPU request (kube-scheduler's 100m).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory assumed for scoring when a container states no memory request (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 << 20;

/// A bundle of resource amounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Extended and hugepages resources by name, in whole units, sorted by name.
    pub scalar: Vec<(String, i64)>,
}

impl Resources {
    /// Reads a resource list (`requests`, `limits`, `allocatable`); `field` names it in errors.
    pub fn from_list(
        list: &BTreeMap<String, KQuantity>,
        field: &str,
    ) -> Result<Resources, InvalidQuantity> {
        let mut r = Resources::default();
        for (name, value) in list {
            let q = parse(value, field, name)?;
            match name.as_str() {
                "cpu" => r.milli_cpu = q.millis(),
                "memory" => r.memory = q.units(),
                "ephemeral-storage" => r.ephemeral_storage = q.units(),
                // `pods` is the node's pod count, handled apart; `storage` is not scheduled.
                "pods" | "storage" => {}
                other => r.set_scalar(other, q.units()),
            }
        }
        Ok(r)
    }

    /// The amount of the extended resource `name` (0 when absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .map(|i| self.scalar[i].1)
            .unwrap_or(0)
    }

    fn set_scalar(&mut self, name: &str, value: i64) {
        match self.scalar.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalar[i].1 = value,
            Err(i) => self.scalar.insert(i, (name.to_owned(), value)),
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let now = self.scalar(name);
            self.set_scalar(name, now.saturating_add(*v));
        }
    }

    /// Subtracts `other` from `self`.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let now = self.scalar(name);
            self.set_scalar(name, now.saturating_sub(*v));
        }
        self.scalar.retain(|(_, v)| *v != 0);
    }

    /// Raises each amount of `self` to at least that of `other`.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let now = self.scalar(name);
            if *v > now {
                self.set_scalar(name, *v);
            }
        }
    }

    /// True when nothing at all is requested.
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.iter().all(|(_, v)| *v == 0)
    }
}

/// A quantity in a pod or node that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidQuantity {
    /// Where it is, e.g. `spec.containers[0].resources.requests[cpu]`.
    pub field: String,
    /// The parser's complaint.
    pub error: String,
}

impl std::fmt::Display for InvalidQuantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.error)
    }
}

impl std::error::Error for InvalidQuantity {}

fn parse(value: &KQuantity, field: &str, name: &str) -> Result<Quantity, InvalidQuantity> {
    Quantity::parse(&value.0).map_err(|e| InvalidQuantity {
        field: format!("{field}[{name}]"),
        error: e.to_string(),
    })
}

/// What a pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// The amounts the fit filter checks against free allocatable.
    pub resources: Resources,
    /// CPU for scoring: containers without a CPU request count as 100m.
    pub nonzero_milli_cpu: i64,
    /// Memory for scoring: containers without a memory request count as 200 MiB.
    pub nonzero_memory: i64,
}

impl PodRequests {
    /// Computes a pod's requests with upstream's init-container and sidecar rule.
    pub fn of(spec: &PodSpec) -> Result<PodRequests, InvalidQuantity> {
        let mut sum = Resources::default();
        let (mut nz_cpu, mut nz_mem) = (0i64, 0i64);
        for (i, c) in spec.containers.iter().enumerate() {
            let r = container_requests(c, &format!("spec.containers[{i}]"))?;
            let (cpu, mem) = nonzero(c, &r);
            nz_cpu += cpu;
            nz_mem += mem;
            sum.add(&r);
        }
        // Restartable init containers ("sidecars") keep running next to the app
        // containers; ordinary init containers run alone, one after another, beside
        // the sidecars started before them.
        let mut sidecars = Resources::default();
        let (mut sc_cpu, mut sc_mem) = (0i64, 0i64);
        let mut init_peak = Resources::default();
        let (mut peak_cpu, mut peak_mem) = (0i64, 0i64);
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let r = container_requests(c, &format!("spec.initContainers[{i}]"))?;
            let (cpu, mem) = nonzero(c, &r);
            if c.restart_policy.as_deref() == Some("Always") {
                sidecars.add(&r);
                sc_cpu += cpu;
                sc_mem += mem;
                init_peak.max_with(&sidecars);
                peak_cpu = peak_cpu.max(sc_cpu);
                peak_mem = peak_mem.max(sc_mem);
            } else {
                let mut running = sidecars.clone();
                running.add(&r);
                init_peak.max_with(&running);
                peak_cpu = peak_cpu.max(sc_cpu + cpu);
                peak_mem = peak_mem.max(sc_mem + mem);
            }
        }
        sum.add(&sidecars);
        sum.max_with(&init_peak);
        nz_cpu = (nz_cpu + sc_cpu).max(peak_cpu);
        nz_mem = (nz_mem + sc_mem).max(peak_mem);
        if let Some(overhead) = &spec.overhead {
            let o = Resources::from_list(overhead, "spec.overhead")?;
            nz_cpu += o.milli_cpu;
            nz_mem += o.memory;
            sum.add(&o);
        }
        Ok(PodRequests {
            resources: sum,
            nonzero_milli_cpu: nz_cpu,
            nonzero_memory: nz_mem,
        })
    }
}

/// A container's requests; a resource with a limit but no request requests its limit
/// (the API server's defaulting, applied here too in case it was skipped).
fn container_requests(c: &Container, field: &str) -> Result<Resources, InvalidQuantity> {
    let Some(res) = &c.resources else {
        return Ok(Resources::default());
    };
    let mut list = res.limits.clone().unwrap_or_default();
    for (k, v) in res.requests.iter().flatten() {
        list.insert(k.clone(), v.clone());
    }
    let which = if res.requests.is_some() {
        "requests"
    } else {
        "limits"
    };
    Resources::from_list(&list, &format!("{field}.resources.{which}"))
}

fn nonzero(c: &Container, r: &Resources) -> (i64, i64) {
    let has = |name: &str| {
        c.resources.as_ref().is_some_and(|res| {
            res.requests.as_ref().is_some_and(|m| m.contains_key(name))
                || res.limits.as_ref().is_some_and(|m| m.contains_key(name))
        })
    };
    let cpu = if has("cpu") {
        r.milli_cpu
    } else {
        DEFAULT_MILLI_CPU_REQUEST
    };
    let mem = if has("memory") {
        r.memory
    } else {
        DEFAULT_MEMORY_REQUEST
    };
    (cpu, mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn c(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        json!({"name": name, "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    #[test]
    fn app_containers_add_up() {
        let r = PodRequests::of(&spec(
            json!({"containers": [c("a", "250m", "64Mi"), c("b", "1", "1Gi")]}),
        ))
        .unwrap();
        assert_eq!(r.resources.milli_cpu, 1250);
        assert_eq!(r.resources.memory, (64 << 20) + (1 << 30));
    }

    #[test]
    fn the_largest_init_container_wins_over_a_smaller_sum() {
        let r = PodRequests::of(&spec(json!({
            "initContainers": [c("i1", "2", "10Mi"), c("i2", "100m", "2Gi")],
            "containers": [c("a", "500m", "100Mi")]
        })))
        .unwrap();
        assert_eq!(r.resources.milli_cpu, 2000, "init cpu peak");
        assert_eq!(r.resources.memory, 2 << 30, "init memory peak");
        assert_eq!(r.nonzero_milli_cpu, 2000);
    }

    #[test]
    fn sidecars_add_to_the_app_containers_and_to_later_init_containers() {
        let mut side = c("side", "300m", "100Mi");
        side["restartPolicy"] = json!("Always");
        let r = PodRequests::of(&spec(json!({
            "initContainers": [side, c("setup", "1", "10Mi")],
            "containers": [c("a", "500m", "100Mi")]
        })))
        .unwrap();
        // app + sidecar = 800m; setup runs beside the sidecar = 1300m.
        assert_eq!(r.resources.milli_cpu, 1300);
        assert_eq!(r.resources.memory, 200 << 20);
    }

    #[test]
    fn overhead_and_extended_resources_count() {
        let r = PodRequests::of(&spec(json!({
            "overhead": {"cpu": "50m", "memory": "10Mi"},
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m", "example.com/gpu": "2", "ephemeral-storage": "1Gi"}}}]
        })))
        .unwrap();
        assert_eq!(r.resources.milli_cpu, 150);
        assert_eq!(r.resources.memory, 10 << 20);
        assert_eq!(r.resources.ephemeral_storage, 1 << 30);
        assert_eq!(r.resources.scalar("example.com/gpu"), 2);
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let r = PodRequests::of(&spec(json!({
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1"}}}]
        })))
        .unwrap();
        assert_eq!(r.resources.milli_cpu, 1000);
        assert_eq!(r.resources.memory, 1 << 30);
    }

    #[test]
    fn scoring_assumes_defaults_for_containers_without_requests() {
        let r = PodRequests::of(&spec(
            json!({"containers": [{"name": "a"}, c("b", "1", "1Gi")]}),
        ))
        .unwrap();
        assert_eq!(r.resources.milli_cpu, 1000);
        assert_eq!(r.nonzero_milli_cpu, 1100);
        assert_eq!(r.nonzero_memory, (1 << 30) + (200 << 20));
        assert!(
            PodRequests::of(&spec(json!({"containers": [{"name": "a"}]})))
                .unwrap()
                .resources
                .is_zero()
        );
    }

    #[test]
    fn a_bad_quantity_names_its_field() {
        let err = PodRequests::of(&spec(
            json!({"containers": [c("a", "1", "1Gi"), c("b", "lots", "1Gi")]}),
        ))
        .unwrap_err();
        assert_eq!(err.field, "spec.containers[1].resources.requests[cpu]");
        assert!(err.to_string().contains("\"lots\""), "{err}");
    }

    #[test]
    fn resource_arithmetic_round_trips() {
        let mut a = Resources {
            milli_cpu: 100,
            memory: 5,
            ephemeral_storage: 0,
            scalar: vec![("x/y".into(), 1)],
        };
        let b = a.clone();
        a.add(&b);
        assert_eq!(a.scalar("x/y"), 2);
        a.sub(&b);
        a.sub(&b);
        assert!(a.is_zero());
        assert!(a.scalar.is_empty());
    }
}
