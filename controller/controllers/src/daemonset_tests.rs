//! DaemonSet tests: eligibility, nodes joining and leaving, rolling updates in a small
//! simulated world where created pods are bound to their node and turn Ready a round later.

use super::*;
use crate::pods::testing::{at, from};
use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

fn ds(extra: Value) -> DaemonSet {
    let mut v = json!({
        "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid", "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "c", "image": "agent:1"}]}}}
    });
    for (k, val) in extra.as_object().unwrap() {
        v["spec"][k] = val.clone();
    }
    from(v)
}

fn node(name: &str, labels: Value, taints: Value) -> Node {
    from(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
}

struct World {
    ds: DaemonSet,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    n: usize,
    tick: i64,
}

impl World {
    fn new(ds: DaemonSet, nodes: Vec<Node>) -> World {
        World {
            ds,
            nodes,
            pods: vec![],
            n: 0,
            tick: 0,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_second(at("2026-01-01T00:00:00Z").as_second() + self.tick).unwrap()
    }

    fn round(&mut self) -> Vec<Action> {
        self.tick += 10;
        let now = self.now();
        for p in &mut self.pods {
            let conds = p
                .status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new);
            if conds.is_empty() {
                conds.push(PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(now)),
                    ..Default::default()
                });
            }
        }
        let actions = reconcile(&self.ds, &self.nodes, &self.pods, now);
        for a in &actions {
            match a {
                Action::CreatePod { pod, .. } => {
                    let mut p = (**pod).clone();
                    self.n += 1;
                    p.metadata.name = Some(format!("agent-{}", self.n));
                    p.metadata.uid = Some(format!("pod-{}", self.n));
                    p.metadata.creation_timestamp = Some(Time(now));
                    let target = target_node(&p).unwrap();
                    p.spec.as_mut().unwrap().node_name = Some(target);
                    p.status = Some(from(json!({"phase": "Running"})));
                    self.pods.push(p);
                }
                Action::DeletePod { name, .. } => self
                    .pods
                    .retain(|p| p.metadata.name.as_deref() != Some(name)),
                Action::UpdateStatus(s) => {
                    let Status::DaemonSet(s) = &**s else { panic!() };
                    self.ds.status = Some(s.clone());
                }
                _ => {}
            }
        }
        actions
    }

    fn settle(&mut self, check: impl Fn(&World)) {
        for _ in 0..50 {
            let a = self.round();
            check(self);
            if !a
                .iter()
                .any(|a| matches!(a, Action::CreatePod { .. } | Action::DeletePod { .. }))
            {
                return;
            }
        }
        panic!("did not settle");
    }

    fn nodes_with_pods(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods
            .iter()
            .map(|p| pods::node_name(p).unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    fn available_nodes(&self) -> usize {
        let mut v: Vec<&str> = self
            .pods
            .iter()
            .filter(|p| pods::is_ready(p))
            .map(|p| pods::node_name(p).unwrap())
            .collect();
        v.sort();
        v.dedup();
        v.len()
    }

    fn images(&self) -> Vec<String> {
        self.pods
            .iter()
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap()
            })
            .collect()
    }
}

#[test]
fn one_pod_per_eligible_node() {
    let nodes = vec![
        node("a", json!({"role": "edge"}), json!([])),
        node(
            "b",
            json!({"role": "edge"}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        ),
        node("c", json!({"role": "core"}), json!([])),
        node(
            "d",
            json!({"role": "edge"}),
            json!([{"key": UNSCHEDULABLE, "effect": "NoSchedule"}]),
        ),
    ];
    let mut w = World::new(ds(json!({})), nodes.clone());
    w.settle(|_| {});
    assert_eq!(
        w.nodes_with_pods(),
        ["a", "c", "d"],
        "tainted b is skipped, cordoned d is not"
    );
    let p = &w.pods[0];
    assert!(
        p.metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(REVISION_HASH)
    );
    let tolerations = p.spec.as_ref().unwrap().tolerations.as_ref().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some(UNREACHABLE)
                && t.effect.as_deref() == Some("NoExecute"))
    );

    let mut selective = ds(json!({}));
    selective
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_selector = Some(BTreeMap::from([("role".into(), "edge".into())]));
    selective
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .tolerations = Some(vec![from(
        json!({"key": "dedicated", "operator": "Equal", "value": "db"}),
    )]);
    let mut w = World::new(selective, nodes);
    w.settle(|_| {});
    assert_eq!(w.nodes_with_pods(), ["a", "b", "d"]);
    let s = w.ds.status.clone().unwrap();
    assert_eq!(
        (
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_ready
        ),
        (3, 3, 3)
    );
    assert_eq!(
        (
            s.number_available,
            s.number_unavailable,
            s.updated_number_scheduled
        ),
        (Some(3), Some(0), Some(3))
    );
}

#[test]
fn follows_nodes_joining_and_leaving() {
    let mut w = World::new(ds(json!({})), vec![node("a", json!({}), json!([]))]);
    w.settle(|_| {});
    w.nodes.push(node("b", json!({}), json!([])));
    w.settle(|_| {});
    assert_eq!(w.nodes_with_pods(), ["a", "b"]);
    w.nodes.remove(0);
    w.settle(|_| {});
    assert_eq!(w.nodes_with_pods(), ["b"]);
}

#[test]
fn no_execute_taints_evict_no_schedule_taints_do_not() {
    let mut w = World::new(
        ds(json!({})),
        vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
        ],
    );
    w.settle(|_| {});
    w.nodes[0] = node(
        "a",
        json!({}),
        json!([{"key": "maint", "effect": "NoSchedule"}]),
    );
    w.nodes[1] = node(
        "b",
        json!({}),
        json!([{"key": "maint", "effect": "NoExecute"}]),
    );
    w.settle(|_| {});
    assert_eq!(w.nodes_with_pods(), ["a"]);
    let s = w.ds.status.clone().unwrap();
    assert_eq!((s.desired_number_scheduled, s.number_misscheduled), (0, 1));
}

#[test]
fn failed_pods_are_replaced() {
    let mut w = World::new(ds(json!({})), vec![node("a", json!({}), json!([]))]);
    w.settle(|_| {});
    w.pods[0].status.as_mut().unwrap().phase = Some("Failed".into());
    w.settle(|_| {});
    assert_eq!(w.pods.len(), 1);
    assert_eq!(pods::phase(&w.pods[0]), "Running");
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| node(&format!("n{i}"), json!({}), json!([])))
        .collect()
}

fn set_image(w: &mut World, image: &str) {
    w.ds.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some(image.into());
}

#[test]
fn rolling_update_keeps_max_unavailable() {
    let mut w = World::new(
        ds(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}}),
        ),
        nodes(5),
    );
    w.settle(|_| {});
    set_image(&mut w, "agent:2");
    w.settle(|w| {
        assert!(
            w.available_nodes() >= 3,
            "{} nodes available",
            w.available_nodes()
        )
    });
    assert_eq!(w.images(), vec!["agent:2"; 5]);
    assert_eq!(
        w.ds.status.clone().unwrap().updated_number_scheduled,
        Some(5)
    );
}

#[test]
fn rolling_update_with_surge_never_drops_a_node() {
    let mut w = World::new(
        ds(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}),
        ),
        nodes(4),
    );
    w.settle(|_| {});
    set_image(&mut w, "agent:2");
    w.settle(|w| {
        assert_eq!(w.available_nodes(), 4);
        assert!(w.pods.len() <= 5, "{} pods", w.pods.len());
    });
    assert_eq!(w.images(), vec!["agent:2"; 4]);
}

#[test]
fn on_delete_leaves_old_pods_alone() {
    let mut w = World::new(
        ds(json!({"updateStrategy": {"type": "OnDelete"}})),
        nodes(2),
    );
    w.settle(|_| {});
    set_image(&mut w, "agent:2");
    w.settle(|_| {});
    assert_eq!(w.images(), vec!["agent:1"; 2]);
    w.pods.remove(0);
    w.settle(|_| {});
    let mut images = w.images();
    images.sort();
    assert_eq!(images, ["agent:1", "agent:2"]);
}
