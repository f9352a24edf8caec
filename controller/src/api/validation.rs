//! Validation per kind with Kubernetes' field paths and messages
//! (`spec.containers[0].image: Required value`).

use super::query::LabelSelector;
use super::status::Cause;
use serde_json::{Value, json};

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Kinds whose names must be DNS labels rather than subdomains.
fn label_named(kind: &str) -> bool {
    matches!(kind, "Namespace" | "Service")
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && (s.is_empty()
            || (s.as_bytes()[0].is_ascii_alphanumeric()
                && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()))
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Validates metadata: name, labels.
pub fn metadata(kind: &str, obj: &Value, out: &mut Vec<Cause>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        if obj["metadata"]["generateName"]
            .as_str()
            .unwrap_or("")
            .is_empty()
        {
            out.push(Cause::required("metadata.name"));
        }
    } else if label_named(kind) {
        if !is_dns_label(name) {
            out.push(Cause::invalid("metadata.name", &json!(name), LABEL_MSG));
        }
    } else if !is_dns_subdomain(name) {
        out.push(Cause::invalid("metadata.name", &json!(name), SUBDOMAIN_MSG));
    }
    labels("metadata.labels", &obj["metadata"]["labels"], out);
}

fn labels(path: &str, labels: &Value, out: &mut Vec<Cause>) {
    if let Some(m) = labels.as_object() {
        for (k, v) in m {
            if !is_qualified_name(k) {
                out.push(Cause::invalid(
                    path,
                    &json!(k),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
            if let Some(s) = v.as_str()
                && !is_label_value(s)
            {
                out.push(Cause::invalid(
                    path,
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
}

/// Validates `obj` of `kind`; returns the field causes (empty when valid).
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    metadata(kind, obj, &mut out);
    let spec = &obj["spec"];
    match kind {
        "Pod" => pod_spec("spec", spec, &mut out),
        "Deployment" | "ReplicaSet" | "DaemonSet" => workload(kind, spec, &mut out),
        "Job" => {
            template("spec.template", &spec["template"], &mut out);
            let rp = &spec["template"]["spec"]["restartPolicy"];
            if spec["template"].is_object() && !matches!(rp.as_str(), Some("OnFailure" | "Never")) {
                out.push(Cause::unsupported(
                    "spec.template.spec.restartPolicy",
                    rp,
                    &["OnFailure", "Never"],
                ));
            }
            for f in ["parallelism", "completions", "backoffLimit"] {
                if spec[f].as_i64().is_some_and(|n| n < 0) {
                    out.push(Cause::invalid(
                        format!("spec.{f}"),
                        &spec[f],
                        "must be greater than or equal to 0",
                    ));
                }
            }
        }
        "Service" => service(spec, &mut out),
        _ => {}
    }
    out
}

fn workload(kind: &str, spec: &Value, out: &mut Vec<Cause>) {
    if spec["replicas"].as_i64().is_some_and(|n| n < 0) {
        out.push(Cause::invalid(
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        ));
    }
    let sel = &spec["selector"];
    let empty_sel = sel.is_null()
        || (sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
            && sel["matchExpressions"]
                .as_array()
                .is_none_or(|a| a.is_empty()));
    if empty_sel {
        out.push(Cause::required("spec.selector"));
    }
    template("spec.template", &spec["template"], out);
    if !empty_sel && spec["template"].is_object() {
        let tl = &spec["template"]["metadata"]["labels"];
        if !LabelSelector::from_json(sel).matches(tl) {
            out.push(Cause::invalid(
                "spec.template.metadata.labels",
                &json!(format!("map[string]string{}", go_map(tl))),
                "`selector` does not match template `labels`",
            ));
        }
    }
    if kind == "Deployment" {
        let st = &spec["strategy"]["type"];
        if !st.is_null() && !matches!(st.as_str(), Some("Recreate" | "RollingUpdate")) {
            out.push(Cause::unsupported(
                "spec.strategy.type",
                st,
                &["Recreate", "RollingUpdate"],
            ));
        }
    }
}

fn go_map(v: &Value) -> String {
    let items: Vec<String> = v
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("\"{k}\":{}", v)).collect())
        .unwrap_or_default();
    format!("{{{}}}", items.join(", "))
}

fn template(path: &str, t: &Value, out: &mut Vec<Cause>) {
    if !t.is_object() {
        out.push(Cause::required(path));
        return;
    }
    labels(
        &format!("{path}.metadata.labels"),
        &t["metadata"]["labels"],
        out,
    );
    pod_spec(&format!("{path}.spec"), &t["spec"], out);
}

/// Pod spec validation (containers, images, ports, restart policy, volumes).
pub fn pod_spec(path: &str, spec: &Value, out: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        out.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = Vec::new();
    for key in ["initContainers", "containers"] {
        for (i, c) in spec[key].as_array().into_iter().flatten().enumerate() {
            let cp = format!("{path}.{key}[{i}]");
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() {
                out.push(Cause::required(format!("{cp}.name")));
            } else if !is_dns_label(name) {
                out.push(Cause::invalid(format!("{cp}.name"), &c["name"], LABEL_MSG));
            } else if names.contains(&name) {
                out.push(Cause::duplicate(format!("{cp}.name"), &c["name"]));
            } else {
                names.push(name);
            }
            if c["image"].as_str().unwrap_or("").trim().is_empty() {
                out.push(Cause::required(format!("{cp}.image")));
            }
            let pp = &c["imagePullPolicy"];
            if !pp.is_null() && !matches!(pp.as_str(), Some("Always" | "IfNotPresent" | "Never")) {
                out.push(Cause::unsupported(
                    format!("{cp}.imagePullPolicy"),
                    pp,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let port = &p["containerPort"];
                match port.as_i64() {
                    None => out.push(Cause::required(format!("{cp}.ports[{j}].containerPort"))),
                    Some(n) if !(1..=65535).contains(&n) => out.push(Cause::invalid(
                        format!("{cp}.ports[{j}].containerPort"),
                        port,
                        "must be between 1 and 65535, inclusive",
                    )),
                    _ => {}
                }
                protocol(&format!("{cp}.ports[{j}].protocol"), &p["protocol"], out);
            }
            for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                if e["name"].as_str().unwrap_or("").is_empty() {
                    out.push(Cause::required(format!("{cp}.env[{j}].name")));
                }
            }
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let vname = m["name"].as_str().unwrap_or("");
                let declared = spec["volumes"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|v| v["name"] == vname));
                if m["mountPath"].as_str().unwrap_or("").is_empty() {
                    out.push(Cause::required(format!("{cp}.volumeMounts[{j}].mountPath")));
                }
                if !declared {
                    out.push(Cause {
                        kind: "FieldValueNotFound",
                        field: format!("{cp}.volumeMounts[{j}].name"),
                        detail: format!("Not found: \"{vname}\""),
                    });
                }
            }
        }
    }
    let rp = &spec["restartPolicy"];
    if !rp.is_null() && !matches!(rp.as_str(), Some("Always" | "OnFailure" | "Never")) {
        out.push(Cause::unsupported(
            format!("{path}.restartPolicy"),
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
    let mut vnames = Vec::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let n = v["name"].as_str().unwrap_or("");
        if n.is_empty() {
            out.push(Cause::required(format!("{path}.volumes[{i}].name")));
        } else if vnames.contains(&n) {
            out.push(Cause::duplicate(
                format!("{path}.volumes[{i}].name"),
                &v["name"],
            ));
        } else {
            vnames.push(n);
        }
    }
}

fn protocol(path: &str, p: &Value, out: &mut Vec<Cause>) {
    if !p.is_null() && !matches!(p.as_str(), Some("TCP" | "UDP" | "SCTP")) {
        out.push(Cause::unsupported(path, p, &["SCTP", "TCP", "UDP"]));
    }
}

fn service(spec: &Value, out: &mut Vec<Cause>) {
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        out.push(Cause::unsupported(
            "spec.type",
            &spec["type"],
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec["ports"].as_array();
    let headless = spec["clusterIP"] == "None";
    if ports.is_none_or(|p| p.is_empty()) && ty != "ExternalName" && !headless {
        out.push(Cause::required("spec.ports"));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let pp = format!("spec.ports[{i}]");
        match p["port"].as_i64() {
            None => out.push(Cause::required(format!("{pp}.port"))),
            Some(n) if !(1..=65535).contains(&n) => out.push(Cause::invalid(
                format!("{pp}.port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        if many && p["name"].as_str().unwrap_or("").is_empty() {
            out.push(Cause::required(format!("{pp}.name")));
        }
        protocol(&format!("{pp}.protocol"), &p["protocol"], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_image_reports_the_field_path() {
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        let c = validate("Pod", &p);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].message(), "spec.containers[0].image: Required value");
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let c = validate("Deployment", &d);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn names_are_checked() {
        let c = validate("ConfigMap", &json!({"metadata": {"name": "Bad_Name"}}));
        assert_eq!(c[0].field, "metadata.name");
        assert!(validate("ConfigMap", &json!({"metadata": {"name": "a.b-c"}})).is_empty());
        assert!(!validate("Namespace", &json!({"metadata": {"name": "a.b"}})).is_empty());
    }
}
