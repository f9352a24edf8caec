//! Pod reports → pod status, written through the API's status subresource for pods
//! bound to the reporting node only (a node acts for its own pods, never another's).
//! A deleting pod whose report says `terminated` is removed with grace period 0, as
//! the kubelet does. Pods whose references do not resolve get the kubelet's
//! `CreateContainerConfigError` status and a warning event.

use super::Hub;
use super::events;
use super::node::time;
use super::write::{self, modify};
use crate::api::meta;
use crate::api::status::ApiResult;
use flotilla_shared::pod::{ContainerReport, ContainerState, PodPhase, PodReport};
use serde_json::{Value, json};

fn state(s: &ContainerState, container_id: &str) -> Value {
    let nonempty = |v: &mut Value, k: &str, s: &str| {
        if !s.is_empty() {
            v[k] = json!(s);
        }
    };
    match s {
        ContainerState::Waiting { reason, message } => {
            let mut w = json!({});
            nonempty(&mut w, "reason", reason);
            nonempty(&mut w, "message", message);
            json!({"waiting": w})
        }
        ContainerState::Running { started_at } => {
            json!({"running": {"startedAt": time(*started_at)}})
        }
        ContainerState::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
        } => {
            let mut t = json!({"exitCode": exit_code, "startedAt": time(*started_at), "finishedAt": time(*finished_at)});
            if *signal != 0 {
                t["signal"] = json!(signal);
            }
            nonempty(&mut t, "reason", reason);
            nonempty(&mut t, "message", message);
            nonempty(&mut t, "containerID", container_id);
            json!({"terminated": t})
        }
    }
}

fn container_status(c: &ContainerReport) -> Value {
    let mut v = json!({
        "name": c.name, "image": c.image, "imageID": c.image_id,
        "ready": c.ready, "started": c.started, "restartCount": c.restart_count,
        "state": state(&c.state, &c.container_id),
        "lastState": c.last_state.as_ref().map_or(json!({}), |s| state(s, &c.container_id)),
    });
    if !c.container_id.is_empty() {
        v["containerID"] = json!(c.container_id);
    }
    v
}

fn phase(p: PodPhase) -> &'static str {
    match p {
        PodPhase::Pending => "Pending",
        PodPhase::Running => "Running",
        PodPhase::Succeeded => "Succeeded",
        PodPhase::Failed => "Failed",
        PodPhase::Unknown => "Unknown",
    }
}

/// Sets the condition `type_`, keeping its transition time when its status stays.
fn set_condition(conds: &mut Vec<Value>, type_: &str, status: bool, reason: Option<&str>) {
    let status = if status { "True" } else { "False" };
    let now = meta::now();
    let mut c =
        json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    match conds.iter_mut().find(|c| c["type"] == type_) {
        Some(old) => {
            if old["status"] == status {
                c["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = c;
        }
        None => conds.push(c),
    }
}

/// The pod's status after `r` (`old` is the stored pod).
pub fn status(old: &Value, r: &PodReport) -> Value {
    let mut s = old["status"].clone();
    if !s.is_object() {
        s = json!({});
    }
    let mut conds: Vec<Value> = s["conditions"].as_array().cloned().unwrap_or_default();
    let done = matches!(r.phase, PodPhase::Succeeded | PodPhase::Failed);
    let not_ready = |ok: bool| {
        (!ok).then_some(if done {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        })
    };
    set_condition(
        &mut conds,
        "PodReadyToStartContainers",
        !r.pod_ip.is_empty() || r.phase != PodPhase::Pending,
        None,
    );
    set_condition(
        &mut conds,
        "Initialized",
        r.initialized,
        (!r.initialized).then_some("ContainersNotInitialized"),
    );
    set_condition(
        &mut conds,
        "Ready",
        r.containers_ready,
        not_ready(r.containers_ready),
    );
    set_condition(
        &mut conds,
        "ContainersReady",
        r.containers_ready,
        not_ready(r.containers_ready),
    );
    let order = |c: &Value| match c["type"].as_str() {
        Some("PodReadyToStartContainers") => 0,
        Some("Initialized") => 1,
        Some("Ready") => 2,
        Some("ContainersReady") => 3,
        Some("PodScheduled") => 4,
        _ => 5,
    };
    conds.sort_by_key(order);
    s["conditions"] = json!(conds);
    s["phase"] = json!(phase(r.phase));
    for (k, v) in [("reason", &r.reason), ("message", &r.message)] {
        if v.is_empty() {
            if let Some(m) = s.as_object_mut() {
                m.remove(k);
            }
        } else {
            s[k] = json!(v);
        }
    }
    if !r.host_ip.is_empty() {
        s["hostIP"] = json!(r.host_ip);
        s["hostIPs"] = json!([{"ip": r.host_ip}]);
    }
    if !r.pod_ip.is_empty() {
        s["podIP"] = json!(r.pod_ip);
        s["podIPs"] = json!([{"ip": r.pod_ip}]);
    }
    if r.start_time > 0 {
        s["startTime"] = time(r.start_time);
    }
    s["containerStatuses"] = json!(
        r.containers
            .iter()
            .map(container_status)
            .collect::<Vec<_>>()
    );
    if r.init_containers.is_empty() {
        if let Some(m) = s.as_object_mut() {
            m.remove("initContainerStatuses");
        }
    } else {
        s["initContainerStatuses"] = json!(
            r.init_containers
                .iter()
                .map(container_status)
                .collect::<Vec<_>>()
        );
    }
    s
}

/// Whether the stored pod is the one the node reports about and is bound to it.
fn owned(pod: &Value, node: &str, uid: &str) -> bool {
    pod["spec"]["nodeName"] == node && pod["metadata"]["uid"] == uid
}

/// Writes a node's report about one of its pods.
pub async fn apply(hub: &Hub, node: &str, r: &PodReport) -> ApiResult<()> {
    let res = write::resource("", "pods");
    let mut foreign = false;
    let mut deleting = false;
    let written = modify(
        &hub.api,
        res,
        &r.namespace,
        &r.name,
        Some("status"),
        |pod| {
            if !owned(pod, node, &r.uid) {
                foreign = true;
                return false;
            }
            deleting = !pod["metadata"]["deletionTimestamp"].is_null();
            let new = status(pod, r);
            if pod["status"] == new {
                return false;
            }
            pod["status"] = new;
            true
        },
    )
    .await?;
    if foreign {
        tracing::warn!(%node, pod = %format!("{}/{}", r.namespace, r.name), uid = %r.uid,
            "ignoring a report about a pod that is not bound to this node");
        return Ok(());
    }
    let _ = written;
    if r.terminated && deleting {
        write::delete_pod_now(&hub.api, &r.namespace, &r.name, &r.uid).await?;
        tracing::debug!(%node, pod = %format!("{}/{}", r.namespace, r.name), "terminated pod removed");
    }
    Ok(())
}

/// Marks a pod that cannot start because a reference does not resolve, as the kubelet
/// does (`CreateContainerConfigError`), with a warning event.
pub async fn config_error(hub: &Hub, ns: &str, name: &str, uid: &str, message: &str) {
    let res = write::resource("", "pods");
    let mut first = String::new();
    let mut node = String::new();
    let r = modify(&hub.api, res, ns, name, Some("status"), |pod| {
        if pod["metadata"]["uid"] != uid {
            return false;
        }
        node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
        let names: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        first = names.first().cloned().unwrap_or_default();
        let images: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["image"].clone())
            .collect();
        let mut s = pod["status"].clone();
        if !s.is_object() {
            s = json!({});
        }
        s["phase"] = json!("Pending");
        let mut conds: Vec<Value> = s["conditions"].as_array().cloned().unwrap_or_default();
        set_condition(&mut conds, "Ready", false, Some("ContainersNotReady"));
        set_condition(&mut conds, "ContainersReady", false, Some("ContainersNotReady"));
        s["conditions"] = json!(conds);
        s["containerStatuses"] = json!(names.iter().zip(images).map(|(n, image)| json!({
            "name": n, "image": image, "imageID": "", "ready": false, "started": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
            "lastState": {},
        })).collect::<Vec<_>>());
        pod["status"] = s;
        true
    })
    .await;
    if let Err(e) = r {
        tracing::warn!(pod = %format!("{ns}/{name}"), error = %e.message, "writing a configuration error");
        return;
    }
    events::record(
        hub,
        &events::PodRef {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        },
        &node,
        &format!("spec.containers{{{first}}}"),
        true,
        "Failed",
        &format!("Error: {message}"),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> PodReport {
        PodReport {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "web".into(),
            revision: 3,
            phase: PodPhase::Running,
            reason: String::new(),
            message: String::new(),
            pod_ip: "10.42.0.5".into(),
            host_ip: "192.168.1.4".into(),
            start_time: 1_700_000_000,
            initialized: true,
            containers_ready: true,
            init_containers: vec![],
            containers: vec![ContainerReport {
                name: "c".into(),
                image: "busybox".into(),
                image_id: "sha256:ab".into(),
                container_id: "flotilla://x".into(),
                ready: true,
                started: true,
                restart_count: 2,
                state: ContainerState::Running {
                    started_at: 1_700_000_010,
                },
                last_state: Some(ContainerState::Terminated {
                    exit_code: 137,
                    signal: 9,
                    reason: "OOMKilled".into(),
                    message: String::new(),
                    started_at: 1_700_000_000,
                    finished_at: 1_700_000_009,
                }),
            }],
            terminated: false,
        }
    }

    #[test]
    fn a_report_becomes_kubernetes_status() {
        let old = json!({"status": {"phase": "Pending", "qosClass": "BestEffort",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2023-01-01T00:00:00Z"}]}});
        let s = status(&old, &report());
        assert_eq!(s["phase"], "Running");
        assert_eq!(
            s["qosClass"], "BestEffort",
            "fields the node does not own stay"
        );
        assert_eq!(s["podIP"], "10.42.0.5");
        assert_eq!(s["podIPs"], json!([{"ip": "10.42.0.5"}]));
        assert_eq!(s["startTime"], "2023-11-14T22:13:20Z");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["restartCount"], 2);
        assert_eq!(c["state"]["running"]["startedAt"], "2023-11-14T22:13:30Z");
        assert_eq!(c["lastState"]["terminated"]["reason"], "OOMKilled");
        assert_eq!(c["lastState"]["terminated"]["signal"], 9);
        let types: Vec<&str> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        assert_eq!(
            s["conditions"][4]["lastTransitionTime"],
            "2023-01-01T00:00:00Z"
        );
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let first = json!({"status": status(&json!({}), &report())});
        let mut before = first.clone();
        before["status"]["conditions"][2]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        let again = status(&before, &report());
        assert_eq!(
            again["conditions"][2]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        let mut r = report();
        r.containers_ready = false;
        let changed = status(&before, &r);
        assert_ne!(
            changed["conditions"][2]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(changed["conditions"][2]["reason"], "ContainersNotReady");
    }

    #[test]
    fn only_the_bound_node_owns_a_pod() {
        let pod = json!({"metadata": {"uid": "u1"}, "spec": {"nodeName": "n1"}});
        assert!(owned(&pod, "n1", "u1"));
        assert!(!owned(&pod, "n2", "u1"));
        assert!(!owned(&pod, "n1", "u2"));
    }
}
