//! Pod helpers every workload controller shares: ownership, activity, readiness and
//! availability, and stamping out a pod from a template.

use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;

use crate::actions::Action;

/// Is the pod controlled by the object with this uid?
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// The pod's phase, `Pending` when it has none yet.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Still running or about to: not Succeeded or Failed, and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

/// When the pod's Ready condition turned True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0))
}

/// Is the pod Ready?
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` (upstream's "available").
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// A controller owner reference to `meta`.
pub fn controller_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from a template: the template's labels and annotations, `generateName`
/// `<prefix>-`, the owner's namespace and a controller reference to it.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    prefix: &str,
    owner: OwnerReference,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            namespace: Some(namespace.to_owned()),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// `count` [`Action::CreatePod`]s of pods stamped from `template` by
/// [`pod_from_template`], reported as created by `me` (the ReplicaSet's or Job's way of
/// making up missing pods).
pub fn creations(
    template: &PodTemplateSpec,
    namespace: &str,
    prefix: &str,
    owner: &OwnerReference,
    me: &ObjectReference,
    count: usize,
) -> impl Iterator<Item = Action> {
    let pod = pod_from_template(template, namespace, prefix, owner.clone());
    let me = me.clone();
    (0..count).map(move |_| Action::CreatePod {
        pod: Box::new(pod.clone()),
        owner: me.clone(),
    })
}

/// The pod's name.
pub fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

/// The pod's namespace.
pub fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The node the pod is bound to, if any.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// Total container restarts.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for tests.
    use super::*;
    use serde_json::{Value, json};

    /// A pod owned by `owner_uid`, in `phase`, Ready or not, bound to `node` if given.
    pub fn pod(name: &str, owner_uid: &str, phase: &str, ready: bool, node: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "owner",
                                     "uid": owner_uid, "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready {"True"} else {"False"},
                 "lastTransitionTime": "2026-01-01T00:00:10Z"}]}
        });
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    }

    /// Deserializes a JSON value.
    pub fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    /// A timestamp.
    pub fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn activity_readiness_and_availability() {
        let running: Pod = from(pod("a", "u", "Running", true, Some("n1")));
        assert!(is_active(&running) && is_ready(&running));
        assert!(controlled_by(&running.metadata, "u"));
        assert!(!controlled_by(&running.metadata, "other"));
        assert!(is_available(&running, 0, at("2026-01-01T00:00:10Z")));
        assert!(!is_available(&running, 30, at("2026-01-01T00:00:39Z")));
        assert!(is_available(&running, 30, at("2026-01-01T00:00:40Z")));
        let done: Pod = from(pod("b", "u", "Succeeded", false, None));
        assert!(!is_active(&done) && !is_ready(&done));
        let mut deleting = running.clone();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2026-01-01T00:01:00Z")),
        );
        assert!(!is_active(&deleting));
        assert_eq!(node_name(&running), Some("n1"));
    }

    #[test]
    fn template_pods_carry_generate_name_and_owner() {
        let template: PodTemplateSpec = from(serde_json::json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        }));
        let owner_meta = ObjectMeta {
            name: Some("web-abc".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let p = pod_from_template(
            &template,
            "prod",
            "web-abc",
            controller_ref("apps/v1", "ReplicaSet", &owner_meta),
        );
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "web");
        assert!(controlled_by(&p.metadata, "u1"));
        assert_eq!(
            p.spec.unwrap().containers[0].image.as_deref(),
            Some("nginx")
        );
    }
}
