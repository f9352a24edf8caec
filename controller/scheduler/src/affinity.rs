//! Inter-pod (anti-)affinity terms, resolved once per pod: the label selector, the
//! namespaces it looks in, and the node label that defines a topology domain.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{PodAffinityTerm, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::selectors::{Labels, label_selector_matches};

/// Which namespaces a term looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// Every namespace (`namespaceSelector: {}`).
    All,
    /// These namespaces only.
    Listed(BTreeSet<String>),
}

/// A required pod (anti-)affinity term of one pod.
#[derive(Debug, Clone)]
pub struct Term {
    /// Pods it is about; `None` (a null selector) matches no pod.
    pub selector: Option<LabelSelector>,
    /// Where those pods are looked for.
    pub namespaces: Namespaces,
    /// The node label that groups nodes into one domain (`kubernetes.io/hostname`).
    pub topology_key: String,
}

impl Term {
    fn new(t: &PodAffinityTerm, own_namespace: &str) -> Term {
        let listed: BTreeSet<String> = t.namespaces.iter().flatten().cloned().collect();
        let ns_selector_empty = t.namespace_selector.as_ref().map(|s| {
            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        });
        let namespaces = match ns_selector_empty {
            // An empty namespace selector means all namespaces. A non-empty one needs
            // namespace labels, which the scheduler does not track: it adds nothing.
            Some(true) => Namespaces::All,
            _ if listed.is_empty() => {
                Namespaces::Listed(BTreeSet::from([own_namespace.to_owned()]))
            }
            _ => Namespaces::Listed(listed),
        };
        Term {
            selector: t.label_selector.clone(),
            namespaces,
            topology_key: t.topology_key.clone(),
        }
    }

    /// Does the term select a pod with these labels in this namespace?
    pub fn matches(&self, namespace: &str, labels: &Labels) -> bool {
        let in_ns = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Listed(set) => set.contains(namespace),
        };
        in_ns
            && self
                .selector
                .as_ref()
                .is_some_and(|s| label_selector_matches(s, labels))
    }
}

/// The required pod affinity terms of a pod.
pub fn required_affinity(spec: &PodSpec, namespace: &str) -> Vec<Term> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|ts| ts.iter().map(|t| Term::new(t, namespace)).collect())
        .unwrap_or_default()
}

/// The required pod anti-affinity terms of a pod.
pub fn required_anti_affinity(spec: &PodSpec, namespace: &str) -> Vec<Term> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|ts| ts.iter().map(|t| Term::new(t, namespace)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn term(v: serde_json::Value) -> Term {
        Term::new(&serde_json::from_value(v).unwrap(), "prod")
    }

    fn labels(k: &str, v: &str) -> Labels {
        Labels::from([(k.to_owned(), v.to_owned())])
    }

    #[test]
    fn a_term_looks_in_its_own_namespace_by_default() {
        let t = term(
            json!({"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}),
        );
        assert!(t.matches("prod", &labels("app", "db")));
        assert!(!t.matches("dev", &labels("app", "db")));
        assert!(!t.matches("prod", &labels("app", "web")));
    }

    #[test]
    fn listed_and_all_namespaces() {
        let t = term(json!({"topologyKey": "h", "namespaces": ["dev"], "labelSelector": {}}));
        assert!(t.matches("dev", &labels("a", "b")));
        assert!(!t.matches("prod", &labels("a", "b")));
        let t = term(json!({"topologyKey": "h", "namespaceSelector": {}, "labelSelector": {}}));
        assert!(t.matches("anything", &Labels::new()));
    }

    #[test]
    fn a_null_selector_matches_no_pod() {
        let t = term(json!({"topologyKey": "h"}));
        assert!(!t.matches("prod", &Labels::new()));
    }
}
