//! Defaulting per kind: the values Kubernetes fills in when a manifest leaves them
//! out (restartPolicy, imagePullPolicy, replicas, strategies, service types, ...).

use serde_json::{Value, json};

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.to_owned(), v);
    }
}

/// Applies the defaults of `kind` to `obj` in place.
pub fn apply(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
            }
            set_default(obj, "status", json!({}));
            let qos = qos_class(&obj["spec"]);
            set_default(&mut obj["status"], "phase", json!("Pending"));
            set_default(&mut obj["status"], "qosClass", json!(qos));
        }
        "Deployment" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
                // `strategy: {}` (what kubectl's generators send) defaults like none.
                set_default(&mut spec["strategy"], "type", json!("RollingUpdate"));
                if spec["strategy"]["type"] == "RollingUpdate" {
                    set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
                    let ru = &mut spec["strategy"]["rollingUpdate"];
                    set_default(ru, "maxUnavailable", json!("25%"));
                    set_default(ru, "maxSurge", json!("25%"));
                }
                template(spec);
            }
        }
        "ReplicaSet" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "replicas", json!(1));
                template(spec);
            }
        }
        "DaemonSet" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
                if spec["updateStrategy"]["type"].is_null() {
                    spec["updateStrategy"]["type"] = json!("RollingUpdate");
                }
                if spec["updateStrategy"]["type"] == "RollingUpdate" {
                    set_default(&mut spec["updateStrategy"], "rollingUpdate", json!({}));
                    let ru = &mut spec["updateStrategy"]["rollingUpdate"];
                    set_default(ru, "maxUnavailable", json!(1));
                    set_default(ru, "maxSurge", json!(0));
                }
                template(spec);
            }
        }
        "Job" => job(obj),
        "Service" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, "protocol", json!("TCP"));
                        // A zero or empty targetPort means "unset", as in Kubernetes.
                        if p["targetPort"] == json!(0) || p["targetPort"] == json!("") {
                            p["targetPort"] = Value::Null;
                        }
                        let port = p["port"].clone();
                        set_default(p, "targetPort", port);
                    }
                }
            }
        }
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if labels.is_null() {
                    *labels = json!({});
                }
                labels["kubernetes.io/metadata.name"] = name;
            }
            // A new namespace (no phase yet) gets the kubernetes finalizer, as
            // Kubernetes' create strategy does; updates keep what they carry.
            set_default(obj, "spec", json!({}));
            if obj["status"]["phase"].is_null() {
                set_default(&mut obj["spec"], "finalizers", json!(["kubernetes"]));
            }
            set_default(obj, "status", json!({}));
            set_default(&mut obj["status"], "phase", json!("Active"));
        }
        "Secret" => {
            set_default(obj, "type", json!("Opaque"));
            if let Some(sd) = obj
                .as_object_mut()
                .and_then(|m| m.remove("stringData"))
                .and_then(|v| v.as_object().cloned())
            {
                use base64::Engine as _;
                set_default(obj, "data", json!({}));
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    obj["data"][k] =
                        json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()));
                }
            }
        }
        _ => {}
    }
}

fn template(spec: &mut Value) {
    if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod_spec(ps);
    }
}

fn job(obj: &mut Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return;
    }
    set_default(spec, "parallelism", json!(1));
    if spec.get("completions").is_none_or(Value::is_null) && spec["parallelism"] == json!(1) {
        spec["completions"] = json!(1);
    }
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    let manual = spec["manualSelector"].as_bool().unwrap_or(false);
    if !manual && !uid.is_empty() && spec.get("selector").is_none_or(Value::is_null) {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        let t = &mut spec["template"];
        if t.is_object() {
            set_default(t, "metadata", json!({}));
            set_default(&mut t["metadata"], "labels", json!({}));
            let l = &mut t["metadata"]["labels"];
            l["batch.kubernetes.io/controller-uid"] = json!(uid);
            l["controller-uid"] = json!(uid);
            l["batch.kubernetes.io/job-name"] = json!(name);
            l["job-name"] = json!(name);
        }
    }
    template(spec);
}

/// Pod spec defaults, also applied to workload templates.
pub fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            for c in cs {
                container(c);
            }
        }
    }
}

fn container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    let image = c["image"].as_str().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    let tag = last.split_once(':').map(|(_, t)| t);
    let policy = if image.contains('@') {
        "IfNotPresent"
    } else if tag.is_none() || tag == Some("latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// The QoS class of a pod spec: Guaranteed, Burstable or BestEffort.
pub fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .collect();
    let mut any = false;
    let mut all_guaranteed = !cs.is_empty();
    for c in &cs {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        let has = |v: &Value| v.as_object().is_some_and(|m| !m.is_empty());
        if has(req) || has(lim) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = &lim[r];
            let q = if req[r].is_null() { l } else { &req[r] };
            if l.is_null() || q != l {
                all_guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if all_guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_match_kubernetes() {
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "reg:5000/x:1.2", "ports": [{"containerPort": 80}]}]}});
        apply("Pod", &mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["spec"]["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "BestEffort");
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let mut s = json!({"stringData": {"k": "v"}});
        apply("Secret", &mut s);
        assert_eq!(s["data"]["k"], "dg==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn service_target_port_defaults_to_port() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply("Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["type"], "ClusterIP");
    }

    #[test]
    fn empty_structs_from_generators_are_defaulted() {
        // kubectl's typed generators send `strategy: {}`, `spec: {}`, `status: {}`
        // and targetPort 0 where JSON manifests leave the field out.
        let mut d = json!({"spec": {"strategy": {}, "template": {"spec": {}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let mut n = json!({"metadata": {"name": "x"}, "spec": {}, "status": {}});
        apply("Namespace", &mut n);
        assert_eq!(n["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(n["status"]["phase"], "Active");
        let mut s = json!({"spec": {"ports": [{"port": 80, "targetPort": 0}]}});
        apply("Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
    }
}
