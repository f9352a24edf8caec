//! Label and node selectors: `matchLabels`/`matchExpressions` on pods and the node
//! affinity terms (`In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`, `matchFields`).
//!
//! Upstream semantics: node selector terms are ORed, the requirements inside one term
//! ANDed; a term without requirements matches nothing; a malformed requirement (unknown
//! operator, `Gt` with a non-integer) makes its term match nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels as stored on objects.
pub type Labels = BTreeMap<String, String>;

/// Does a label selector match these labels? An empty selector matches everything.
pub fn label_selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    if let Some(ml) = &selector.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

/// A map selector (`spec.nodeSelector`, a service's `spec.selector`): all pairs match.
pub fn map_selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One node affinity requirement against node labels.
fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let listed = |v: &str| values.iter().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => value.is_none_or(|v| !listed(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// One node selector term: all label expressions and all field expressions
/// (`metadata.name`, the only supported field) hold. An empty term matches nothing.
pub fn node_selector_term_matches(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &Labels,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(node_name))
        })
}

/// The node-affinity/selector filter: `spec.nodeSelector` and the required node affinity.
pub fn pod_matches_node_selector(spec: &PodSpec, node_name: &str, labels: &Labels) -> bool {
    if let Some(sel) = &spec.node_selector
        && !map_selector_matches(sel, labels)
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| node_selector_term_matches(t, node_name, labels)),
    }
}

/// Sum of the weights of the preferred node affinity terms a node matches.
pub fn preferred_node_affinity_score(spec: &PodSpec, node_name: &str, labels: &Labels) -> i64 {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|terms| {
            terms
                .iter()
                .filter(|t| {
                    t.weight != 0 && node_selector_term_matches(&t.preference, node_name, labels)
                })
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn term(v: serde_json::Value) -> NodeSelectorTerm {
        serde_json::from_value(v).unwrap()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> serde_json::Value {
        json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
    }

    #[test]
    fn node_affinity_operators() {
        let l = labels(&[("zone", "a"), ("cores", "8")]);
        let m = |t| node_selector_term_matches(&term(t), "n1", &l);
        assert!(m(expr("zone", "In", &["a", "b"])));
        assert!(!m(expr("zone", "In", &["b"])));
        assert!(!m(expr("missing", "In", &["a"])));
        assert!(m(expr("zone", "NotIn", &["b"])));
        assert!(!m(expr("zone", "NotIn", &["a"])));
        assert!(
            m(expr("missing", "NotIn", &["a"])),
            "NotIn matches an absent label"
        );
        assert!(m(expr("zone", "Exists", &[])));
        assert!(!m(expr("missing", "Exists", &[])));
        assert!(m(expr("missing", "DoesNotExist", &[])));
        assert!(!m(expr("zone", "DoesNotExist", &[])));
        assert!(m(expr("cores", "Gt", &["4"])));
        assert!(!m(expr("cores", "Gt", &["8"])));
        assert!(m(expr("cores", "Lt", &["9"])));
        assert!(!m(expr("cores", "Lt", &["8"])));
        assert!(
            !m(expr("zone", "Gt", &["1"])),
            "non-integer label never matches Gt"
        );
        assert!(
            !m(expr("cores", "Gt", &["x"])),
            "non-integer bound never matches"
        );
        assert!(
            !m(expr("zone", "Near", &["a"])),
            "unknown operator never matches"
        );
        assert!(!m(json!({})), "an empty term matches nothing");
    }

    #[test]
    fn match_fields_select_by_node_name() {
        let l = Labels::new();
        let t =
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]});
        assert!(node_selector_term_matches(&term(t.clone()), "n1", &l));
        assert!(!node_selector_term_matches(&term(t), "n2", &l));
        let t = json!({"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]});
        assert!(node_selector_term_matches(&term(t), "n2", &l));
        let t =
            json!({"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["n1"]}]});
        assert!(
            !node_selector_term_matches(&term(t), "n1", &l),
            "only metadata.name is a field"
        );
    }

    #[test]
    fn terms_are_ored_and_node_selector_is_anded() {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [],
            "nodeSelector": {"disk": "ssd"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
                ]}}}
        }))
        .unwrap();
        assert!(pod_matches_node_selector(
            &spec,
            "n",
            &labels(&[("disk", "ssd"), ("zone", "b")])
        ));
        assert!(!pod_matches_node_selector(
            &spec,
            "n",
            &labels(&[("disk", "hdd"), ("zone", "b")])
        ));
        assert!(!pod_matches_node_selector(
            &spec,
            "n",
            &labels(&[("disk", "ssd"), ("zone", "c")])
        ));
    }

    #[test]
    fn preferred_terms_add_their_weights() {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": expr("zone", "In", &["a"])},
                {"weight": 5, "preference": expr("disk", "Exists", &[])}
            ]}}
        }))
        .unwrap();
        assert_eq!(
            preferred_node_affinity_score(&spec, "n", &labels(&[("zone", "a"), ("disk", "x")])),
            15
        );
        assert_eq!(
            preferred_node_affinity_score(&spec, "n", &labels(&[("disk", "x")])),
            5
        );
        assert_eq!(preferred_node_affinity_score(&spec, "n", &Labels::new()), 0);
    }

    #[test]
    fn label_selectors() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        assert!(label_selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(!label_selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "db")])
        ));
        assert!(!label_selector_matches(&sel, &labels(&[("app", "api")])));
        assert!(label_selector_matches(
            &LabelSelector::default(),
            &labels(&[("x", "y")])
        ));
        assert!(map_selector_matches(
            &labels(&[("a", "1")]),
            &labels(&[("a", "1"), ("b", "2")])
        ));
        assert!(!map_selector_matches(
            &labels(&[("a", "1")]),
            &labels(&[("a", "2")])
        ));
    }
}
