//! Node lifecycle: Ready from the agents' Lease renewals, the unreachable/not-ready
//! `NoExecute` taints, and evicting pods that do not tolerate them in time.
//!
//! A node whose Lease (`kube-node-lease/<node>`) has not changed for the grace period
//! (default 40 s, measured on the controller's clock from when a change was last seen, so
//! agents' clocks do not matter) gets Ready=Unknown, the `node.kubernetes.io/unreachable`
//! `NoExecute` taint, and its pods Ready=False. Pods on a `NoExecute`-tainted node are
//! deleted once their toleration runs out: a pod without a toleration for the
//! unreachable/not-ready taint is given `tolerationSeconds` (default 300 s, as the
//! DefaultTolerationSeconds admission would); any other untolerated taint evicts at once.
//! When renewals resume the node is Ready again and the taint goes.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_scheduler::taints::{NOT_READY, UNREACHABLE, tolerates};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::actions::{Action, Event, reference};
use crate::pods;

/// The namespace agents keep their Leases in.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Reason of the Ready condition this controller writes for a silent node.
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";
/// Reason of the Ready condition this controller writes when renewals resume.
pub const REASON_READY: &str = "AgentReady";

/// Timing knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a node may stay silent before it turns Unknown.
    pub grace_period: Duration,
    /// How long pods without their own toleration stay on a not-ready node.
    pub not_ready_toleration_seconds: i64,
    /// How long pods without their own toleration stay on an unreachable node.
    pub unreachable_toleration_seconds: i64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grace_period: Duration::from_secs(40),
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 300,
        }
    }
}

/// What the controller last saw of a node's heartbeat, and when it saw it change.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    renew: Option<Timestamp>,
    observed_at: Timestamp,
    /// A change was seen since this controller started: the agent is alive for sure.
    renewed: bool,
}

/// The node lifecycle controller. Its memory of heartbeats is soft state: after a
/// restart every node starts a fresh grace period, as upstream's does.
#[derive(Debug, Clone, Default)]
pub struct NodeLifecycle {
    config: Config,
    seen: HashMap<String, Seen>,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn lease_renew(leases: &[Lease], node: &str) -> Option<Timestamp> {
    leases
        .iter()
        .find(|l| {
            l.metadata.name.as_deref() == Some(node)
                && l.metadata.namespace.as_deref().unwrap_or(LEASE_NAMESPACE) == LEASE_NAMESPACE
        })
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
        .map(|t| t.0)
}

/// The Ready condition this controller writes. The heartbeat time stays what the agent
/// last wrote: the controller's own writes must not look like a sign of life.
fn node_condition(
    previous: Option<&NodeCondition>,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> NodeCondition {
    NodeCondition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: previous.and_then(|c| c.last_heartbeat_time.clone()),
        last_transition_time: Some(Time(now)),
    }
}

impl NodeLifecycle {
    /// A controller with these timings.
    pub fn new(config: Config) -> NodeLifecycle {
        NodeLifecycle {
            config,
            seen: HashMap::new(),
        }
    }

    /// One pass over all nodes, their Leases and all pods.
    pub fn reconcile(
        &mut self,
        nodes: &[Node],
        leases: &[Lease],
        pods: &[Pod],
        now: Timestamp,
    ) -> Vec<Action> {
        let on = |node: &str| -> Vec<Pod> {
            pods.iter()
                .filter(|p| pods::node_name(p) == Some(node))
                .cloned()
                .collect()
        };
        self.reconcile_by_node(nodes, leases, &on, now)
    }

    /// The same pass, asking `pods_on(node)` for the pods bound to a node only when it
    /// needs them (a node turning Unknown, or carrying `NoExecute` taints), so a healthy
    /// cluster's pass looks at no pod.
    pub fn reconcile_by_node(
        &mut self,
        nodes: &[Node],
        leases: &[Lease],
        pods_on: &dyn Fn(&str) -> Vec<Pod>,
        now: Timestamp,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut next_check: Option<i64> = None;
        let mut wake = |at: i64| next_check = Some(next_check.map_or(at, |n: i64| n.min(at)));
        let grace = self.config.grace_period.as_secs() as i64;
        self.seen.retain(|name, _| {
            nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(name))
        });

        for node in nodes {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            // Either heartbeat counts: a Lease renewal or a Ready condition heartbeat.
            let heartbeat = ready_condition(node)
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0);
            let renew = lease_renew(leases, name).max(heartbeat);
            let seen = self.seen.entry(name.to_owned()).or_insert(Seen {
                renew,
                observed_at: now,
                renewed: false,
            });
            if seen.renew != renew {
                *seen = Seen {
                    renew,
                    observed_at: now,
                    renewed: true,
                };
            }
            let renewed = seen.renewed;
            let silent_for = now.as_second() - seen.observed_at.as_second();
            let healthy = silent_for <= grace;
            if healthy {
                wake(seen.observed_at.as_second() + grace + 1);
            }
            let me = reference("v1", "Node", &node.metadata);
            let ready = ready_condition(node);
            let current = ready.map(|c| c.status.as_str()).unwrap_or("Unknown");
            let ours =
                ready.is_none() || ready.and_then(|c| c.reason.as_deref()) == Some(REASON_UNKNOWN);

            let effective = if !healthy {
                if current != "Unknown" || ready.is_none() {
                    actions.push(Action::SetNodeCondition {
                        node: name.to_owned(),
                        condition: node_condition(
                            ready,
                            "Unknown",
                            REASON_UNKNOWN,
                            "Kubelet stopped posting node status.",
                            now,
                        ),
                    });
                    actions.push(Action::Event(Event::normal(
                        me.clone(),
                        "NodeNotReady",
                        format!("Node {name} status is now: NodeNotReady"),
                    )));
                    for p in pods_on(name).iter().filter(|p| {
                        pods::node_name(p) == Some(name) && pods::is_active(p) && pods::is_ready(p)
                    }) {
                        actions.push(Action::SetPodCondition {
                            namespace: pods::namespace(p).to_owned(),
                            name: pods::name(p).to_owned(),
                            condition: PodCondition {
                                type_: "Ready".to_owned(),
                                status: "False".to_owned(),
                                reason: Some("NodeNotReady".to_owned()),
                                message: Some(format!("node {name} stopped renewing its lease")),
                                last_transition_time: Some(Time(now)),
                                ..PodCondition::default()
                            },
                        });
                    }
                }
                "Unknown"
            } else if current != "True" && ours && renewed {
                actions.push(Action::SetNodeCondition {
                    node: name.to_owned(),
                    condition: node_condition(
                        ready,
                        "True",
                        REASON_READY,
                        "flotilla-agent is renewing its lease",
                        now,
                    ),
                });
                actions.push(Action::Event(Event::normal(
                    me.clone(),
                    "NodeReady",
                    format!("Node {name} status is now: NodeReady"),
                )));
                "True"
            } else {
                current
            };

            // The NoExecute taint that matches the effective readiness, and no other.
            let wanted = match effective {
                "True" => None,
                "Unknown" => Some(UNREACHABLE),
                _ => Some(NOT_READY),
            };
            let mut taints: Vec<Taint> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            for key in [UNREACHABLE, NOT_READY] {
                let has = taints
                    .iter()
                    .any(|t| t.key == key && t.effect == "NoExecute");
                if Some(key) == wanted && !has {
                    let taint = Taint {
                        key: key.to_owned(),
                        effect: "NoExecute".to_owned(),
                        value: None,
                        time_added: Some(Time(now)),
                    };
                    actions.push(Action::AddTaint {
                        node: name.to_owned(),
                        taint: taint.clone(),
                    });
                    taints.push(taint);
                } else if Some(key) != wanted && has {
                    actions.push(Action::RemoveTaint {
                        node: name.to_owned(),
                        key: key.to_owned(),
                        effect: "NoExecute".to_owned(),
                    });
                    taints.retain(|t| !(t.key == key && t.effect == "NoExecute"));
                }
            }

            // Evictions.
            let no_execute: Vec<&Taint> =
                taints.iter().filter(|t| t.effect == "NoExecute").collect();
            if no_execute.is_empty() {
                continue;
            }
            for p in pods_on(name)
                .iter()
                .filter(|p| pods::node_name(p) == Some(name) && pods::is_active(p))
            {
                match self.eviction_time(p, &no_execute, now) {
                    Some(at) if at <= now.as_second() => {
                        actions.push(Action::DeletePod {
                            namespace: pods::namespace(p).to_owned(),
                            name: pods::name(p).to_owned(),
                        });
                        actions.push(Action::Event(Event::normal(
                            reference("v1", "Pod", &p.metadata),
                            "TaintManagerEviction",
                            format!(
                                "Marking for deletion Pod {}/{}",
                                pods::namespace(p),
                                pods::name(p)
                            ),
                        )));
                    }
                    Some(at) => wake(at),
                    None => {}
                }
            }
        }
        if let Some(at) = next_check {
            actions.push(Action::Requeue(Duration::from_secs(
                (at - now.as_second()).max(1) as u64,
            )));
        }
        actions
    }

    /// When (unix seconds) a pod must leave a node with these NoExecute taints; `None`
    /// when it tolerates them all forever.
    fn eviction_time(&self, pod: &Pod, taints: &[&Taint], now: Timestamp) -> Option<i64> {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let mut earliest: Option<i64> = None;
        for taint in taints {
            let added = taint
                .time_added
                .as_ref()
                .map_or(now.as_second(), |t| t.0.as_second());
            let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
            let seconds = if matching.is_empty() {
                if taint.key == UNREACHABLE {
                    Some(self.config.unreachable_toleration_seconds)
                } else if taint.key == NOT_READY {
                    Some(self.config.not_ready_toleration_seconds)
                } else {
                    Some(0)
                }
            } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
                None
            } else {
                matching.iter().filter_map(|t| t.toleration_seconds).min()
            };
            if let Some(s) = seconds {
                let at = added + s.max(0);
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        earliest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::{at, from, pod};
    use serde_json::{Value, json};

    fn node(name: &str, ready: &str, reason: &str, taints: Value) -> Node {
        from(
            json!({"metadata": {"name": name}, "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason}]}}),
        )
    }

    fn lease(name: &str, renew: &str) -> Lease {
        from(
            json!({"metadata": {"name": name, "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": name, "renewTime": renew}}),
        )
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(at("2026-01-01T00:00:00Z").as_second() + secs).unwrap()
    }

    fn has<F: Fn(&Action) -> bool>(actions: &[Action], f: F) -> bool {
        actions.iter().any(f)
    }

    fn unreachable_taint(added: &str) -> Value {
        json!([{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": added}])
    }

    #[test]
    fn a_node_renewing_its_lease_stays_ready() {
        let mut c = NodeLifecycle::new(Config::default());
        let nodes = [node("n1", "True", "KubeletReady", json!([]))];
        for s in [0, 10, 20, 30, 40, 50, 60] {
            let a = c.reconcile(&nodes, &[lease("n1", &t(s).to_string())], &[], t(s));
            assert!(
                !has(&a, |a| matches!(
                    a,
                    Action::SetNodeCondition { .. } | Action::AddTaint { .. }
                )),
                "{a:?}"
            );
            assert!(has(
                &a,
                |a| matches!(a, Action::Requeue(d) if d.as_secs() == 41)
            ));
        }
    }

    #[test]
    fn a_silent_node_turns_unknown_and_gets_the_unreachable_taint_after_the_grace_period() {
        let mut c = NodeLifecycle::new(Config::default());
        let nodes = [node("n1", "True", "KubeletReady", json!([]))];
        let leases = [lease("n1", &t(0).to_string())];
        let pods: Vec<Pod> = vec![from(pod("web-1", "rs", "Running", true, Some("n1")))];
        assert!(
            c.reconcile(&nodes, &leases, &pods, t(0))
                .iter()
                .all(|a| matches!(a, Action::Requeue(_)))
        );
        assert!(
            c.reconcile(&nodes, &leases, &pods, t(40))
                .iter()
                .all(|a| matches!(a, Action::Requeue(_)))
        );
        let a = c.reconcile(&nodes, &leases, &pods, t(41));
        assert!(has(
            &a,
            |a| matches!(a, Action::SetNodeCondition { node, condition }
            if node == "n1" && condition.status == "Unknown" && condition.reason.as_deref() == Some(REASON_UNKNOWN))
        ));
        assert!(has(
            &a,
            |a| matches!(a, Action::AddTaint { taint, .. } if taint.key == UNREACHABLE && taint.effect == "NoExecute")
        ));
        assert!(has(
            &a,
            |a| matches!(a, Action::SetPodCondition { name, condition, .. } if name == "web-1" && condition.status == "False")
        ));
        assert!(has(
            &a,
            |a| matches!(a, Action::Event(e) if e.reason == "NodeNotReady" && e.message == "Node n1 status is now: NodeNotReady")
        ));
        assert!(
            !has(&a, |a| matches!(a, Action::DeletePod { .. })),
            "not evicted before tolerationSeconds"
        );
        assert!(has(
            &a,
            |a| matches!(a, Action::Requeue(d) if d.as_secs() == 300)
        ));
    }

    #[test]
    fn pods_are_evicted_after_their_toleration_runs_out() {
        let mut c = NodeLifecycle::new(Config {
            unreachable_toleration_seconds: 300,
            ..Config::default()
        });
        let nodes = [node(
            "n1",
            "Unknown",
            REASON_UNKNOWN,
            unreachable_taint(&t(100).to_string()),
        )];
        let mut short = pod("short", "rs", "Running", false, Some("n1"));
        short["spec"]["tolerations"] = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]);
        let mut forever = pod("forever", "rs", "Running", false, Some("n1"));
        forever["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        let pods: Vec<Pod> = vec![
            from(pod("plain", "rs", "Running", false, Some("n1"))),
            from(short),
            from(forever),
        ];
        let evicted = |a: &[Action]| -> Vec<String> {
            a.iter()
                .filter_map(|a| match a {
                    Action::DeletePod { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            evicted(&c.reconcile(&nodes, &[], &pods, t(129))),
            Vec::<String>::new()
        );
        assert_eq!(
            evicted(&c.reconcile(&nodes, &[], &pods, t(130))),
            vec!["short"]
        );
        assert_eq!(
            evicted(&c.reconcile(&nodes, &[], &pods, t(399))),
            vec!["short"]
        );
        let a = c.reconcile(&nodes, &[], &pods, t(400));
        assert_eq!(evicted(&a), vec!["plain", "short"]);
        assert!(has(
            &a,
            |a| matches!(a, Action::Event(e) if e.reason == "TaintManagerEviction" && e.message == "Marking for deletion Pod default/plain")
        ));
    }

    #[test]
    fn other_untolerated_no_execute_taints_evict_at_once() {
        let mut c = NodeLifecycle::new(Config::default());
        let nodes = [node(
            "n1",
            "True",
            "KubeletReady",
            json!([{"key": "maintenance", "effect": "NoExecute"}]),
        )];
        let pods: Vec<Pod> = vec![from(pod("p", "rs", "Running", true, Some("n1")))];
        let a = c.reconcile(&nodes, &[lease("n1", &t(0).to_string())], &pods, t(0));
        assert!(has(
            &a,
            |a| matches!(a, Action::DeletePod { name, .. } if name == "p")
        ));
    }

    #[test]
    fn the_taint_goes_when_renewals_resume() {
        let mut c = NodeLifecycle::new(Config::default());
        let nodes = [node(
            "n1",
            "Unknown",
            REASON_UNKNOWN,
            unreachable_taint(&t(0).to_string()),
        )];
        c.reconcile(&nodes, &[lease("n1", &t(0).to_string())], &[], t(100));
        let a = c.reconcile(&nodes, &[lease("n1", &t(105).to_string())], &[], t(106));
        assert!(has(
            &a,
            |a| matches!(a, Action::SetNodeCondition { condition, .. } if condition.status == "True")
        ));
        assert!(has(
            &a,
            |a| matches!(a, Action::RemoveTaint { key, effect, .. } if key == UNREACHABLE && effect == "NoExecute")
        ));
        assert!(has(
            &a,
            |a| matches!(a, Action::Event(e) if e.reason == "NodeReady")
        ));
    }

    #[test]
    fn a_restarted_controller_does_not_declare_a_dead_node_ready() {
        let mut c = NodeLifecycle::new(Config::default());
        let nodes = [node(
            "n1",
            "Unknown",
            REASON_UNKNOWN,
            unreachable_taint(&t(0).to_string()),
        )];
        let leases = [lease("n1", &t(0).to_string())];
        for s in [100, 120, 141, 200] {
            let a = c.reconcile(&nodes, &leases, &[], t(s));
            assert!(!has(
                &a,
                |a| matches!(a, Action::SetNodeCondition { condition, .. } if condition.status == "True")
            ));
            assert!(!has(&a, |a| matches!(a, Action::RemoveTaint { .. })));
        }
    }

    #[test]
    fn its_own_condition_writes_are_not_heartbeats() {
        let mut c = NodeLifecycle::new(Config::default());
        let mut n: Node = from(
            json!({"metadata": {"name": "n1"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": t(0).to_string()}]}}),
        );
        c.reconcile(std::slice::from_ref(&n), &[], &[], t(0));
        let a = c.reconcile(std::slice::from_ref(&n), &[], &[], t(41));
        let Some(Action::SetNodeCondition { condition, .. }) = a
            .iter()
            .find(|a| matches!(a, Action::SetNodeCondition { .. }))
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            condition.last_heartbeat_time,
            Some(Time(t(0))),
            "the agent's heartbeat is kept"
        );
        // Apply the write and look again: the node stays Unknown.
        n.status.as_mut().unwrap().conditions = Some(vec![condition.clone()]);
        for s in [42, 60, 100] {
            let a = c.reconcile(std::slice::from_ref(&n), &[], &[], t(s));
            assert!(
                !has(&a, |a| matches!(
                    a,
                    Action::SetNodeCondition { .. } | Action::RemoveTaint { .. }
                )),
                "{a:?}"
            );
        }
    }

    #[test]
    fn an_agent_reporting_not_ready_gets_the_not_ready_taint() {
        let mut c = NodeLifecycle::new(Config::default());
        let nodes = [node("n1", "False", "NetworkDown", json!([]))];
        let a = c.reconcile(&nodes, &[lease("n1", &t(0).to_string())], &[], t(0));
        assert!(has(
            &a,
            |a| matches!(a, Action::AddTaint { taint, .. } if taint.key == NOT_READY)
        ));
        assert!(
            !has(&a, |a| matches!(a, Action::SetNodeCondition { .. })),
            "the agent's own verdict stands"
        );
    }

    #[test]
    fn a_node_first_seen_gets_a_full_grace_period() {
        let mut c = NodeLifecycle::new(Config::default());
        let nodes = [node("n1", "True", "KubeletReady", json!([]))];
        assert!(!has(&c.reconcile(&nodes, &[], &[], t(0)), |a| matches!(
            a,
            Action::AddTaint { .. }
        )));
        assert!(!has(&c.reconcile(&nodes, &[], &[], t(40)), |a| matches!(
            a,
            Action::AddTaint { .. }
        )));
        assert!(has(
            &c.reconcile(&nodes, &[], &[], t(41)),
            |a| matches!(a, Action::AddTaint { taint, .. } if taint.key == UNREACHABLE)
        ));
    }

    #[test]
    fn a_ready_condition_heartbeat_counts_as_a_renewal() {
        let mut c = NodeLifecycle::new(Config::default());
        let beat = |s: i64| -> Node {
            from(
                json!({"metadata": {"name": "n1"}, "status": {"conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": t(s).to_string()}]}}),
            )
        };
        for s in [0, 30, 60, 90] {
            assert!(!has(
                &c.reconcile(&[beat(s)], &[], &[], t(s)),
                |a| matches!(a, Action::AddTaint { .. })
            ));
        }
    }

    #[test]
    fn the_grace_period_is_configurable() {
        let mut c = NodeLifecycle::new(Config {
            grace_period: Duration::from_secs(5),
            ..Config::default()
        });
        let nodes = [node("n1", "True", "KubeletReady", json!([]))];
        let leases = [lease("n1", &t(0).to_string())];
        c.reconcile(&nodes, &leases, &[], t(0));
        assert!(has(&c.reconcile(&nodes, &leases, &[], t(6)), |a| matches!(
            a,
            Action::AddTaint { .. }
        )));
    }
}
