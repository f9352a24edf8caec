//! The pod cache's compact record: only what the loops read of a pod (identity,
//! labels, owners, timestamps, the deletion-cost annotation, nodeName, phase, the Ready
//! and PodScheduled conditions, addresses, restart counts), decoded straight from the
//! stored JSON by a slim serde view that skips everything else. Spec, labels and owner
//! references are interned ([`Interner`]): pods stamped from one template share one
//! `Arc<PodSpec>`, decoded once, and one label set and owner list.
//! The pure scheduler and controllers take k8s-openapi `Pod`s; [`PodRecord::to_pod`]
//! makes a transient one, with or without the spec.

use flotilla_controllers::replicaset::POD_DELETION_COST;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodCondition, PodSpec,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

/// A condition as much as the loops read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub status: Box<str>,
    pub reason: Option<Box<str>>,
    pub message: Option<Box<str>>,
    pub last_transition: Option<Timestamp>,
}

/// A container's restart count and, once terminated, when it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerBrief {
    pub restarts: i32,
    pub finished_at: Option<Timestamp>,
}

/// One pod as the drive's loops see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    /// Shared by every record of the namespace that was decoded while another lived.
    pub namespace: Arc<str>,
    pub name: Box<str>,
    pub uid: Option<Box<str>>,
    pub resource_version: u64,
    pub labels: Option<Arc<BTreeMap<String, String>>>,
    /// `controller.kubernetes.io/pod-deletion-cost`, the one annotation a loop reads.
    pub deletion_cost: Option<Box<str>>,
    pub owner_references: Option<Arc<[OwnerReference]>>,
    pub creation_timestamp: Option<Timestamp>,
    pub deletion_timestamp: Option<Timestamp>,
    /// The spec without `nodeName` (interned).
    pub spec: Option<Arc<PodSpec>>,
    pub node_name: Option<Box<str>>,
    pub phase: Option<Box<str>>,
    pub ready: Option<Condition>,
    pub scheduled: Option<Condition>,
    pub pod_ip: Option<Box<str>>,
    pub host_ip: Option<Box<str>>,
    pub containers: Box<[ContainerBrief]>,
    pub init_restarts: Box<[i32]>,
}

/// What records share, each part keyed by its stored JSON: specs (without `nodeName`,
/// fields sorted), label sets, owner reference lists and namespace names. An entry dies
/// with the last record holding it and is swept as its table grows.
#[derive(Default)]
pub struct Interner {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    specs: Table<PodSpec>,
    labels: Table<BTreeMap<String, String>>,
    owners: Table<[OwnerReference]>,
    namespaces: Table<str>,
}

/// One kind of shared part.
struct Table<T: ?Sized> {
    map: HashMap<Box<[u8]>, Weak<T>>,
    /// Size of the table after the last sweep.
    swept_at: usize,
}

impl<T: ?Sized> Default for Table<T> {
    fn default() -> Table<T> {
        Table {
            map: HashMap::new(),
            swept_at: 0,
        }
    }
}

impl<T: ?Sized> Table<T> {
    /// The live part stored under `key`, else the one `make` decodes.
    fn get_or(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> Result<Arc<T>, String>,
    ) -> Result<Arc<T>, String> {
        if let Some(v) = self.map.get(key).and_then(Weak::upgrade) {
            return Ok(v);
        }
        let v = make()?;
        self.map.insert(key.into(), Arc::downgrade(&v));
        if self.map.len() >= (2 * self.swept_at).max(64) {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.swept_at = self.map.len();
        }
        Ok(v)
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        self.map.values().filter(|w| w.strong_count() > 0).count()
    }
}

fn json<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, String> {
    serde_json::from_str(raw.get()).map_err(|e| e.to_string())
}

impl Interner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared spec for `raw` (a pod's `spec` JSON), decoding it only when no live
    /// record shares it. Also returns the `nodeName`.
    fn spec(&self, raw: &RawValue) -> Result<(Arc<PodSpec>, Option<Box<str>>), String> {
        let fields: BTreeMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        let mut node_name = None;
        let mut canonical = Vec::with_capacity(raw.get().len());
        for (k, v) in &fields {
            if k == "nodeName" {
                node_name = json::<Option<String>>(v)?
                    .filter(|n| !n.is_empty())
                    .map(String::into_boxed_str);
                continue;
            }
            canonical.extend_from_slice(k.as_bytes());
            canonical.push(0);
            canonical.extend_from_slice(v.get().as_bytes());
            canonical.push(0);
        }
        let spec = self.lock().specs.get_or(&canonical, || {
            let mut spec: PodSpec = json(raw)?;
            spec.node_name = None;
            Ok(Arc::new(spec))
        })?;
        Ok((spec, node_name))
    }

    fn labels(&self, raw: &RawValue) -> Result<Arc<BTreeMap<String, String>>, String> {
        self.lock()
            .labels
            .get_or(raw.get().as_bytes(), || json(raw).map(Arc::new))
    }

    fn owners(&self, raw: &RawValue) -> Result<Arc<[OwnerReference]>, String> {
        self.lock().owners.get_or(raw.get().as_bytes(), || {
            json::<Vec<OwnerReference>>(raw).map(Arc::from)
        })
    }

    fn namespace(&self, ns: &str) -> Arc<str> {
        self.lock()
            .namespaces
            .get_or(ns.as_bytes(), || Ok(Arc::from(ns)))
            .expect("infallible")
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    metadata: WireMeta<'a>,
    #[serde(borrow, default)]
    spec: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<WireStatus<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireMeta<'a> {
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(borrow, default)]
    labels: Option<&'a RawValue>,
    #[serde(borrow, default)]
    annotations: Option<HashMap<Cow<'a, str>, &'a RawValue>>,
    #[serde(borrow, default)]
    owner_references: Option<&'a RawValue>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus<'a> {
    #[serde(default)]
    phase: Option<String>,
    #[serde(borrow, default)]
    conditions: Option<Vec<WireCondition<'a>>>,
    #[serde(rename = "podIP", default)]
    pod_ip: Option<String>,
    #[serde(rename = "hostIP", default)]
    host_ip: Option<String>,
    #[serde(default)]
    container_statuses: Option<Vec<WireContainer>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<WireContainer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCondition<'a> {
    #[serde(rename = "type", borrow)]
    type_: Cow<'a, str>,
    #[serde(borrow, default)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(default)]
    last_transition_time: Option<Time>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainer {
    #[serde(default)]
    restart_count: i32,
    #[serde(default)]
    state: Option<WireState>,
}

#[derive(Deserialize)]
struct WireState {
    #[serde(default)]
    terminated: Option<WireTerminated>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTerminated {
    #[serde(default)]
    finished_at: Option<Time>,
}

/// A field that is there and not `null`.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

fn boxed(s: Option<String>) -> Option<Box<str>> {
    s.map(String::into_boxed_str)
}

fn condition(c: &WireCondition<'_>) -> Condition {
    Condition {
        status: c.status.as_ref().into(),
        reason: c.reason.as_deref().map(Into::into),
        message: c.message.as_deref().map(Into::into),
        last_transition: c.last_transition_time.as_ref().map(|t| t.0),
    }
}

fn brief(c: &WireContainer) -> ContainerBrief {
    ContainerBrief {
        restarts: c.restart_count,
        finished_at: c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.finished_at.as_ref())
            .map(|t| t.0),
    }
}

impl PodRecord {
    /// Decodes a stored pod (`revision` is its resourceVersion), sharing its spec and
    /// namespace through `specs`.
    pub fn decode(value: &[u8], revision: u64, shared: &Interner) -> Result<PodRecord, String> {
        let w: Wire<'_> = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        let m = w.metadata;
        let (spec, node_name) = match present(w.spec) {
            Some(raw) => {
                let (s, n) = shared.spec(raw)?;
                (Some(s), n)
            }
            None => (None, None),
        };
        let deletion_cost = match m
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_DELETION_COST))
        {
            Some(v) => boxed(serde_json::from_str(v.get()).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut rec = PodRecord {
            namespace: shared.namespace(m.namespace.as_deref().unwrap_or("")),
            name: m.name.unwrap_or_default().into_boxed_str(),
            uid: boxed(m.uid),
            resource_version: revision,
            labels: present(m.labels).map(|l| shared.labels(l)).transpose()?,
            deletion_cost,
            owner_references: present(m.owner_references)
                .map(|o| shared.owners(o))
                .transpose()?
                .filter(|o| !o.is_empty()),
            creation_timestamp: m.creation_timestamp.map(|t| t.0),
            deletion_timestamp: m.deletion_timestamp.map(|t| t.0),
            spec,
            node_name,
            phase: None,
            ready: None,
            scheduled: None,
            pod_ip: None,
            host_ip: None,
            containers: Box::default(),
            init_restarts: Box::default(),
        };
        if let Some(s) = w.status {
            let find = |ty: &str| {
                s.conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == ty)
                    .map(condition)
            };
            rec.ready = find("Ready");
            rec.scheduled = find("PodScheduled");
            rec.phase = boxed(s.phase);
            rec.pod_ip = boxed(s.pod_ip);
            rec.host_ip = boxed(s.host_ip);
            rec.containers = s.container_statuses.iter().flatten().map(brief).collect();
            rec.init_restarts = s
                .init_container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .collect();
        }
        Ok(rec)
    }

    /// The `(namespace, name)` cache key.
    pub fn key(&self) -> (String, String) {
        (
            self.namespace.as_ref().to_owned(),
            self.name.as_ref().to_owned(),
        )
    }

    /// The controller owner reference.
    pub fn controller(&self) -> Option<&OwnerReference> {
        super::cache::controller_of(self.owner_references.as_deref())
    }

    /// Bound to a node.
    pub fn bound(&self) -> bool {
        self.node_name.is_some()
    }

    /// Succeeded or Failed.
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// A transient k8s-openapi `Pod` with what the record holds; with `spec` false the
    /// spec carries only `nodeName` (for functions that read nothing else of it).
    pub fn to_pod(&self, spec: bool) -> Pod {
        let mut pod_spec = match (&self.spec, spec) {
            (Some(s), true) => Some(PodSpec::clone(s)),
            (Some(_), false) => Some(PodSpec::default()),
            (None, _) => None,
        };
        if let Some(n) = &self.node_name {
            pod_spec.get_or_insert_with(PodSpec::default).node_name = Some(n.to_string());
        }
        let ns = Some(self.namespace.as_ref().to_owned()).filter(|n| !n.is_empty());
        let condition = |ty: &str, c: &Condition| PodCondition {
            type_: ty.to_owned(),
            status: c.status.to_string(),
            reason: c.reason.as_deref().map(str::to_owned),
            message: c.message.as_deref().map(str::to_owned),
            last_transition_time: c.last_transition.map(Time),
            ..PodCondition::default()
        };
        let conditions: Vec<PodCondition> =
            [("Ready", &self.ready), ("PodScheduled", &self.scheduled)]
                .into_iter()
                .filter_map(|(ty, c)| c.as_ref().map(|c| condition(ty, c)))
                .collect();
        let container = |restarts: i32, finished_at: Option<Timestamp>| ContainerStatus {
            restart_count: restarts,
            state: finished_at.map(|t| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    finished_at: Some(Time(t)),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        let has_status = self.phase.is_some()
            || !conditions.is_empty()
            || self.pod_ip.is_some()
            || self.host_ip.is_some()
            || !self.containers.is_empty()
            || !self.init_restarts.is_empty();
        let status = has_status.then(|| PodStatus {
            phase: self.phase.as_deref().map(str::to_owned),
            conditions: (!conditions.is_empty()).then_some(conditions),
            pod_ip: self.pod_ip.as_deref().map(str::to_owned),
            host_ip: self.host_ip.as_deref().map(str::to_owned),
            container_statuses: (!self.containers.is_empty()).then(|| {
                self.containers
                    .iter()
                    .map(|c| container(c.restarts, c.finished_at))
                    .collect()
            }),
            init_container_statuses: (!self.init_restarts.is_empty()).then(|| {
                self.init_restarts
                    .iter()
                    .map(|r| container(*r, None))
                    .collect()
            }),
            ..PodStatus::default()
        });
        Pod {
            metadata: ObjectMeta {
                namespace: ns,
                name: Some(self.name.to_string()),
                uid: self.uid.as_deref().map(str::to_owned),
                resource_version: Some(self.resource_version.to_string()),
                labels: self.labels.as_deref().cloned(),
                annotations: self
                    .deletion_cost
                    .as_ref()
                    .map(|c| BTreeMap::from([(POD_DELETION_COST.to_owned(), c.to_string())])),
                owner_references: self.owner_references.as_deref().map(<[_]>::to_vec),
                creation_timestamp: self.creation_timestamp.map(Time),
                deletion_timestamp: self.deletion_timestamp.map(Time),
                ..ObjectMeta::default()
            },
            spec: pod_spec,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(name: &str, node: Option<&str>) -> Vec<u8> {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "prod", "uid": format!("u-{name}"),
                "labels": {"app": "web"},
                "annotations": {POD_DELETION_COST: "7", "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                    "uid": "rs-uid", "controller": true}],
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "nginx",
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m"}}}],
                "restartPolicy": "Always", "tolerations": [{"key": "k", "operator": "Exists"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "hostIP": "192.168.1.2",
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:10Z"},
                    {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "nginx", "imageID": "", "ready": true,
                    "restartCount": 3, "state": {"terminated": {"exitCode": 1,
                    "finishedAt": "2026-01-01T00:00:20Z"}}}],
                "initContainerStatuses": [{"name": "i", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 2}]}
        });
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        serde_json::to_vec(&p).unwrap()
    }

    #[test]
    fn a_record_keeps_what_the_loops_read_and_materializes_it() {
        let specs = Interner::default();
        let r = PodRecord::decode(&stored("a", Some("n1")), 42, &specs).unwrap();
        assert_eq!((&*r.namespace, &*r.name), ("prod", "a"));
        assert_eq!(r.node_name.as_deref(), Some("n1"));
        assert_eq!(r.deletion_cost.as_deref(), Some("7"));
        assert_eq!(r.controller().unwrap().uid, "rs-uid");
        let full: Pod = serde_json::from_slice(&stored("a", Some("n1"))).unwrap();
        let p = r.to_pod(true);
        assert_eq!(p.spec, full.spec, "the whole spec, nodeName included");
        assert_eq!(p.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(p.metadata.labels, full.metadata.labels);
        assert_eq!(p.metadata.owner_references, full.metadata.owner_references);
        assert_eq!(
            p.metadata.annotations.as_ref().unwrap().len(),
            1,
            "only the deletion cost"
        );
        // Everything the controllers' pod helpers read agrees with the full pod.
        use flotilla_controllers::pods;
        for q in [&p, &r.to_pod(false)] {
            assert_eq!(pods::phase(q), pods::phase(&full));
            assert_eq!(pods::ready_since(q), pods::ready_since(&full));
            assert_eq!(pods::restarts(q), pods::restarts(&full));
            assert_eq!(pods::node_name(q), Some("n1"));
            assert_eq!(
                q.metadata.creation_timestamp,
                full.metadata.creation_timestamp
            );
            let st = q.status.as_ref().unwrap();
            assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.5"));
            let finished = |p: &Pod| {
                p.status
                    .as_ref()
                    .unwrap()
                    .container_statuses
                    .as_ref()
                    .unwrap()[0]
                    .state
                    .as_ref()
                    .unwrap()
                    .terminated
                    .as_ref()
                    .unwrap()
                    .finished_at
                    .clone()
            };
            assert_eq!(finished(q), finished(&full));
            assert_eq!(
                st.init_container_statuses.as_ref().unwrap()[0].restart_count,
                2
            );
        }
        assert_eq!(r.to_pod(false).spec.unwrap().containers.len(), 0);
    }

    #[test]
    fn pods_of_one_template_share_one_spec_until_the_last_goes() {
        let specs = Interner::default();
        let a = PodRecord::decode(&stored("a", Some("n1")), 1, &specs).unwrap();
        let b = PodRecord::decode(&stored("b", Some("n2")), 2, &specs).unwrap();
        let c = PodRecord::decode(&stored("c", None), 3, &specs).unwrap();
        assert!(Arc::ptr_eq(
            a.spec.as_ref().unwrap(),
            b.spec.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.spec.as_ref().unwrap(),
            c.spec.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&a.namespace, &c.namespace));
        assert_eq!(b.node_name.as_deref(), Some("n2"));
        assert_eq!(c.node_name, None);
        let mut other: serde_json::Value = serde_json::from_slice(&stored("d", None)).unwrap();
        other["spec"]["containers"][0]["image"] = json!("nginx:2");
        let d = PodRecord::decode(&serde_json::to_vec(&other).unwrap(), 4, &specs).unwrap();
        assert!(!Arc::ptr_eq(
            a.spec.as_ref().unwrap(),
            d.spec.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.labels.as_ref().unwrap(),
            d.labels.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.owner_references.as_ref().unwrap(),
            d.owner_references.as_ref().unwrap()
        ));
        assert_eq!(specs.lock().specs.live(), 2);
        drop((a, b, c));
        assert_eq!(
            specs.lock().specs.live(),
            1,
            "the spec went with its last pod"
        );
    }

    #[test]
    fn a_bare_pod_decodes_and_garbage_is_an_error() {
        let specs = Interner::default();
        let r = PodRecord::decode(br#"{"metadata":{"name":"x"}}"#, 1, &specs).unwrap();
        let p = r.to_pod(true);
        assert!(p.spec.is_none() && p.status.is_none() && p.metadata.namespace.is_none());
        assert!(PodRecord::decode(b"{\"metadata\":", 1, &specs).is_err());
        assert!(PodRecord::decode(br#"{"spec":{"nodeName":5}}"#, 1, &specs).is_err());
    }
}
