//! The resource registry: every served kind with its group/version, plural, scope,
//! short names, subresources, store prefix and typed schema (for decoding and unknown
//! field detection; in tests also the schemars schema the embedded OpenAPI documents
//! are generated from).

use k8s_openapi::api::{apps, batch, coordination, core};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes a JSON value into the Kubernetes type and encodes it back: the canonical
/// form of the object, with unknown fields dropped.
pub type Normalize = fn(&Value) -> Result<Value, String>;
/// The JSON schema of the kind (schemars, from k8s-openapi).
#[cfg(test)]
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// One served resource.
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub subresources: &'static [&'static str],
    pub normalize: Normalize,
    /// Only tests generate OpenAPI, so the binary carries no schemars code.
    #[cfg(test)]
    pub schema: SchemaFn,
    /// Definition name used in OpenAPI, e.g. `io.k8s.api.core.v1.Pod`.
    #[cfg(test)]
    pub definition: &'static str,
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// The key prefix in the store: `pods`, `apps/deployments`.
    pub fn store_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}/{}", self.group, self.plural)
        }
    }
    pub fn has_sub(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
    /// Whether the object has a spec whose changes bump metadata.generation.
    pub fn tracks_generation(&self) -> bool {
        matches!(
            self.plural,
            "deployments" | "replicasets" | "daemonsets" | "jobs" | "pods" | "services"
        )
    }
}

fn normalize<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = T::deserialize(v).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

#[cfg(test)]
fn schema<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

macro_rules! res {
    ($g:expr, $v:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, $short:expr, $subs:expr, $ty:ty, $def:expr) => {
        Resource {
            group: $g,
            version: $v,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: $short,
            subresources: $subs,
            normalize: normalize::<$ty>,
            #[cfg(test)]
            schema: schema::<$ty>,
            #[cfg(test)]
            definition: $def,
        }
    };
}

/// Every resource the API serves.
pub static RESOURCES: &[Resource] = &[
    res!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &["status", "finalize"],
        core::v1::Namespace,
        "io.k8s.api.core.v1.Namespace"
    ),
    res!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        &["status"],
        core::v1::Node,
        "io.k8s.api.core.v1.Node"
    ),
    res!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        &["status", "binding", "log", "exec", "eviction"],
        core::v1::Pod,
        "io.k8s.api.core.v1.Pod"
    ),
    res!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        &["status"],
        core::v1::Service,
        "io.k8s.api.core.v1.Service"
    ),
    res!(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        &[],
        core::v1::Endpoints,
        "io.k8s.api.core.v1.Endpoints"
    ),
    res!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        &[],
        core::v1::ConfigMap,
        "io.k8s.api.core.v1.ConfigMap"
    ),
    res!(
        "",
        "v1",
        "secrets",
        "secret",
        "Secret",
        true,
        &[],
        &[],
        core::v1::Secret,
        "io.k8s.api.core.v1.Secret"
    ),
    res!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        core::v1::Event,
        "io.k8s.api.core.v1.Event"
    ),
    res!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        &[],
        core::v1::ServiceAccount,
        "io.k8s.api.core.v1.ServiceAccount"
    ),
    res!(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        &["status", "scale"],
        apps::v1::Deployment,
        "io.k8s.api.apps.v1.Deployment"
    ),
    res!(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        &["status", "scale"],
        apps::v1::ReplicaSet,
        "io.k8s.api.apps.v1.ReplicaSet"
    ),
    res!(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        &["status"],
        apps::v1::DaemonSet,
        "io.k8s.api.apps.v1.DaemonSet"
    ),
    res!(
        "batch",
        "v1",
        "jobs",
        "job",
        "Job",
        true,
        &[],
        &["status"],
        batch::v1::Job,
        "io.k8s.api.batch.v1.Job"
    ),
    res!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        &[],
        coordination::v1::Lease,
        "io.k8s.api.coordination.v1.Lease"
    ),
];

/// The API groups served, with their single version each.
pub const GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("batch", "v1"),
    ("coordination.k8s.io", "v1"),
];

/// Looks a resource up by group and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resources of one group/version.
pub fn in_group(group: &str, version: &str) -> impl Iterator<Item = &'static Resource> {
    let group = group.to_owned();
    let version = version.to_owned();
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_drops_unknown_fields_and_keeps_known_ones() {
        let pods = find("", "v1", "pods").unwrap();
        let v = serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}});
        let n = (pods.normalize)(&v).unwrap();
        assert_eq!(n["spec"]["containers"][0]["image"], "i");
        assert!(n["spec"]["containers"][0].get("bogus").is_none());
        assert_eq!(n["kind"], "Pod");
    }
}
