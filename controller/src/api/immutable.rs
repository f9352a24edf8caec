//! What an update may not change, as Kubernetes' update validation has it: a pod's
//! spec beyond images, activeDeadlineSeconds, added tolerations and the like
//! (ValidatePodUpdate), a Job's template and completions, the data of ConfigMaps and
//! Secrets marked immutable, a Secret's type. (Workload selectors and a Service's
//! clusterIP are checked next to the update in `objects`.)

use super::status::Cause;
use serde_json::{Value, json};

const POD_UPDATABLE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// The causes that forbid updating `old` to `new` (both defaulted objects of `kind`).
pub fn check(kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    match kind {
        "Pod" => pod(&old["spec"], &new["spec"]),
        "Job" => job(&old["spec"], &new["spec"]),
        "ConfigMap" | "Secret" => data(kind, old, new),
        _ => Vec::new(),
    }
}

fn set(obj: &mut Value, key: &str, v: &Value) {
    if let Some(m) = obj.as_object_mut() {
        if v.is_null() {
            m.remove(key);
        } else {
            m.insert(key.to_owned(), v.clone());
        }
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn pod(old: &Value, new: &Value) -> Vec<Cause> {
    let mut munged = new.clone();
    // Images may change.
    for key in ["containers", "initContainers"] {
        let olds = items(&old[key]);
        if let Some(news) = munged.get_mut(key).and_then(Value::as_array_mut)
            && news.len() == olds.len()
        {
            for (n, o) in news.iter_mut().zip(olds) {
                set(n, "image", &o["image"]);
            }
        }
    }
    // activeDeadlineSeconds may be set, or lowered, never removed.
    let (old_ads, new_ads) = (&old["activeDeadlineSeconds"], &new["activeDeadlineSeconds"]);
    if let Some(n) = new_ads.as_i64() {
        if !(0..=i64::from(i32::MAX)).contains(&n) {
            return vec![Cause::invalid(
                "spec.activeDeadlineSeconds",
                new_ads,
                format!("must be between 0 and {}, inclusive", i32::MAX),
            )];
        }
        if old_ads.as_i64().is_some_and(|o| o < n) {
            return vec![Cause::invalid(
                "spec.activeDeadlineSeconds",
                new_ads,
                "must be less than or equal to previous value",
            )];
        }
    } else if !old_ads.is_null() {
        return vec![Cause::invalid(
            "spec.activeDeadlineSeconds",
            &Value::Null,
            "must not update from a positive integer to nil value",
        )];
    }
    set(&mut munged, "activeDeadlineSeconds", old_ads);
    // Tolerations may only be added.
    let old_tol = items(&old["tolerations"]);
    if old_tol
        .iter()
        .all(|t| items(&new["tolerations"]).contains(t))
    {
        set(&mut munged, "tolerations", &old["tolerations"]);
    }
    // A negative grace period may become 1.
    if old["terminationGracePeriodSeconds"]
        .as_i64()
        .is_some_and(|g| g < 0)
        && new["terminationGracePeriodSeconds"] == json!(1)
    {
        set(
            &mut munged,
            "terminationGracePeriodSeconds",
            &old["terminationGracePeriodSeconds"],
        );
    }
    // Scheduling gates may only be removed.
    let old_gates = items(&old["schedulingGates"]);
    if items(&new["schedulingGates"])
        .iter()
        .all(|g| old_gates.contains(g))
    {
        set(&mut munged, "schedulingGates", &old["schedulingGates"]);
    }
    // Null and absent are the same (Go's nil); compare without nulls.
    let old = &without_nulls(old);
    let munged = without_nulls(&munged);
    if munged == *old {
        return Vec::new();
    }
    let mut changed = Vec::new();
    diff("spec", old, &munged, &mut changed);
    let shown: Vec<String> = changed.iter().take(8).map(|c| format!("  {c}")).collect();
    let more = changed.len().saturating_sub(shown.len());
    let mut detail = format!("{POD_UPDATABLE}\n{}", shown.join("\n"));
    if more > 0 {
        detail.push_str(&format!("\n  ... and {more} more"));
    }
    vec![Cause::forbidden("spec", detail)]
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The paths where `a` and `b` differ, with both values (`path: old -> new`).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let null = Value::Null;
                diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ => out.push(format!("{path}: {a} -> {b}")),
    }
}

fn immutable(field: &str, v: &Value) -> Cause {
    Cause::invalid(field, v, "field is immutable")
}

fn job(old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if old["template"] != new["template"] {
        out.push(immutable("spec.template", &new["template"]));
    }
    if old["completionMode"] != new["completionMode"] {
        out.push(immutable("spec.completionMode", &new["completionMode"]));
    }
    // Only Indexed jobs may scale completions (with parallelism), as upstream.
    if old["completions"] != new["completions"] && new["completionMode"] != "Indexed" {
        out.push(immutable("spec.completions", &new["completions"]));
    }
    out
}

fn data(kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if kind == "Secret" && old["type"] != new["type"] {
        out.push(immutable("type", &new["type"]));
    }
    if old["immutable"] == true {
        if new["immutable"] != true {
            out.push(Cause::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        let fields: &[&str] = if kind == "Secret" {
            &["data"]
        } else {
            &["data", "binaryData"]
        };
        for f in fields {
            if old[*f] != new[*f] {
                out.push(Cause::forbidden(
                    *f,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        json!({"containers": [{"name": "a", "image": "busybox:1", "ports": [{"containerPort": 80}]}],
               "tolerations": [{"key": "k", "operator": "Exists"}],
               "terminationGracePeriodSeconds": 30})
    }

    fn pod_with(s: Value) -> Value {
        json!({"spec": s})
    }

    #[test]
    fn pods_may_change_images_deadlines_and_add_tolerations() {
        let old = pod_with(spec());
        let mut s = spec();
        s["containers"][0]["image"] = json!("busybox:2");
        s["activeDeadlineSeconds"] = json!(60);
        s["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "x", "operator": "Exists"}));
        let c = check("Pod", &old, &pod_with(s.clone()));
        assert!(c.is_empty(), "{c:?}");
        // Raising the deadline or removing it is not allowed.
        let mut higher = s.clone();
        higher["activeDeadlineSeconds"] = json!(61);
        let c = check("Pod", &pod_with(s.clone()), &pod_with(higher));
        assert!(
            c[0].message()
                .contains("must be less than or equal to previous value")
        );
        let mut removed = s.clone();
        removed
            .as_object_mut()
            .unwrap()
            .remove("activeDeadlineSeconds");
        assert_eq!(check("Pod", &pod_with(s), &pod_with(removed)).len(), 1);
    }

    #[test]
    fn other_pod_changes_are_forbidden_with_the_changed_field() {
        let old = pod_with(spec());
        let mut s = spec();
        s["containers"][0]["ports"][0]["containerPort"] = json!(8080);
        let c = check("Pod", &old, &pod_with(s));
        assert_eq!(c.len(), 1);
        let m = c[0].message();
        assert!(m.starts_with("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{m}");
        assert!(
            m.contains("spec.containers[0].ports[0].containerPort: 80 -> 8080"),
            "{m}"
        );
        let mut s = spec();
        s["tolerations"] = json!([]);
        assert_eq!(check("Pod", &old, &pod_with(s)).len(), 1);
    }

    #[test]
    fn immutable_configmaps_and_secrets_keep_their_data() {
        let old = json!({"immutable": true, "data": {"a": "1"}});
        assert!(check("ConfigMap", &old, &old.clone()).is_empty());
        let new = json!({"immutable": true, "data": {"a": "2"}});
        let c = check("ConfigMap", &old, &new);
        assert_eq!(
            c[0].message(),
            "data: Forbidden: field is immutable when `immutable` is set"
        );
        let new = json!({"immutable": false, "data": {"a": "1"}});
        assert_eq!(check("ConfigMap", &old, &new).len(), 1);
        let mutable = json!({"data": {"a": "1"}});
        assert!(check("ConfigMap", &mutable, &json!({"data": {"a": "9"}})).is_empty());
        let c = check(
            "Secret",
            &json!({"type": "Opaque"}),
            &json!({"type": "kubernetes.io/tls"}),
        );
        assert_eq!(c[0].field, "type");
    }

    #[test]
    fn job_templates_are_immutable() {
        let old = json!({"spec": {"completions": 1, "template": {"spec": {"containers": [{"image": "a"}]}}}});
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let c = check("Job", &old, &new);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec.template");
    }
}
