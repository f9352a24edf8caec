//! Why a pod fits nowhere, worded exactly as kube-scheduler words it.
//!
//! kube-scheduler's `FitError` message: `0/N nodes are available:` then either the
//! pre-filter message or a histogram of per-node reasons (`"<count> <reason>"` strings,
//! sorted as strings — so "10 …" sorts before "2 …"), each part closed by `.`, then the
//! preemption (post-filter) message, which is itself a `FitError` message and so ends in
//! `..` when appended.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodCondition;

/// `PodScheduled=False` reason for a pod that fits no node.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";
/// `PodScheduled=False` reason for a pod held back by scheduling gates.
pub const REASON_SCHEDULING_GATED: &str = "SchedulingGated";
/// The message when the cluster has no nodes at all.
pub const NO_NODES: &str = "no nodes available to schedule pods";

/// A pod that cannot be placed now; retry when nodes or pods change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// `Unschedulable` or `SchedulingGated`: the reason of the `PodScheduled` condition.
    pub reason: &'static str,
    /// The condition's and the `FailedScheduling` event's message.
    pub message: String,
    /// How many nodes failed for each reason.
    pub histogram: BTreeMap<String, usize>,
}

impl Unschedulable {
    /// A failure with only a message (no nodes, gates, an invalid pod).
    pub fn plain(reason: &'static str, message: impl Into<String>) -> Unschedulable {
        Unschedulable {
            reason,
            message: message.into(),
            histogram: BTreeMap::new(),
        }
    }

    /// The `PodScheduled=False` condition to write into the pod's status.
    pub fn condition(&self) -> PodCondition {
        PodCondition {
            type_: "PodScheduled".to_owned(),
            status: "False".to_owned(),
            reason: Some(self.reason.to_owned()),
            message: Some(self.message.clone()),
            ..PodCondition::default()
        }
    }
}

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Unschedulable {}

/// Formats a `FitError` message.
pub fn fit_error_message(
    num_nodes: usize,
    pre_filter: Option<&str>,
    histogram: &BTreeMap<String, usize>,
    post_filter: Option<&str>,
) -> String {
    let mut msg = format!("0/{num_nodes} nodes are available:");
    if let Some(pre) = pre_filter {
        msg.push_str(&format!(" {pre}."));
    } else {
        let mut parts: Vec<String> = histogram.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        if !parts.is_empty() {
            msg.push_str(&format!(" {}.", parts.join(", ")));
        }
    }
    if let Some(post) = post_filter {
        msg.push_str(&format!(" {post}."));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    }

    #[test]
    fn counts_sort_as_strings_like_upstream() {
        let h = hist(&[
            ("node(s) were unschedulable", 2),
            ("Insufficient cpu", 10),
            ("Insufficient memory", 3),
        ]);
        assert_eq!(
            fit_error_message(15, None, &h, None),
            "0/15 nodes are available: 10 Insufficient cpu, 2 node(s) were unschedulable, 3 Insufficient memory."
        );
    }

    #[test]
    fn pre_filter_message_replaces_the_histogram() {
        assert_eq!(
            fit_error_message(
                3,
                Some("pod affinity terms conflict"),
                &hist(&[("x", 3)]),
                Some("preemption: y.")
            ),
            "0/3 nodes are available: pod affinity terms conflict. preemption: y.."
        );
    }

    #[test]
    fn the_condition_carries_reason_and_message() {
        let u = Unschedulable::plain(REASON_UNSCHEDULABLE, NO_NODES);
        let c = u.condition();
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            ("PodScheduled", "False")
        );
        assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(c.message.as_deref(), Some(NO_NODES));
    }
}
