//! ReplicaSet controller: keep `spec.replicas` active pods, deleting the least valuable
//! first as upstream ranks them, adopt matching orphans and release pods that stopped
//! matching, and report the counts in the status.
//!
//! Deletion order (first deleted first): unbound before bound; Pending before Unknown
//! before Running; not Ready before Ready; lower `controller.kubernetes.io/pod-deletion-cost`;
//! more sibling pods on the same node; Ready more recently (log₂ buckets of the time since,
//! ties by uid); more container restarts; created more recently (log₂ buckets, ties by uid).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use flotilla_scheduler::selectors::label_selector_matches;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::actions::{Action, Event, Status, reference};
use crate::pods::{self, controlled_by, controller_ref, is_active, is_available, is_ready};

/// Most pods created or deleted in one step (upstream's burstReplicas).
pub const BURST_REPLICAS: usize = 500;

/// Annotation that makes a pod cheaper (lower) or dearer to delete on scale-down.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// One reconcile step for a ReplicaSet given all pods of its namespace.
pub fn reconcile(rs: &ReplicaSet, pods: &[Pod], now: Timestamp) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(spec) = rs.spec.as_ref() else {
        return actions;
    };
    let owned = claim(rs, pods, &mut actions);
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| is_active(p)).collect();
    let desired = spec.replicas.unwrap_or(1).max(0) as usize;
    let me = reference("apps/v1", "ReplicaSet", &rs.metadata);

    if rs.metadata.deletion_timestamp.is_none() {
        if active.len() < desired {
            let name = rs.metadata.name.as_deref().unwrap_or("");
            let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(template) = &spec.template {
                let owner = controller_ref("apps/v1", "ReplicaSet", &rs.metadata);
                let missing = (desired - active.len()).min(BURST_REPLICAS);
                actions.extend(pods::creations(template, ns, name, &owner, &me, missing));
            }
        } else if active.len() > desired {
            let excess = (active.len() - desired).min(BURST_REPLICAS);
            for p in deletion_order(&active, now).into_iter().take(excess) {
                actions.push(Action::DeletePod {
                    namespace: pods::namespace(p).to_owned(),
                    name: pods::name(p).to_owned(),
                });
                actions.push(Action::Event(Event::normal(
                    me.clone(),
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", pods::name(p)),
                )));
            }
        }
    }

    let status = status(rs, &active, now);
    if rs.status.as_ref() != Some(&status) {
        actions.push(Action::UpdateStatus(Box::new(Status::ReplicaSet(status))));
    }
    actions
}

/// Upstream's pod claiming: the ReplicaSet's pods are those it controls and its selector
/// matches, plus orphans the selector matches (adopted); pods it controls that no longer
/// match are released. A ReplicaSet being deleted neither adopts nor releases.
fn claim<'a>(rs: &ReplicaSet, pods: &'a [Pod], actions: &mut Vec<Action>) -> Vec<&'a Pod> {
    let uid = rs.metadata.uid.as_deref().unwrap_or("");
    let selector = rs.spec.as_ref().map(|s| &s.selector);
    let selector_empty = selector.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    let matches = |p: &Pod| {
        !selector_empty
            && selector.is_some_and(|s| {
                label_selector_matches(s, p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
            })
    };
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let mut mine = Vec::new();
    for p in pods.iter().filter(|p| pods::namespace(p) == ns) {
        let has_controller = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true));
        if controlled_by(&p.metadata, uid) {
            if matches(p) || deleting {
                mine.push(p);
            } else {
                actions.push(Action::ReleasePod {
                    namespace: ns.to_owned(),
                    name: pods::name(p).to_owned(),
                    owner_uid: uid.to_owned(),
                });
            }
        } else if !has_controller
            && !deleting
            && p.metadata.deletion_timestamp.is_none()
            && matches(p)
        {
            actions.push(Action::AdoptPod {
                namespace: ns.to_owned(),
                name: pods::name(p).to_owned(),
                owner: controller_ref("apps/v1", "ReplicaSet", &rs.metadata),
            });
            mine.push(p);
        }
    }
    mine
}

fn status(rs: &ReplicaSet, active: &[&Pod], now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&|p| is_ready(p))),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    }
}

fn phase_rank(p: &Pod) -> u8 {
    match pods::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

fn deletion_cost(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().map(|c| c.restart_count).max())
        .unwrap_or(0)
}

/// ⌊log₂(nanoseconds since t)⌋, or -1 for a time not in the past.
fn log_rank(t: Timestamp, now: Timestamp) -> i64 {
    let d = now.as_nanosecond() - t.as_nanosecond();
    if d > 0 {
        (127 - d.leading_zeros()) as i64
    } else {
        -1
    }
}

/// Upstream's comparison of two timestamps for scale-down: more recent first, in log₂
/// buckets, ties broken by uid; a missing time sorts first.
fn compare_times(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    ua: &str,
    ub: &str,
    now: Timestamp,
) -> Option<Ordering> {
    if a == b {
        return None;
    }
    let (Some(a), Some(b)) = (a, b) else {
        return Some(if a.is_none() {
            Ordering::Less
        } else {
            Ordering::Greater
        });
    };
    let diff = log_rank(a, now) - log_rank(b, now);
    Some(if diff == 0 { ua.cmp(ub) } else { diff.cmp(&0) })
}

/// The pods in the order they should be deleted on scale-down.
pub fn deletion_order<'a>(active: &[&'a Pod], now: Timestamp) -> Vec<&'a Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in active {
        if let Some(n) = pods::node_name(p) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let rank = |p: &Pod| pods::node_name(p).map_or(0, |n| per_node[n]);
    let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    let mut sorted = active.to_vec();
    sorted.sort_by(|a, b| {
        let (na, nb) = (pods::node_name(a), pods::node_name(b));
        if na != nb && (na.is_none() || nb.is_none()) {
            return if na.is_none() {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        phase_rank(a)
            .cmp(&phase_rank(b))
            .then(is_ready(a).cmp(&is_ready(b)))
            .then(deletion_cost(a).cmp(&deletion_cost(b)))
            .then(rank(b).cmp(&rank(a)))
            .then_with(|| {
                if is_ready(a) && is_ready(b) {
                    let ta = pods::ready_since(a).flatten();
                    let tb = pods::ready_since(b).flatten();
                    if let Some(o) = compare_times(ta, tb, &uid(a), &uid(b), now) {
                        return o;
                    }
                }
                Ordering::Equal
            })
            .then(max_restarts(b).cmp(&max_restarts(a)))
            .then_with(|| {
                let ca = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
                let cb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
                compare_times(ca, cb, &uid(a), &uid(b), now).unwrap_or(Ordering::Equal)
            })
            .then_with(|| pods::name(a).cmp(pods::name(b)))
    });
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::*;
    use serde_json::{Value, json};

    fn rs(replicas: i32) -> ReplicaSet {
        from(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
        }))
    }

    fn pods(vs: Vec<Value>) -> Vec<Pod> {
        vs.into_iter()
            .map(|mut v| {
                if v["metadata"]["labels"].is_null() {
                    v["metadata"]["labels"] = json!({"app": "web"});
                }
                from(v)
            })
            .collect()
    }

    fn now() -> Timestamp {
        at("2026-01-01T01:00:00Z")
    }

    fn deleted(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::DeletePod { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn creates_the_missing_pods_from_the_template() {
        let actions = reconcile(
            &rs(3),
            &pods(vec![pod("a", "rs-uid", "Running", true, Some("n1"))]),
            now(),
        );
        let creates: Vec<&Pod> = actions
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod { pod, .. } => Some(&**pod),
                _ => None,
            })
            .collect();
        assert_eq!(creates.len(), 2);
        assert_eq!(
            creates[0].metadata.generate_name.as_deref(),
            Some("web-abc-")
        );
        assert!(controlled_by(&creates[0].metadata, "rs-uid"));
        assert_eq!(creates[0].metadata.labels.as_ref().unwrap()["app"], "web");
    }

    #[test]
    fn pods_of_others_and_finished_pods_do_not_count() {
        let ps = pods(vec![
            pod("mine", "rs-uid", "Running", true, Some("n1")),
            pod("done", "rs-uid", "Succeeded", false, Some("n1")),
            pod("theirs", "other", "Running", true, Some("n1")),
        ]);
        let actions = reconcile(&rs(2), &ps, now());
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::CreatePod { .. }))
                .count(),
            1
        );
        let Some(Action::UpdateStatus(s)) = actions.last() else {
            panic!("{actions:?}")
        };
        let Status::ReplicaSet(s) = &**s else {
            panic!()
        };
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (1, Some(1), Some(1), Some(2))
        );
    }

    #[test]
    fn scale_down_deletes_the_least_valuable_pods_first() {
        let mut costly = pod("costly", "rs-uid", "Running", false, Some("n2"));
        costly["metadata"]["annotations"] = json!({POD_DELETION_COST: "100"});
        let ps = pods(vec![
            pod("running-ready", "rs-uid", "Running", true, Some("n1")),
            pod("unbound", "rs-uid", "Pending", false, None),
            pod("pending", "rs-uid", "Pending", false, Some("n3")),
            pod("not-ready", "rs-uid", "Running", false, Some("n4")),
            costly,
        ]);
        let actions = reconcile(&rs(1), &ps, now());
        assert_eq!(
            deleted(&actions),
            vec!["unbound", "pending", "not-ready", "costly"]
        );
        assert!(actions.iter().any(|a| matches!(a, Action::Event(e) if e.reason == "SuccessfulDelete" && e.message == "Deleted pod: unbound")));
    }

    #[test]
    fn doubled_up_pods_go_first_then_recently_ready_then_restarts() {
        let mut newer = pod("newer-ready", "rs-uid", "Running", true, Some("n3"));
        newer["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:59:00Z");
        let mut restarts = pod("restarty", "rs-uid", "Running", true, Some("n4"));
        restarts["status"]["containerStatuses"] =
            json!([{"name": "c", "image": "x", "imageID": "", "ready": true, "restartCount": 5}]);
        let ps = pods(vec![
            pod("alone", "rs-uid", "Running", true, Some("n1")),
            pod("twin-1", "rs-uid", "Running", true, Some("n2")),
            pod("twin-2", "rs-uid", "Running", true, Some("n2")),
            newer,
            restarts,
        ]);
        let order: Vec<&str> = deletion_order(&ps.iter().collect::<Vec<_>>(), now())
            .into_iter()
            .map(pods::name)
            .collect();
        assert_eq!(&order[..2], &["twin-1", "twin-2"]);
        assert_eq!(order[2], "newer-ready");
        assert_eq!(order[3], "restarty");
        assert_eq!(order[4], "alone");
    }

    #[test]
    fn a_settled_replicaset_does_nothing() {
        let ps = pods(vec![pod("a", "rs-uid", "Running", true, Some("n1"))]);
        let first = reconcile(&rs(1), &ps, now());
        let Some(Action::UpdateStatus(s)) = first.last() else {
            panic!()
        };
        let Status::ReplicaSet(s) = &**s else {
            panic!()
        };
        let mut settled = rs(1);
        settled.status = Some(s.clone());
        assert!(reconcile(&settled, &ps, now()).is_empty());
    }

    #[test]
    fn orphans_are_adopted_and_strays_released() {
        let mut orphan = pod("orphan", "x", "Running", true, Some("n1"));
        orphan["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("ownerReferences");
        let mut stray = pod("stray", "rs-uid", "Running", true, Some("n1"));
        stray["metadata"]["labels"] = json!({"app": "other"});
        let foreign = pod("foreign", "someone-else", "Running", true, Some("n1"));
        let actions = reconcile(&rs(1), &pods(vec![orphan, stray, foreign]), now());
        assert!(actions.iter().any(|a| matches!(a, Action::AdoptPod { name, owner, .. } if name == "orphan" && owner.uid == "rs-uid")));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::ReleasePod { name, .. } if name == "stray"))
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::CreatePod { .. } | Action::DeletePod { .. })),
            "the adopted orphan is the one replica"
        );
    }

    #[test]
    fn a_replicaset_being_deleted_creates_nothing() {
        let mut r = rs(3);
        r.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert!(
            !reconcile(&r, &[], now())
                .iter()
                .any(|a| matches!(a, Action::CreatePod { .. }))
        );
    }
}
