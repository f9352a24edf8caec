//! Events about pods, from agents (Pulled, Started, BackOff, …) or from the hub itself,
//! written as core/v1 Events the way client-go's recorder does: a repeat of the same
//! reason and message on the same pod bumps `count` and `lastTimestamp`.

use super::Hub;
use super::write::{self, modify};
use crate::api::meta;
use flotilla_shared::wire::AgentEvent;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// The pod an event is about.
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Recent events (dedup key → event name), so repeats update instead of piling up.
static RECENT: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);
const REMEMBERED: usize = 4096;

/// The component events are reported by.
pub const COMPONENT: &str = "flotilla-agent";

/// Records an agent's event, if it is about a pod bound to that node.
pub async fn from_agent(hub: &Hub, node: &str, e: &AgentEvent) {
    let key = flotilla_store::Key::new("pods", &e.namespace, &e.pod_name);
    let ok = hub.api.store.get(&key).ok().flatten().is_some_and(|o| {
        let pod = meta::decode(&o.value, o.revision);
        pod["spec"]["nodeName"] == node && pod["metadata"]["uid"] == e.pod_uid.as_str()
    });
    if !ok {
        tracing::debug!(%node, pod = %format!("{}/{}", e.namespace, e.pod_name), reason = %e.reason,
            "ignoring an event about a pod not bound to this node");
        return;
    }
    let pod = PodRef {
        namespace: e.namespace.clone(),
        name: e.pod_name.clone(),
        uid: e.pod_uid.clone(),
    };
    record(
        hub,
        &pod,
        node,
        &e.field_path,
        e.warning,
        &e.reason,
        &e.message,
    )
    .await;
}

/// Records an event about `pod` (best effort: failures are logged).
pub async fn record(
    hub: &Hub,
    pod: &PodRef,
    node: &str,
    field_path: &str,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let res = write::resource("", "events");
    let dedup = format!(
        "{}/{}/{}/{}/{}",
        pod.uid, field_path, reason, warning, message
    );
    let now = meta::now();
    let known = RECENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&dedup)
        .cloned();
    if let Some(name) = known {
        let r = modify(&hub.api, res, &pod.namespace, &name, None, |v| {
            let n = v["count"].as_i64().unwrap_or(1);
            v["count"] = json!(n + 1);
            v["lastTimestamp"] = json!(now);
            true
        })
        .await;
        match r {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e.message, "updating an event");
                return;
            }
        }
    }
    let mut involved = json!({"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace,
        "name": pod.name, "uid": pod.uid});
    if !field_path.is_empty() {
        involved["fieldPath"] = json!(field_path);
    }
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", pod.name), "namespace": pod.namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    match write::create(&hub.api, res, &pod.namespace, obj).await {
        Ok(v) => {
            let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() >= REMEMBERED {
                recent.clear();
            }
            recent.insert(dedup, meta::name(&v).to_owned());
        }
        Err(e) => tracing::debug!(error = %e.message, %reason, "recording an event"),
    }
}
