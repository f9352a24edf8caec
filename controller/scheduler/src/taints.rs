//! Taints and tolerations, with upstream's matching rules.
//!
//! A toleration tolerates a taint when its effect is empty or equal, its key is empty
//! (only with `Exists`) or equal, and its operator is `Exists` or `Equal` (the default)
//! with an equal value. The scheduler filters on `NoSchedule` and `NoExecute` taints and
//! scores on `PreferNoSchedule` ones.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

/// Taint the node lifecycle controller puts on a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint on a node whose Ready condition is Unknown (its agent went silent).
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint standing for `spec.unschedulable` (a cordoned node).
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Does one toleration tolerate one taint?
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = t.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            // An empty key only makes sense with Exists.
            t.key.as_deref().is_some_and(|k| !k.is_empty())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// Is a taint tolerated by any of the tolerations?
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first `NoSchedule`/`NoExecute` taint none of the tolerations tolerate.
pub fn first_untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerated(tolerations, t))
}

/// How many `PreferNoSchedule` taints the tolerations leave untolerated.
pub fn untolerated_prefer_no_schedule(taints: &[Taint], tolerations: &[Toleration]) -> i64 {
    taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tolerations, t))
        .count() as i64
}

/// A taint with no value and no time.
pub fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        effect: effect.to_owned(),
        value: None,
        time_added: None,
    }
}

/// The status of a node's Ready condition: "True", "False" or "Unknown"; a node that
/// never reported one counts as "False" (not ready yet).
pub fn ready_status(node: &Node) -> &str {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str())
        .unwrap_or("False")
}

/// The taints the scheduler sees on a node: its own, plus the `NoSchedule` condition
/// taint (not-ready or unreachable) upstream's lifecycle controller would have added for a
/// node that is not Ready, when the node does not carry that key yet.
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let key = match ready_status(node) {
        "True" => None,
        "Unknown" => Some(UNREACHABLE),
        _ => Some(NOT_READY),
    };
    if let Some(key) = key
        && !taints.iter().any(|t| t.key == key)
    {
        taints.push(taint(key, "NoSchedule"));
    }
    taints
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tol(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    fn tnt(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            value: value.map(str::to_owned),
            ..taint(key, effect)
        }
    }

    #[test]
    fn equal_needs_key_value_and_effect() {
        let t = tnt("dedicated", Some("gpu"), "NoSchedule");
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})),
            &t
        ));
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Equal", "value": "gpu"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "value": "cpu"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "value": "gpu", "effect": "NoExecute"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "other", "value": "gpu"})),
            &t
        ));
    }

    #[test]
    fn exists_ignores_the_value_and_an_empty_key_tolerates_everything() {
        let t = tnt("dedicated", Some("gpu"), "NoExecute");
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists"})),
            &t
        ));
        assert!(tolerates(&tol(json!({"operator": "Exists"})), &t));
        assert!(tolerates(
            &tol(json!({"operator": "Exists", "effect": "NoExecute"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"operator": "Exists", "effect": "NoSchedule"})),
            &t
        ));
        assert!(
            !tolerates(&tol(json!({"value": "gpu"})), &t),
            "Equal with an empty key tolerates nothing"
        );
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "operator": "Like"})),
            &t
        ));
    }

    #[test]
    fn only_no_schedule_and_no_execute_block() {
        let taints = vec![
            tnt("a", None, "PreferNoSchedule"),
            tnt("b", Some("1"), "NoExecute"),
        ];
        assert_eq!(first_untolerated(&taints, &[]).unwrap().key, "b");
        assert!(first_untolerated(&taints, &[tol(json!({"key": "b", "value": "1"}))]).is_none());
        assert_eq!(untolerated_prefer_no_schedule(&taints, &[]), 1);
        assert_eq!(
            untolerated_prefer_no_schedule(
                &taints,
                &[tol(json!({"key": "a", "operator": "Exists"}))]
            ),
            0
        );
    }

    #[test]
    fn not_ready_nodes_get_a_condition_taint() {
        let node = |status: Option<&str>| -> Node {
            let conditions = status
                .map(|s| json!([{"type": "Ready", "status": s}]))
                .unwrap_or(json!([]));
            serde_json::from_value(
                json!({"metadata": {"name": "n"}, "status": {"conditions": conditions}}),
            )
            .unwrap()
        };
        assert!(effective_taints(&node(Some("True"))).is_empty());
        assert_eq!(effective_taints(&node(Some("False")))[0].key, NOT_READY);
        assert_eq!(effective_taints(&node(None))[0].key, NOT_READY);
        let unknown = effective_taints(&node(Some("Unknown")));
        assert_eq!(
            (unknown[0].key.as_str(), unknown[0].effect.as_str()),
            (UNREACHABLE, "NoSchedule")
        );
        let mut tainted = node(Some("Unknown"));
        tainted.spec = Some(
            serde_json::from_value(
                json!({"taints": [{"key": UNREACHABLE, "effect": "NoExecute"}]}),
            )
            .unwrap(),
        );
        assert_eq!(
            effective_taints(&tainted).len(),
            1,
            "no duplicate of a taint already there"
        );
    }
}
