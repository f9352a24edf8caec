//! A node's own objects, written from its session: the Node (registered on the first
//! report with the well-known labels and the agent's labels and taints; status from
//! every report with Ready=True while the link is up) and its Lease in
//! `kube-node-lease`, renewed each time the agent answers the session's ping so the node
//! lifecycle controller sees the node alive — and turns it Unknown once answers stop.

use super::Hub;
use super::write::{self, modify};
use crate::api::meta;
use crate::api::status::ApiResult;
use flotilla_shared::pod::{NodeReport, NodeResources};
use serde_json::{Map, Value, json};

/// `leaseDurationSeconds` of node Leases, as the kubelet sets it.
const LEASE_SECONDS: i64 = 40;

/// A time as the API writes it (RFC 3339, seconds).
pub fn time(unix: i64) -> Value {
    match jiff::Timestamp::from_second(unix) {
        Ok(t) if unix > 0 => json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        _ => Value::Null,
    }
}

/// Now as a MicroTime (`2024-05-01T10:00:00.123456Z`).
pub fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn resources(r: &NodeResources) -> Value {
    let cpu = if r.cpu_millis.is_multiple_of(1000) {
        (r.cpu_millis / 1000).to_string()
    } else {
        format!("{}m", r.cpu_millis)
    };
    json!({
        "cpu": cpu,
        "memory": format!("{}Ki", r.memory_bytes / 1024),
        "ephemeral-storage": format!("{}Ki", r.ephemeral_storage_bytes / 1024),
        "pods": r.pods.to_string(),
    })
}

/// Labels a node may not give itself (the NodeRestriction admission's rule).
fn restricted_label(key: &str) -> bool {
    let prefix = key.split_once('/').map_or("", |(p, _)| p);
    prefix == "node-role.kubernetes.io" || prefix.ends_with("node-restriction.kubernetes.io")
}

/// The labels the hub sets on the node.
fn labels(node: &str, r: &NodeReport) -> Map<String, Value> {
    let os = Some(r.info.operating_system.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("linux");
    let mut m = Map::new();
    for (k, v) in &r.labels {
        if restricted_label(k) {
            tracing::warn!(%node, label = %k, "ignoring a label a node may not set on itself");
        } else {
            m.insert(k.clone(), json!(v));
        }
    }
    m.insert("kubernetes.io/hostname".into(), json!(node));
    m.insert("kubernetes.io/os".into(), json!(os));
    m.insert("beta.kubernetes.io/os".into(), json!(os));
    if !r.info.architecture.is_empty() {
        m.insert("kubernetes.io/arch".into(), json!(r.info.architecture));
        m.insert("beta.kubernetes.io/arch".into(), json!(r.info.architecture));
    }
    m
}

fn condition(
    old: &Value,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let prev = old["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_));
    let transition = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": now, "lastTransitionTime": transition})
}

/// The node status a report describes (`old` is the current Node, for transition
/// times).
fn status(r: &NodeReport, old: &Value) -> Value {
    let now = meta::now();
    let i = &r.info;
    let conditions = vec![
        condition(
            old,
            "MemoryPressure",
            r.memory_pressure,
            if r.memory_pressure {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            if r.memory_pressure {
                "node has memory pressure"
            } else {
                "node has sufficient memory available"
            },
            &now,
        ),
        condition(
            old,
            "DiskPressure",
            r.disk_pressure,
            if r.disk_pressure {
                "KubeletHasDiskPressure"
            } else {
                "KubeletHasNoDiskPressure"
            },
            if r.disk_pressure {
                "node has disk pressure"
            } else {
                "node has no disk pressure"
            },
            &now,
        ),
        condition(
            old,
            "PIDPressure",
            r.pid_pressure,
            if r.pid_pressure {
                "KubeletHasInsufficientPID"
            } else {
                "KubeletHasSufficientPID"
            },
            if r.pid_pressure {
                "node has PID pressure"
            } else {
                "node has sufficient PID available"
            },
            &now,
        ),
        condition(
            old,
            "Ready",
            true,
            "KubeletReady",
            "flotilla-agent is posting ready status",
            &now,
        ),
    ];
    let images: Vec<Value> = r
        .images
        .iter()
        .map(|(names, size)| json!({"names": names, "sizeBytes": size}))
        .collect();
    json!({
        "capacity": resources(&r.capacity),
        "allocatable": resources(&r.allocatable),
        "addresses": r.addresses.iter().map(|(t, a)| json!({"type": t, "address": a})).collect::<Vec<_>>(),
        "nodeInfo": {
            "machineID": i.machine_id, "systemUUID": i.machine_id, "bootID": i.boot_id,
            "kernelVersion": i.kernel_version, "osImage": i.os_image,
            "containerRuntimeVersion": i.runtime_version, "kubeletVersion": i.agent_version,
            "kubeProxyVersion": "", "operatingSystem": i.operating_system, "architecture": i.architecture,
        },
        "conditions": conditions,
        "images": images,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
    })
}

/// Creates or updates the node's Node object from its report.
pub async fn apply_report(hub: &Hub, node: &str, r: &NodeReport) -> ApiResult<()> {
    let res = write::resource("", "nodes");
    let labels = labels(node, r);
    let updated = modify(&hub.api, res, "", node, None, |v| {
        let md = meta::metadata_mut(v);
        let cur = md.entry("labels").or_insert_with(|| json!({}));
        if !cur.is_object() {
            *cur = json!({});
        }
        let cur = cur.as_object_mut().expect("object");
        let mut changed = false;
        for (k, val) in &labels {
            if cur.get(k) != Some(val) {
                cur.insert(k.clone(), val.clone());
                changed = true;
            }
        }
        changed
    })
    .await?;
    let exists = updated.is_some()
        || hub
            .api
            .store
            .get(&flotilla_store::Key::cluster("nodes", node))?
            .is_some();
    if !exists {
        let taints: Vec<Value> = r
            .taints
            .iter()
            .map(|(k, v, e)| {
                let mut t = json!({"key": k, "effect": e});
                if !v.is_empty() {
                    t["value"] = json!(v);
                }
                t
            })
            .collect();
        let mut obj = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": labels},
            "spec": {},
            "status": status(r, &Value::Null),
        });
        if !taints.is_empty() {
            obj["spec"]["taints"] = json!(taints);
        }
        match write::create(&hub.api, res, "", obj).await {
            Ok(_) => {
                tracing::info!(%node, "node registered");
                return Ok(());
            }
            // Created meanwhile (another session of the same node): update below.
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    modify(&hub.api, res, "", node, Some("status"), |v| {
        v["status"] = status(r, v);
        true
    })
    .await?;
    Ok(())
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(hub: &Hub, node: &str) -> ApiResult<()> {
    let res = crate::api::registry::find("coordination.k8s.io", "v1", "leases")
        .expect("leases are served");
    let now = micro_now();
    let renewed = modify(&hub.api, res, "kube-node-lease", node, None, |v| {
        v["spec"]["holderIdentity"] = json!(node);
        v["spec"]["leaseDurationSeconds"] = json!(LEASE_SECONDS);
        v["spec"]["renewTime"] = json!(now);
        true
    })
    .await?;
    if renewed.is_some() {
        return Ok(());
    }
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
    });
    if let Some(o) = hub
        .api
        .store
        .get(&flotilla_store::Key::cluster("nodes", node))?
    {
        let n = meta::decode(&o.value, o.revision);
        lease["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Node", "name": node, "uid": n["metadata"]["uid"],
        }]);
    }
    match write::create(&hub.api, res, "kube-node-lease", lease).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_read_as_kubernetes_writes_them() {
        let r = resources(&NodeResources {
            cpu_millis: 3500,
            memory_bytes: 8 << 30,
            ephemeral_storage_bytes: 1 << 30,
            pods: 110,
        });
        assert_eq!(
            r,
            json!({"cpu": "3500m", "memory": "8388608Ki", "ephemeral-storage": "1048576Ki", "pods": "110"})
        );
    }

    #[test]
    fn a_node_cannot_give_itself_a_role() {
        assert!(restricted_label("node-role.kubernetes.io/control-plane"));
        assert!(restricted_label("node-restriction.kubernetes.io/x"));
        assert!(!restricted_label("site"));
        assert!(!restricted_label("example.com/zone"));
    }

    #[test]
    fn micro_times_have_six_decimals() {
        let t = micro_now();
        assert_eq!(t.len(), "2024-05-01T10:00:00.123456Z".len(), "{t}");
    }
}
