//! Deployment tests: single steps, and whole rollouts driven together with the
//! ReplicaSet controller in a small simulated world that checks the bounds each step.

use super::*;
use crate::pods::testing::{at, from};
use crate::replicaset;
use k8s_openapi::api::core::v1::PodCondition;
use serde_json::{Value, json};

fn deployment(replicas: i32, image: &str, strategy: Value) -> Deployment {
    from(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": strategy,
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": image}]}}
        }
    }))
}

fn rolling(surge: Value, unavailable: Value) -> Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

/// A cluster in miniature: the deployment, its ReplicaSets and pods, a clock.
struct World {
    d: Deployment,
    rss: Vec<ReplicaSet>,
    pods: Vec<Pod>,
    tick: i64,
    counter: usize,
    events: Vec<Event>,
    /// Pods become Ready one tick after creation unless this is false.
    pods_get_ready: bool,
    /// Pods of old ReplicaSets linger one tick after deletion (Recreate must wait).
    lingering: Vec<Pod>,
}

impl World {
    fn new(d: Deployment) -> World {
        World {
            d,
            rss: vec![],
            pods: vec![],
            tick: 0,
            counter: 0,
            events: vec![],
            pods_get_ready: true,
            lingering: vec![],
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_second(at("2026-01-01T00:00:00Z").as_second() + self.tick * 10).unwrap()
    }

    fn next_id(&mut self) -> usize {
        self.counter += 1;
        self.counter
    }

    /// One round: pods turn ready, the deployment controller, then every ReplicaSet
    /// controller. Returns whether anything but events and status happened.
    fn round(&mut self) -> bool {
        self.tick += 1;
        let now = self.now();
        self.lingering.clear();
        if self.pods_get_ready {
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
        }
        let mut changed = false;
        let mut all_pods = self.pods.clone();
        all_pods.extend(self.lingering.iter().cloned());
        for a in reconcile(&self.d, &self.rss, &all_pods, now) {
            changed |= !matches!(
                a,
                Action::Event(_) | Action::UpdateStatus(_) | Action::Requeue(_)
            );
            if !self.apply(a, now) {
                // The driver stops the step at a failed action and runs it again.
                changed = true;
                break;
            }
        }
        for i in 0..self.rss.len() {
            let rs = self.rss[i].clone();
            for a in replicaset::reconcile(&rs, &self.pods, now) {
                changed |= !matches!(a, Action::Event(_) | Action::UpdateStatus(_));
                self.apply(a, now);
            }
        }
        changed
    }

    /// Applies one action as the driver would; false when it fails (the step stops).
    fn apply(&mut self, a: Action, now: Timestamp) -> bool {
        match a {
            Action::CreateReplicaSet(rs) => {
                // A taken name: the API answers AlreadyExists and the driver decides.
                let taken = self
                    .rss
                    .iter()
                    .find(|x| x.metadata.name == rs.metadata.name);
                if let Some(existing) = taken {
                    match name_taken(&self.d, &rs, existing) {
                        NameTaken::Ours => return true,
                        NameTaken::Collision(count) => {
                            let status = self.d.status.get_or_insert_with(Default::default);
                            status.collision_count = Some(count);
                            return false;
                        }
                        NameTaken::Stale => return false,
                    }
                }
                let mut rs = *rs;
                let id = self.next_id();
                rs.metadata.uid = Some(format!("rs-{id}"));
                rs.metadata.generation = Some(1);
                rs.metadata.creation_timestamp = Some(Time(
                    Timestamp::from_second(now.as_second() + id as i64).unwrap(),
                ));
                self.rss.push(rs);
            }
            Action::UpdateReplicaSet(rs) => {
                let i = self
                    .rss
                    .iter()
                    .position(|x| x.metadata.name == rs.metadata.name)
                    .unwrap();
                let keep = self.rss[i].clone();
                self.rss[i] = *rs;
                self.rss[i].status = keep.status;
                self.rss[i].metadata.uid = keep.metadata.uid;
                self.rss[i].metadata.creation_timestamp = keep.metadata.creation_timestamp;
            }
            Action::DeleteReplicaSet { name, .. } => self
                .rss
                .retain(|r| r.metadata.name.as_deref() != Some(&name)),
            Action::UpdateDeployment(d) => self.d.metadata = d.metadata,
            Action::UpdateStatus(s) => match *s {
                Status::Deployment(s) => self.d.status = Some(s),
                // refresh_rs_status below stands in for the ReplicaSet controller's status writes.
                Status::ReplicaSet(_) => {}
                _ => unreachable!(),
            },
            Action::CreatePod { pod, owner } => {
                let mut p = *pod;
                let id = self.next_id();
                p.metadata.name =
                    Some(format!("{}{id}", p.metadata.generate_name.clone().unwrap()));
                p.metadata.uid = Some(format!("pod-{id}"));
                p.metadata.creation_timestamp = Some(Time(now));
                p.status = Some(from(json!({"phase": "Running"})));
                self.events.push(Event::created_pod(
                    owner,
                    p.metadata.name.as_deref().unwrap(),
                ));
                self.pods.push(p);
            }
            Action::DeletePod { name, .. } => {
                let i = self
                    .pods
                    .iter()
                    .position(|p| p.metadata.name.as_deref() == Some(&name))
                    .unwrap();
                self.lingering.push(self.pods.remove(i));
            }
            Action::Event(e) => self.events.push(e),
            Action::Requeue(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        self.refresh_rs_status(now);
        true
    }

    /// ReplicaSet statuses as their controller would write them right away.
    fn refresh_rs_status(&mut self, now: Timestamp) {
        for rs in &mut self.rss {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            let mine: Vec<&Pod> = self
                .pods
                .iter()
                .filter(|p| controlled_by(&p.metadata, &uid))
                .collect();
            rs.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
                replicas: mine.len() as i32,
                ready_replicas: Some(
                    mine.iter().filter(|p| crate::pods::is_ready(p)).count() as i32
                ),
                available_replicas: Some(
                    mine.iter()
                        .filter(|p| crate::pods::is_available(p, 0, now))
                        .count() as i32,
                ),
                observed_generation: rs.metadata.generation,
                ..Default::default()
            });
        }
    }

    fn available(&self) -> i32 {
        self.pods
            .iter()
            .filter(|p| crate::pods::is_ready(p))
            .count() as i32
    }

    /// Runs rounds until nothing changes, checking the rollout bounds after each.
    fn settle(&mut self, min_available: i32, max_total: i32) {
        for _ in 0..100 {
            let changed = self.round();
            assert!(
                self.pods.len() as i32 <= max_total,
                "{} pods > {max_total}",
                self.pods.len()
            );
            if self.tick > 2 {
                assert!(
                    self.available() >= min_available,
                    "{} available < {min_available} at tick {}",
                    self.available(),
                    self.tick
                );
            }
            if !changed && !self.round() {
                return;
            }
        }
        panic!("did not settle");
    }

    fn set_image(&mut self, image: &str) {
        let spec = self.d.spec.as_mut().unwrap();
        spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        self.d.metadata.generation = Some(self.d.metadata.generation.unwrap() + 1);
    }

    fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods
            .iter()
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap()
            })
            .collect();
        v.sort();
        v
    }

    fn condition(&self, type_: &str) -> (String, String) {
        let c = condition(self.d.status.as_ref(), type_).unwrap();
        (c.status.clone(), c.reason.clone().unwrap())
    }
}

#[test]
fn fenceposts_round_surge_up_and_unavailable_down() {
    assert_eq!(
        surge_and_unavailable(&deployment(10, "a", json!({}))),
        Ok((3, 2))
    );
    assert_eq!(
        surge_and_unavailable(&deployment(10, "a", rolling(json!("0%"), json!("0%")))),
        Ok((0, 1))
    );
    assert_eq!(
        surge_and_unavailable(&deployment(3, "a", rolling(json!(1), json!(0)))),
        Ok((1, 0))
    );
    assert_eq!(
        surge_and_unavailable(&deployment(3, "a", json!({"type": "Recreate"}))),
        Ok((0, 0))
    );
    assert!(surge_and_unavailable(&deployment(3, "a", rolling(json!("x"), json!(0)))).is_err());
}

#[test]
fn a_new_deployment_creates_its_first_replicaset() {
    let d = deployment(3, "nginx:1", json!({}));
    let actions = reconcile(&d, &[], &[], at("2026-01-01T00:00:00Z"));
    let Action::CreateReplicaSet(rs) = &actions[0] else {
        panic!("{actions:?}")
    };
    let hash = rs.metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH].clone();
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(revision(rs), 1);
    assert_eq!(
        rs.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()[POD_TEMPLATE_HASH],
        hash
    );
    assert!(controlled_by(&rs.metadata, "d-uid"));
    assert!(actions.iter().any(|a| matches!(a, Action::Event(e)
        if e.reason == "ScalingReplicaSet" && e.message == format!("Scaled up replica set web-{hash} from 0 to 3"))));
    assert!(actions.iter().any(|a| matches!(a, Action::UpdateDeployment(d) if annotation(&d.metadata, REVISION) == Some("1"))));
    let Some(Action::UpdateStatus(s)) = actions.last() else {
        panic!()
    };
    let Status::Deployment(s) = &**s else {
        panic!()
    };
    let progressing = s
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(progressing.reason.as_deref(), Some("NewReplicaSetCreated"));
    assert_eq!(
        progressing.message.as_deref(),
        Some(format!("Created new replica set \"web-{hash}\"").as_str())
    );
}

#[test]
fn a_rollout_completes_with_the_conditions_rollout_status_reads() {
    let mut w = World::new(deployment(3, "nginx:1", json!({})));
    w.settle(0, 4);
    assert_eq!(w.images(), vec!["nginx:1"; 3]);
    let s = w.d.status.clone().unwrap();
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(3), Some(3), Some(3), Some(0))
    );
    assert_eq!(
        w.condition("Available"),
        ("True".into(), "MinimumReplicasAvailable".into())
    );
    assert_eq!(
        w.condition("Progressing"),
        ("True".into(), "NewReplicaSetAvailable".into())
    );
}

fn rolling_update_within(
    replicas: i32,
    surge: Value,
    unavailable: Value,
    max_surge: i32,
    max_unavailable: i32,
) {
    let mut w = World::new(deployment(replicas, "nginx:1", rolling(surge, unavailable)));
    w.settle(0, replicas + max_surge);
    w.set_image("nginx:2");
    w.settle(replicas - max_unavailable, replicas + max_surge);
    assert_eq!(w.images(), vec!["nginx:2"; replicas as usize]);
    assert_eq!(w.rss.len(), 2);
    let old = w.rss.iter().find(|rs| revision(rs) == 1).unwrap();
    assert_eq!(
        spec_replicas(old),
        0,
        "the old ReplicaSet is kept, scaled to zero"
    );
    assert_eq!(annotation(&w.d.metadata, REVISION), Some("2"));
    assert!(
        w.events
            .iter()
            .any(|e| e.message.starts_with("Scaled down replica set"))
    );
}

#[test]
fn rolling_updates_stay_within_surge_and_unavailability() {
    rolling_update_within(10, json!("25%"), json!("25%"), 3, 2);
    rolling_update_within(3, json!(1), json!(0), 1, 0);
    rolling_update_within(4, json!(0), json!(2), 0, 2);
    rolling_update_within(5, json!("100%"), json!(0), 5, 0);
}

#[test]
fn recreate_removes_old_pods_before_starting_new_ones() {
    let mut w = World::new(deployment(2, "nginx:1", json!({"type": "Recreate"})));
    w.settle(0, 2);
    w.set_image("nginx:2");
    // First round: the old ReplicaSet goes to zero; no new ReplicaSet yet.
    w.round();
    assert_eq!(w.rss.len(), 1);
    assert!(w.rss.iter().all(|rs| spec_replicas(rs) == 0));
    w.round(); // old pods deleted (still lingering this round)
    w.settle(0, 2);
    assert_eq!(w.images(), vec!["nginx:2"; 2]);
}

#[test]
fn history_beyond_the_limit_is_deleted() {
    let mut d = deployment(1, "v1", json!({}));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let mut w = World::new(d);
    w.settle(0, 2);
    for v in ["v2", "v3", "v4"] {
        w.set_image(v);
        w.settle(0, 2);
    }
    w.round();
    let mut revisions: Vec<i64> = w.rss.iter().map(revision).collect();
    revisions.sort();
    assert_eq!(revisions, vec![3, 4]);
}

#[test]
fn undo_restores_the_previous_template_under_a_new_revision() {
    let mut w = World::new(deployment(2, "v1", json!({})));
    w.settle(0, 3);
    w.set_image("v2");
    w.settle(1, 3);
    let target = rollback_template(&w.d, &w.rss, None).unwrap();
    assert_eq!(
        target.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some("v1")
    );
    assert!(
        !target
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()
            .contains_key(POD_TEMPLATE_HASH)
    );
    assert_eq!(
        rollback_template(&w.d, &w.rss, Some(2))
            .unwrap()
            .spec
            .unwrap()
            .containers[0]
            .image
            .as_deref(),
        Some("v2")
    );
    assert_eq!(
        rollback_template(&w.d, &w.rss, Some(7)).unwrap_err(),
        "unable to find specified revision 7 in history"
    );

    w.d.spec.as_mut().unwrap().template = target;
    w.settle(1, 3);
    assert_eq!(w.images(), vec!["v1"; 2]);
    assert_eq!(w.rss.len(), 2, "the old ReplicaSet is reused");
    let reused = w.rss.iter().find(|rs| revision(rs) == 3).unwrap();
    assert_eq!(annotation(&reused.metadata, REVISION_HISTORY), Some("1"));
    assert_eq!(annotation(&w.d.metadata, REVISION), Some("3"));

    let fresh = deployment(1, "v1", json!({}));
    assert_eq!(
        rollback_template(&fresh, &[], None).unwrap_err(),
        "no rollout history found for deployment"
    );
}

#[test]
fn rollout_restart_rolls_the_pods() {
    let mut w = World::new(deployment(2, "v1", json!({})));
    w.settle(0, 3);
    let before: Vec<String> = w
        .pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let t =
        w.d.spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap();
    t.annotations = Some(BTreeMap::from([(
        RESTARTED_AT.to_owned(),
        "2026-01-01T00:05:00Z".to_owned(),
    )]));
    w.settle(1, 3);
    assert_eq!(w.rss.len(), 2);
    assert!(
        w.pods
            .iter()
            .all(|p| !before.contains(p.metadata.name.as_ref().unwrap()))
    );
    assert_eq!(annotation(&w.d.metadata, REVISION), Some("2"));
}

#[test]
fn paused_deployments_scale_but_do_not_roll() {
    let mut w = World::new(deployment(2, "v1", json!({})));
    w.settle(0, 3);
    w.d.spec.as_mut().unwrap().paused = Some(true);
    w.set_image("v2");
    w.d.spec.as_mut().unwrap().replicas = Some(4);
    w.settle(0, 4);
    assert_eq!(w.images(), vec!["v1"; 4]);
    assert_eq!(
        w.condition("Progressing"),
        ("Unknown".into(), "DeploymentPaused".into())
    );
    w.d.spec.as_mut().unwrap().paused = Some(false);
    w.round();
    assert_eq!(
        w.condition("Progressing"),
        ("Unknown".into(), "DeploymentResumed".into())
    );
    w.settle(3, 5);
    assert_eq!(w.images(), vec!["v2"; 4]);
    assert_eq!(
        w.condition("Progressing"),
        ("True".into(), "NewReplicaSetAvailable".into())
    );
}

#[test]
fn a_stuck_rollout_exceeds_its_progress_deadline() {
    let mut d = deployment(2, "v1", json!({}));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
    let mut w = World::new(d);
    w.pods_get_ready = false;
    for _ in 0..4 {
        w.round();
    }
    assert_eq!(
        w.condition("Available"),
        ("False".into(), "MinimumReplicasUnavailable".into())
    );
    // Nothing changes any more, so the controller asks to look again when the
    // deadline passes rather than waiting for a change that never comes.
    let requeue = reconcile(&w.d, &w.rss, &w.pods, w.now())
        .into_iter()
        .find_map(|a| match a {
            Action::Requeue(d) => Some(d),
            _ => None,
        });
    assert!(
        requeue.is_some_and(|d| d.as_secs() >= 1 && d.as_secs() <= 61),
        "{requeue:?}"
    );
    for _ in 0..10 {
        w.round();
    }
    assert_eq!(
        w.condition("Progressing"),
        ("False".into(), "ProgressDeadlineExceeded".into())
    );
}

#[test]
fn an_empty_selector_is_refused() {
    let mut d = deployment(1, "v1", json!({}));
    d.spec.as_mut().unwrap().selector = LabelSelector::default();
    let actions = reconcile(&d, &[], &[], at("2026-01-01T00:00:00Z"));
    assert!(matches!(&actions[..], [Action::Event(e)] if e.reason == "SelectingAll"));
}

fn replica_set(
    name: &str,
    image: &str,
    replicas: i32,
    created: &str,
    desired: i32,
    max: i32,
    revision: i64,
) -> ReplicaSet {
    from(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "creationTimestamp": created, "labels": {"app": "web"},
            "annotations": {REVISION: revision.to_string(), DESIRED_REPLICAS: desired.to_string(), MAX_REPLICAS: max.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}},
        "status": {"replicas": replicas, "availableReplicas": replicas}
    }))
}

#[test]
fn scaling_mid_rollout_is_shared_out_in_proportion() {
    let d = deployment(20, "v2", json!({}));
    let rss = vec![
        replica_set("web-old", "v1", 8, "2026-01-01T00:00:00Z", 10, 13, 1),
        replica_set("web-new", "v2", 5, "2026-01-01T00:01:00Z", 10, 13, 2),
    ];
    let actions = reconcile(&d, &rss, &[], at("2026-01-01T00:02:00Z"));
    let sizes: BTreeMap<String, i32> = actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateReplicaSet(rs) => {
                Some((rs.metadata.name.clone().unwrap(), spec_replicas(rs)))
            }
            _ => None,
        })
        .collect();
    // 20 + 25% surge = 25 allowed, 13 present: 12 more, split 7 / 5 by size.
    assert_eq!(
        sizes,
        BTreeMap::from([("web-old".to_owned(), 15), ("web-new".to_owned(), 10)])
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Event(e) if e.message == "Scaled up replica set web-old from 8 to 15")));
}

#[test]
fn each_replicaset_is_updated_at_most_once_per_step() {
    // The old ReplicaSet is cut twice in one step: first its two unavailable pods, then
    // one available pod down to the minimum. The driver must see one update, 5 -> 2.
    let d = deployment(5, "v2", json!({}));
    let mut old = replica_set("web-old", "v1", 5, "2026-01-01T00:00:00Z", 5, 7, 1);
    old.status.as_mut().unwrap().available_replicas = Some(3);
    let new = replica_set("web-new", "v2", 2, "2026-01-01T00:01:00Z", 5, 7, 2);
    let actions = reconcile(&d, &[old, new], &[], at("2026-01-01T00:02:00Z"));
    let updates: Vec<(String, i32)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateReplicaSet(rs) => {
                Some((rs.metadata.name.clone().unwrap(), spec_replicas(rs)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(updates, [("web-old".to_owned(), 2)]);
    let events: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            "Scaled down replica set web-old from 5 to 3",
            "Scaled down replica set web-old from 3 to 2"
        ]
    );
}

#[test]
fn scaling_down_mid_rollout_takes_from_the_largest_first() {
    let d = deployment(4, "v2", json!({}));
    let rss = vec![
        replica_set("web-old", "v1", 8, "2026-01-01T00:00:00Z", 10, 13, 1),
        replica_set("web-new", "v2", 5, "2026-01-01T00:01:00Z", 10, 13, 2),
    ];
    let actions = reconcile(&d, &rss, &[], at("2026-01-01T00:02:00Z"));
    let total: i32 = actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateReplicaSet(rs) => Some(spec_replicas(rs)),
            _ => None,
        })
        .sum();
    assert_eq!(total, 5, "4 + 1 surge");
}

#[test]
fn a_rollout_interrupted_by_scaling_still_converges() {
    let mut w = World::new(deployment(10, "v1", json!({})));
    w.settle(0, 13);
    w.set_image("v2");
    w.round();
    w.round();
    w.d.spec.as_mut().unwrap().replicas = Some(20);
    w.settle(0, 25);
    assert_eq!(w.images(), vec!["v2"; 20]);
    assert_eq!(
        w.condition("Progressing"),
        ("True".into(), "NewReplicaSetAvailable".into())
    );
}

#[test]
fn the_change_cause_follows_into_the_replicaset_for_rollout_history() {
    let mut d = deployment(1, "v1", json!({}));
    d.metadata.annotations = Some(BTreeMap::from([
        ("kubernetes.io/change-cause".to_owned(), "first".to_owned()),
        (
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{}".to_owned(),
        ),
    ]));
    let mut w = World::new(d);
    w.settle(0, 2);
    let rs = &w.rss[0];
    assert_eq!(
        annotation(&rs.metadata, "kubernetes.io/change-cause"),
        Some("first")
    );
    assert_eq!(
        annotation(
            &rs.metadata,
            "kubectl.kubernetes.io/last-applied-configuration"
        ),
        None
    );
    w.d.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/change-cause".into(), "second".into());
    w.set_image("v2");
    w.settle(0, 2);
    let newest = w.rss.iter().max_by_key(|rs| revision(rs)).unwrap();
    assert_eq!(
        annotation(&newest.metadata, "kubernetes.io/change-cause"),
        Some("second")
    );
    let oldest = w.rss.iter().min_by_key(|rs| revision(rs)).unwrap();
    assert_eq!(
        annotation(&oldest.metadata, "kubernetes.io/change-cause"),
        Some("first")
    );
}

/// The ReplicaSet a fresh deployment's first step tries to create.
fn first_replicaset(d: &Deployment) -> ReplicaSet {
    let actions = reconcile(d, &[], &[], at("2026-01-01T00:00:00Z"));
    let Some(Action::CreateReplicaSet(rs)) = actions.into_iter().next() else {
        panic!("no ReplicaSet created")
    };
    *rs
}

/// `rs` with an environment variable added to its template (a user's edit).
fn with_env(mut rs: ReplicaSet) -> ReplicaSet {
    let t = rs.spec.as_mut().unwrap().template.as_mut().unwrap();
    t.spec.as_mut().unwrap().containers[0].env =
        Some(vec![from(json!({"name": "MODE", "value": "edited"}))]);
    rs
}

#[test]
fn a_taken_name_is_the_new_replicaset_only_with_our_template_and_controller() {
    let d = deployment(2, "nginx:1", json!({}));
    let tried = first_replicaset(&d);
    // Created by an earlier pass the cache had not shown yet.
    assert_eq!(name_taken(&d, &tried, &tried), NameTaken::Ours);
    // Another template under the name: the user edited it, or the hash clashes.
    assert_eq!(
        name_taken(&d, &tried, &with_env(tried.clone())),
        NameTaken::Collision(1)
    );
    // The same template, but orphaned or controlled by someone else.
    let mut orphan = tried.clone();
    orphan.metadata.owner_references = None;
    assert_eq!(name_taken(&d, &tried, &orphan), NameTaken::Collision(1));
    let mut foreign = tried.clone();
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "other-uid".into();
    assert_eq!(name_taken(&d, &tried, &foreign), NameTaken::Collision(1));
    // A second collision counts on from the first.
    let mut bumped = d.clone();
    bumped.status = Some(DeploymentStatus {
        collision_count: Some(1),
        ..Default::default()
    });
    let tried_again = first_replicaset(&bumped);
    assert_ne!(tried_again.metadata.name, tried.metadata.name);
    assert_eq!(
        name_taken(&bumped, &tried_again, &orphan),
        NameTaken::Collision(2)
    );
}

#[test]
fn a_deployment_that_changed_since_the_attempt_is_not_bumped_twice() {
    let d = deployment(2, "nginx:1", json!({}));
    let tried = first_replicaset(&d);
    let orphan = {
        let mut rs = with_env(tried.clone());
        rs.metadata.owner_references = None;
        rs
    };
    // Another pass bumped the count already: the next one picks a new name anyway.
    let mut bumped = d.clone();
    bumped.status = Some(DeploymentStatus {
        collision_count: Some(1),
        ..Default::default()
    });
    assert_eq!(name_taken(&bumped, &tried, &orphan), NameTaken::Stale);
    // The template changed.
    let mut edited = d.clone();
    edited
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("nginx:2".into());
    assert_eq!(name_taken(&edited, &tried, &orphan), NameTaken::Stale);
    // The deployment was deleted and made again (another uid).
    let mut again = d.clone();
    again.metadata.uid = Some("d-uid-2".into());
    assert_eq!(name_taken(&again, &tried, &orphan), NameTaken::Stale);
}

/// A world whose deployment wants the name an edited ReplicaSet holds: an orphan, or one
/// controlled by `holder`.
fn world_with_the_name_taken(holder: Option<&str>) -> (World, String, ReplicaSet) {
    let d = deployment(2, "nginx:1", json!({}));
    let taken_name = first_replicaset(&d).metadata.name.unwrap();
    let mut other = with_env(first_replicaset(&d));
    other.metadata.owner_references = holder.map(|uid| {
        vec![from(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "other",
            "uid": uid, "controller": true}),
        )]
    });
    other.metadata.uid = Some("other-rs-uid".into());
    other.metadata.creation_timestamp = Some(Time(at("2025-12-31T00:00:00Z")));
    let mut w = World::new(d);
    w.rss.push(other.clone());
    (w, taken_name, other)
}

/// The deployment's ReplicaSets in the world.
fn mine(w: &World) -> Vec<&ReplicaSet> {
    w.rss
        .iter()
        .filter(|rs| controlled_by(&rs.metadata, "d-uid"))
        .collect()
}

/// After a collision the deployment's new ReplicaSet has its template under the name
/// hashed with collisionCount 1, and the rollout completed.
fn check_collision_resolved(w: &World, taken_name: &str) -> String {
    let status = w.d.status.clone().unwrap();
    assert_eq!(status.collision_count, Some(1));
    let template = &w.d.spec.as_ref().unwrap().template;
    let new_name = format!("web-{}", template_hash(template, Some(1)));
    assert_ne!(new_name, taken_name);
    let new = w
        .rss
        .iter()
        .find(|rs| rs.metadata.name.as_deref() == Some(new_name.as_str()))
        .expect("the new ReplicaSet under the other name");
    assert!(controlled_by(&new.metadata, "d-uid"));
    assert!(same_template(
        new.spec.as_ref().unwrap().template.as_ref().unwrap(),
        template
    ));
    assert_eq!(spec_replicas(new), 2);
    assert_eq!(
        (
            status.replicas,
            status.updated_replicas,
            status.available_replicas
        ),
        (Some(2), Some(2), Some(2))
    );
    assert_eq!(
        w.condition("Progressing"),
        ("True".into(), "NewReplicaSetAvailable".into())
    );
    assert!(
        !w.events
            .iter()
            .any(|e| e.message.contains(&format!("{taken_name} from 0"))),
        "no event claims the taken name was scaled up: {:?}",
        w.events
    );
    new_name
}

#[test]
fn an_orphan_holding_the_name_is_adopted_and_a_collision_renames_the_new_replicaset() {
    // The deployment was deleted with --cascade=orphan, its ReplicaSet edited (an env
    // var), and the deployment made again.
    let (mut w, taken_name, other) = world_with_the_name_taken(None);
    w.settle(0, 2 + 3);
    check_collision_resolved(&w, &taken_name);
    assert_eq!(mine(&w).len(), 2, "adopted and new");
    let adopted = w
        .rss
        .iter()
        .find(|rs| rs.metadata.name.as_deref() == Some(taken_name.as_str()))
        .unwrap();
    assert!(controlled_by(&adopted.metadata, "d-uid"));
    assert_eq!(spec_replicas(adopted), 0, "rolled over to the new one");
    assert_eq!(
        adopted.spec.as_ref().unwrap().template,
        other.spec.as_ref().unwrap().template,
        "its template is kept"
    );
    assert_eq!(w.images(), vec!["nginx:1"; 2]);
    assert!(
        w.pods
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].env.is_none()),
        "only pods of the deployment's template are left"
    );
}

#[test]
fn a_name_held_by_another_owner_is_left_alone_and_the_new_replicaset_renamed() {
    let (mut w, taken_name, other) = world_with_the_name_taken(Some("other-uid"));
    w.settle(0, 2 + 2 + 3);
    check_collision_resolved(&w, &taken_name);
    assert_eq!(mine(&w).len(), 1);
    let held = w
        .rss
        .iter()
        .find(|rs| rs.metadata.name.as_deref() == Some(taken_name.as_str()))
        .unwrap();
    assert_eq!(
        held.metadata.owner_references,
        other.metadata.owner_references
    );
    assert_eq!(held.spec, other.spec);
}

#[test]
fn only_matching_orphans_of_a_live_deployment_are_adopted() {
    let d = deployment(2, "nginx:1", json!({}));
    let mut orphan = first_replicaset(&d);
    orphan.metadata.owner_references = None;
    assert!(adoptable(&d, &orphan));
    assert!(!adoptable(&d, &first_replicaset(&d)), "controlled already");
    let mut other_app = orphan.clone();
    other_app
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "db".into());
    assert!(!adoptable(&d, &other_app), "the selector does not match");
    let mut elsewhere = orphan.clone();
    elsewhere.metadata.namespace = Some("other".into());
    assert!(!adoptable(&d, &elsewhere));
    let mut going = orphan.clone();
    going.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
    assert!(!adoptable(&d, &going));
    let mut deleting = d.clone();
    deleting.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
    assert!(!adoptable(&deleting, &orphan));
    let mut unselective = d.clone();
    unselective.spec.as_mut().unwrap().selector = LabelSelector::default();
    assert!(!adoptable(&unselective, &orphan));
}

#[test]
fn a_deployment_made_again_takes_its_orphaned_replicaset_back_unchanged() {
    let d = deployment(2, "nginx:1", json!({}));
    let mut orphan = first_replicaset(&d);
    orphan.metadata.owner_references = None;
    orphan.metadata.uid = Some("rs-uid".into());
    orphan.metadata.resource_version = Some("7".into());
    orphan.status = Some(from(
        json!({"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}),
    ));
    let actions = reconcile(&d, &[orphan.clone()], &[], at("2026-01-01T00:00:00Z"));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet(_))),
        "{actions:?}"
    );
    let updates: Vec<&ReplicaSet> = actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateReplicaSet(rs) => Some(&**rs),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 1, "{actions:?}");
    assert!(controlled_by(&updates[0].metadata, "d-uid"));
    assert_eq!(updates[0].metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(
        updates[0].spec, orphan.spec,
        "the same replicas and template"
    );
    let Some(Action::UpdateStatus(s)) = actions.last() else {
        panic!("{actions:?}")
    };
    let Status::Deployment(s) = &**s else {
        panic!()
    };
    assert_eq!(s.available_replicas, Some(2));
}

#[test]
fn a_replicaset_relabelled_out_of_the_selector_is_released_and_replaced() {
    let d = deployment(2, "nginx:1", json!({}));
    let mut rs = first_replicaset(&d);
    rs.metadata.uid = Some("rs-uid".into());
    rs.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "debug".into());
    assert!(releasable(&d, &rs));
    assert!(!releasable(&d, &first_replicaset(&d)), "still selected");
    let mut deleting = d.clone();
    deleting.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
    assert!(
        !releasable(&deleting, &rs),
        "a deployment being deleted keeps it"
    );

    let actions = reconcile(&d, &[rs.clone()], &[], at("2026-01-01T00:00:00Z"));
    let Some(Action::UpdateReplicaSet(released)) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!(released.metadata.name, rs.metadata.name);
    assert_eq!(released.metadata.owner_references, None, "no owner left");
    assert_eq!(released.spec, rs.spec, "nothing else changes");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet(_))),
        "the deployment makes a ReplicaSet of its own again: {actions:?}"
    );
    let again = reconcile(&deleting, &[rs], &[], at("2026-01-01T00:00:00Z"));
    assert!(
        !again
            .iter()
            .any(|a| matches!(a, Action::UpdateReplicaSet(_))),
        "{again:?}"
    );
}

#[test]
fn a_deployment_being_deleted_adopts_nothing() {
    let mut d = deployment(2, "nginx:1", json!({}));
    d.metadata.deletion_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
    let mut orphan = first_replicaset(&deployment(2, "nginx:1", json!({})));
    orphan.metadata.owner_references = None;
    let actions = reconcile(&d, &[orphan], &[], at("2026-01-01T00:00:00Z"));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::UpdateReplicaSet(_))),
        "{actions:?}"
    );
}
