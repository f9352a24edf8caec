//! Server-side printing: `meta.k8s.io/v1` Tables with kubectl's usual columns for
//! each kind (what `kubectl get` shows).

use super::query::Query;
use super::registry::Resource;
use serde_json::{Value, json};

/// A column: name, type, description.
type Col = (&'static str, &'static str, &'static str);

fn columns(kind: &str) -> Vec<Col> {
    let name = ("Name", "string", "Name must be unique within a namespace.");
    let age = (
        "Age",
        "string",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    let mut c = vec![name];
    c.extend(match kind {
        "Pod" => vec![
            ("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
            ("Status", "string", "The aggregate status of the containers in this pod."),
            ("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            ("IP", "string", "IP address allocated to the pod."),
            ("Node", "string", "Name of the Node this pod is scheduled to."),
        ],
        "Node" => vec![
            ("Status", "string", "The status of the node"),
            ("Roles", "string", "The roles of the node"),
            age,
            ("Version", "string", "Kubelet Version reported by the node."),
        ],
        "Deployment" => vec![
            ("Ready", "string", "Number of the pod with ready state"),
            ("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            ("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            age,
        ],
        "ReplicaSet" => vec![
            ("Desired", "integer", "Replicas is the number of desired replicas."),
            ("Current", "integer", "Replicas is the most recently observed number of replicas."),
            ("Ready", "integer", "The number of ready replicas for this replica set."),
            age,
        ],
        "DaemonSet" => vec![
            ("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
            ("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            ("Ready", "integer", "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            ("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
            ("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
            ("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node."),
            age,
        ],
        "Job" => vec![
            ("Status", "string", "Status of the job."),
            ("Completions", "string", "The desired number of successfully finished pods the job should be run with."),
            ("Duration", "string", "Time required to complete the job."),
            age,
        ],
        "Service" => vec![
            ("Type", "string", "The type of the service."),
            ("Cluster-IP", "string", "The cluster IP address of the service."),
            ("External-IP", "string", "The external IP addresses of the service."),
            ("Port(s)", "string", "The ports of the service."),
            age,
        ],
        "Event" => vec![
            ("Last Seen", "string", "Time when last event occurred."),
            ("Type", "string", "Type of this event."),
            ("Reason", "string", "Reason is why the action was taken."),
            ("Object", "string", "The object that this event is about."),
            ("Message", "string", "A human-readable description of the status of this operation."),
        ],
        "Namespace" => vec![("Status", "string", "The status of the namespace"), age],
        "ConfigMap" => vec![("Data", "string", "Number of keys in the configmap"), age],
        "Secret" => vec![
            ("Type", "string", "The type of the secret"),
            ("Data", "string", "Number of keys in the secret"),
            age,
        ],
        "Endpoints" => vec![("Endpoints", "string", "Endpoints of the service"), age],
        "ServiceAccount" => vec![("Secrets", "string", "Number of secrets"), age],
        "Lease" => vec![("Holder", "string", "The holder of the lease"), age],
        _ => vec![age],
    });
    c
}

/// kubectl's relative time: 45s, 3m12s, 25m, 5h3m, 2d4h, 30d, 2y.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn since(ts: &Value) -> Option<i64> {
    let t: jiff::Timestamp = ts.as_str()?.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - t.as_second())
}

fn age(obj: &Value) -> Value {
    match since(&obj["metadata"]["creationTimestamp"]) {
        Some(s) => json!(human_duration(s)),
        None => json!("<unknown>"),
    }
}

fn count(v: &Value) -> usize {
    v.as_object().map(|m| m.len()).unwrap_or(0)
}

fn or_none(s: String) -> Value {
    if s.is_empty() {
        json!("<none>")
    } else {
        json!(s)
    }
}

fn pod_cells(p: &Value) -> Vec<Value> {
    let statuses = p["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = p["spec"]["containers"]
        .as_array()
        .map(|c| c.len())
        .unwrap_or(0);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .map(|s| s["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut reason = p["status"]["reason"]
        .as_str()
        .or(p["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    for s in &statuses {
        if let Some(r) = s["state"]["waiting"]["reason"].as_str() {
            reason = r.to_owned();
        } else if let Some(r) = s["state"]["terminated"]["reason"].as_str() {
            reason = r.to_owned();
        }
    }
    if !p["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        age(p),
        or_none(p["status"]["podIP"].as_str().unwrap_or("").to_owned()),
        or_none(p["spec"]["nodeName"].as_str().unwrap_or("").to_owned()),
    ]
}

fn service_ports(s: &Value) -> String {
    let ports: Vec<String> = s["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    ports.join(",")
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let st = &o["status"];
    let spec = &o["spec"];
    let i = |v: &Value| v.as_i64().unwrap_or(0);
    let mut row = vec![json!(o["metadata"]["name"].as_str().unwrap_or(""))];
    row.extend(match kind {
        "Pod" => pod_cells(o),
        "Node" => {
            let ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_owned();
            if spec["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            vec![
                json!(status),
                or_none(roles.join(",")),
                age(o),
                json!(st["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("")),
            ]
        }
        "Deployment" => vec![
            json!(format!(
                "{}/{}",
                i(&st["readyReplicas"]),
                i(&spec["replicas"])
            )),
            json!(i(&st["updatedReplicas"])),
            json!(i(&st["availableReplicas"])),
            age(o),
        ],
        "ReplicaSet" => vec![
            json!(i(&spec["replicas"])),
            json!(i(&st["replicas"])),
            json!(i(&st["readyReplicas"])),
            age(o),
        ],
        "DaemonSet" => {
            let sel: Vec<String> = spec["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            vec![
                json!(i(&st["desiredNumberScheduled"])),
                json!(i(&st["currentNumberScheduled"])),
                json!(i(&st["numberReady"])),
                json!(i(&st["updatedNumberScheduled"])),
                json!(i(&st["numberAvailable"])),
                or_none(sel.join(",")),
                age(o),
            ]
        }
        "Job" => {
            let conds = st["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let duration = match (since(&st["startTime"]), since(&st["completionTime"])) {
                (Some(a), Some(b)) => human_duration(a - b),
                (Some(a), None) => human_duration(a),
                _ => String::new(),
            };
            vec![
                json!(status),
                json!(format!(
                    "{}/{}",
                    i(&st["succeeded"]),
                    spec["completions"]
                        .as_i64()
                        .map(|c| c.to_string())
                        .unwrap_or("1".into())
                )),
                json!(duration),
                age(o),
            ]
        }
        "Service" => {
            let ext: Vec<String> = spec["externalIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let ext = if ext.is_empty() {
                if spec["type"] == "LoadBalancer" {
                    "<pending>".to_owned()
                } else {
                    "<none>".to_owned()
                }
            } else {
                ext.join(",")
            };
            vec![
                json!(spec["type"].as_str().unwrap_or("ClusterIP")),
                or_none(spec["clusterIP"].as_str().unwrap_or("").to_owned()),
                json!(ext),
                or_none(service_ports(o)),
                age(o),
            ]
        }
        "Event" => {
            let last = if o["lastTimestamp"].is_null() {
                &o["eventTime"]
            } else {
                &o["lastTimestamp"]
            };
            let inv = &o["involvedObject"];
            vec![
                json!(
                    since(last)
                        .map(human_duration)
                        .unwrap_or("<unknown>".into())
                ),
                json!(o["type"].as_str().unwrap_or("")),
                json!(o["reason"].as_str().unwrap_or("")),
                json!(format!(
                    "{}/{}",
                    inv["kind"].as_str().unwrap_or("").to_lowercase(),
                    inv["name"].as_str().unwrap_or("")
                )),
                json!(o["message"].as_str().unwrap_or("")),
            ]
        }
        "Namespace" => vec![json!(st["phase"].as_str().unwrap_or("Active")), age(o)],
        "ConfigMap" => vec![json!(count(&o["data"]) + count(&o["binaryData"])), age(o)],
        "Secret" => vec![
            json!(o["type"].as_str().unwrap_or("Opaque")),
            json!(count(&o["data"])),
            age(o),
        ],
        "Endpoints" => {
            let mut eps = Vec::new();
            for s in o["subsets"].as_array().into_iter().flatten() {
                for a in s["addresses"].as_array().into_iter().flatten() {
                    for p in s["ports"].as_array().into_iter().flatten() {
                        eps.push(format!("{}:{}", a["ip"].as_str().unwrap_or(""), p["port"]));
                    }
                }
            }
            vec![or_none(eps.join(",")), age(o)]
        }
        "ServiceAccount" => vec![
            json!(o["secrets"].as_array().map(|a| a.len()).unwrap_or(0)),
            age(o),
        ],
        "Lease" => vec![
            or_none(spec["holderIdentity"].as_str().unwrap_or("").to_owned()),
            age(o),
        ],
        _ => vec![age(o)],
    });
    row
}

fn row_object(o: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
        }
    }
}

/// What each row carries of its object (`includeObject`: None, Metadata (default) or
/// Object).
pub fn include(q: &Query) -> &str {
    q.raw
        .get("includeObject")
        .map(String::as_str)
        .unwrap_or("Metadata")
}

/// The column definitions of `res`'s table, in row order.
pub fn column_definitions(res: &Resource) -> Value {
    // Events lead with Last Seen; their Name column is wide-only, at the end.
    let event = res.kind == "Event";
    let mut cols = columns(res.kind);
    if event {
        let name = cols.remove(0);
        cols.push(name);
    }
    cols.iter()
        .map(|(name, ty, desc)| {
            let name_col = *name == "Name";
            json!({"name": name, "type": ty, "format": if name_col { "name" } else { "" }, "description": desc,
                "priority": if event && name_col { 1 } else { 0 }})
        })
        .collect()
}

/// One row: the cells of `o` under [`column_definitions`], and its object as `include`
/// asks.
pub fn row(res: &Resource, o: &Value, include: &str) -> Value {
    let mut c = cells(res.kind, o);
    if res.kind == "Event" {
        let name = c.remove(0);
        c.push(name);
    }
    json!({"cells": c, "object": row_object(o, include)})
}

/// Renders objects of `res` as a Table.
pub fn table(
    res: &Resource,
    objects: &[Value],
    rv: &str,
    q: &Query,
    cont: Option<String>,
) -> Value {
    let include = include(q);
    let rows: Vec<Value> = objects.iter().map(|o| row(res, o, include)).collect();
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": column_definitions(res), "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(25 * 60), "25m");
        assert_eq!(human_duration(5 * 3600 + 180), "5h3m");
        assert_eq!(human_duration(52 * 3600), "2d4h");
    }

    #[test]
    fn pod_row_has_kubectl_columns() {
        let res = super::super::registry::find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let t = table(res, &[pod], "5", &Query::default(), None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[6], "n1");
    }
}
