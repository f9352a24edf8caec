//! Deployment controller: rollouts through ReplicaSets, as upstream does them.
//!
//! The ReplicaSet whose template equals the deployment's (ignoring `pod-template-hash`)
//! is the new one; the others are old. RollingUpdate scales the new one up within
//! `replicas + maxSurge` (percentages round up) and old ones down while keeping
//! `replicas - maxUnavailable` (round down) available; Recreate scales old ones to zero,
//! waits for their pods to go, then brings up the new one. Revisions live in the
//! `deployment.kubernetes.io/revision` annotation; old ReplicaSets beyond
//! `revisionHistoryLimit` are deleted once the rollout completes. Status carries the
//! counts and the Available/Progressing conditions `kubectl rollout status` reads.
//! [`rollback_template`] picks the template `kubectl rollout undo` restores.
//! The new ReplicaSet is named `<deployment>-<hash of template and collisionCount>`; when
//! that name is taken by another template or owner, [`name_taken`] says to bump
//! `status.collisionCount` so the next pass picks another name, as upstream does.
//! Before all that the deployment claims its ReplicaSets as upstream's
//! `ClaimReplicaSets` does: orphans its selector matches are adopted ([`adoptable`]), so
//! one deleted with `--cascade=orphan` and made again takes its ReplicaSets back, and
//! ones it controls whose labels no longer match are released ([`releasable`]).

use std::collections::BTreeMap;

use flotilla_scheduler::selectors::label_selector_matches;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::actions::{Action, Event, Status, reference};
use crate::hash::template_hash;
use crate::intstr::scaled;
use crate::pods::{controlled_by, controller_ref};

/// Revision annotation on deployments and their ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had before a rollback reused it.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Label distinguishing the pods of each template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

const DEFAULT_HISTORY_LIMIT: i32 = 10;
const DEFAULT_PROGRESS_DEADLINE: i32 = 600;

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// A ReplicaSet's revision number (0 when it has none).
pub fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// The template without the `pod-template-hash` label, for comparisons.
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            t.metadata.as_mut().unwrap().labels = None;
        }
    }
    if let Some(m) = &t.metadata
        && *m == ObjectMeta::default()
    {
        t.metadata = None;
    }
    t
}

fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// maxSurge and maxUnavailable for `replicas`, upstream's fenceposts included: surge
/// rounds up, unavailable rounds down, and both zero means one unavailable.
pub fn surge_and_unavailable(d: &Deployment) -> Result<(i32, i32), String> {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return Ok((0, 0));
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let quarter = IntOrString::String("25%".to_owned());
    let surge = scaled(
        ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&quarter),
        replicas,
        true,
    )?;
    let unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref())
            .unwrap_or(&quarter),
        replicas,
        false,
    )?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable.min(replicas)))
}

struct Step<'a> {
    d: &'a Deployment,
    now: Timestamp,
    actions: Vec<Action>,
    /// All ReplicaSets of the deployment, with the scaling decided in this step applied.
    all: Vec<ReplicaSet>,
    new: Option<usize>,
    progressing: Option<(&'static str, String)>,
}

impl Step<'_> {
    fn me(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        reference("apps/v1", "Deployment", &self.d.metadata)
    }

    fn desired(&self) -> i32 {
        self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn olds(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.all.len())
            .filter(|i| Some(*i) != self.new)
            .collect();
        // Oldest first, as upstream scales them down.
        v.sort_by(|a, b| {
            let ca = self.all[*a]
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0);
            let cb = self.all[*b]
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0);
            ca.cmp(&cb)
                .then_with(|| self.all[*a].metadata.name.cmp(&self.all[*b].metadata.name))
        });
        v
    }

    /// Scales ReplicaSet `i` to `to`, refreshing its replica annotations.
    fn scale(&mut self, i: usize, to: i32, surge: i32) {
        let desired = self.desired();
        let rs = &mut self.all[i];
        let from = spec_replicas(rs);
        let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let before = annotations.clone();
        annotations.insert(DESIRED_REPLICAS.to_owned(), desired.to_string());
        annotations.insert(MAX_REPLICAS.to_owned(), (desired + surge).to_string());
        if from == to && *annotations == before {
            return;
        }
        rs.spec.get_or_insert_with(ReplicaSetSpec::default).replicas = Some(to);
        self.actions
            .push(Action::UpdateReplicaSet(Box::new(rs.clone())));
        if from != to {
            let op = if to > from { "up" } else { "down" };
            let name = rs.metadata.name.clone().unwrap_or_default();
            let me = self.me();
            self.actions.push(Action::Event(Event::normal(
                me,
                "ScalingReplicaSet",
                format!("Scaled {op} replica set {name} from {from} to {to}"),
            )));
        }
    }

    fn sum(&self, f: impl Fn(&ReplicaSet) -> i32) -> i32 {
        self.all.iter().map(f).sum()
    }
}

/// One reconcile step of a Deployment, given its namespace's ReplicaSets and pods.
pub fn reconcile(
    d: &Deployment,
    replica_sets: &[ReplicaSet],
    pods: &[Pod],
    now: Timestamp,
) -> Vec<Action> {
    let uid = d.metadata.uid.as_deref().unwrap_or("");
    let mut step = Step {
        d,
        now,
        actions: Vec::new(),
        all: replica_sets
            .iter()
            .filter(|rs| controlled_by(&rs.metadata, uid))
            .cloned()
            .collect(),
        new: None,
        progressing: None,
    };
    let Some(spec) = d.spec.as_ref() else {
        return step.actions;
    };
    let selector_empty = spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if selector_empty {
        let me = step.me();
        step.actions.push(Action::Event(Event::warning(
            me,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.",
        )));
        return step.actions;
    }
    let (surge, max_unavailable) = match surge_and_unavailable(d) {
        Ok(v) => v,
        Err(e) => {
            let me = step.me();
            step.actions
                .push(Action::Event(Event::warning(me, "InvalidStrategy", e)));
            return step.actions;
        }
    };
    claim(&mut step, replica_sets);
    step.new = step.all.iter().position(|rs| {
        rs.metadata.deletion_timestamp.is_none()
            && rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| same_template(t, &spec.template))
    });
    let deleting = d.metadata.deletion_timestamp.is_some();
    let paused = spec.paused.unwrap_or(false);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");

    if !deleting {
        sync_revision(&mut step);
        let desired = step.desired();
        let scaling_event = step.all.iter().any(|rs| {
            spec_replicas(rs) > 0
                && annotation(&rs.metadata, DESIRED_REPLICAS)
                    .and_then(|v| v.parse::<i32>().ok())
                    .is_some_and(|d| d != desired)
        });
        if paused || scaling_event {
            // Paused: no rollout, only scaling. A scaling event mid-rollout spreads the
            // change over the ReplicaSets in proportion, as upstream does.
            scale(&mut step, surge, recreate);
            if paused {
                cleanup(&mut step);
            }
        } else if recreate {
            rollout_recreate(&mut step, pods);
        } else {
            rollout_rolling(&mut step, surge, max_unavailable);
        }
    }
    let status = compute_status(&step, max_unavailable, paused);
    let deadline = spec
        .progress_deadline_seconds
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE);
    let check = (!paused && !deleting)
        .then(|| progress_check_in(&status, deadline, now))
        .flatten();
    if let Some(after) = check {
        step.actions.push(Action::Requeue(after));
    }
    if d.status.as_ref() != Some(&status) {
        step.actions
            .push(Action::UpdateStatus(Box::new(Status::Deployment(status))));
    }
    coalesce_updates(step.actions)
}

/// When to look again so a rollout that stops progressing turns
/// `ProgressDeadlineExceeded` even if nothing else changes (upstream requeues the
/// same way): just after the Progressing condition's last update plus the deadline.
fn progress_check_in(
    status: &DeploymentStatus,
    deadline: i32,
    now: Timestamp,
) -> Option<std::time::Duration> {
    if deadline == i32::MAX {
        return None;
    }
    let c = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing")?;
    if c.status != "True" || c.reason.as_deref() == Some("NewReplicaSetAvailable") {
        return None;
    }
    let updated = c.last_update_time.as_ref()?.0.as_second();
    let due = updated + i64::from(deadline) + 1 - now.as_second();
    Some(std::time::Duration::from_secs(due.max(1) as u64))
}

/// One update per ReplicaSet per step: the last version wins, in the place of the first,
/// so the driver never writes an object twice on one resourceVersion.
fn coalesce_updates(actions: Vec<Action>) -> Vec<Action> {
    let mut out: Vec<Action> = Vec::with_capacity(actions.len());
    for a in actions {
        if let Action::UpdateReplicaSet(rs) = &a
            && let Some(slot) = out.iter_mut().find(
                |x| matches!(x, Action::UpdateReplicaSet(prev) if prev.metadata.name == rs.metadata.name),
            )
        {
            *slot = a;
            continue;
        }
        out.push(a);
    }
    out
}

/// The deployment's annotations a ReplicaSet inherits (`kubernetes.io/change-cause`
/// among them, which `kubectl rollout history` shows); not the controller's own ones.
fn copied_annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    const SKIP: [&str; 6] = [
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        REVISION_HISTORY,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        "deprecated.deployment.rollback.to",
    ];
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Makes sure the new ReplicaSet carries the newest revision and the deployment mirrors it.
fn sync_revision(step: &mut Step) {
    let d = step.d;
    let max_old = step
        .olds()
        .iter()
        .map(|i| revision(&step.all[*i]))
        .max()
        .unwrap_or(0);
    let Some(i) = step.new else { return };
    let rs = &mut step.all[i];
    let current = revision(rs);
    let inherited = copied_annotations(&d.metadata);
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let stale = inherited.iter().any(|(k, v)| annotations.get(k) != Some(v));
    if stale && current > max_old {
        annotations.extend(inherited.clone());
        step.actions
            .push(Action::UpdateReplicaSet(Box::new(rs.clone())));
    }
    if current <= max_old {
        rs.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(inherited);
        let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        if current > 0 {
            let mut history: Vec<String> = annotations
                .get(REVISION_HISTORY)
                .map(|h| h.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            history.push(current.to_string());
            annotations.insert(REVISION_HISTORY.to_owned(), history.join(","));
        }
        annotations.insert(REVISION.to_owned(), (max_old + 1).to_string());
        step.actions
            .push(Action::UpdateReplicaSet(Box::new(rs.clone())));
    }
    let rev = revision(&step.all[i]).to_string();
    if annotation(&d.metadata, REVISION) != Some(rev.as_str()) {
        let mut updated = d.clone();
        updated
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REVISION.to_owned(), rev);
        step.actions
            .push(Action::UpdateDeployment(Box::new(updated)));
    }
}

/// Upstream's `ClaimReplicaSets`: matching orphans join the deployment's ReplicaSets
/// (an update adding the controller reference; the driver checks the deployment afresh
/// before writing it), and its own ones whose labels no longer match leave them (an update
/// dropping the reference). A deployment being deleted claims and releases nothing.
fn claim(step: &mut Step, replica_sets: &[ReplicaSet]) {
    let d = step.d;
    if d.metadata.deletion_timestamp.is_some() {
        return;
    }
    let uid = d.metadata.uid.as_deref().unwrap_or("");
    for rs in step.all.iter().filter(|rs| releasable(d, rs)) {
        let mut rs = rs.clone();
        if let Some(refs) = rs.metadata.owner_references.as_mut() {
            refs.retain(|r| r.uid != uid);
        }
        if rs
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|r| r.is_empty())
        {
            rs.metadata.owner_references = None;
        }
        step.actions.push(Action::UpdateReplicaSet(Box::new(rs)));
    }
    step.all.retain(|rs| !releasable(d, rs));
    for rs in replica_sets.iter().filter(|rs| adoptable(d, rs)) {
        let rs = adopted(d, rs);
        step.actions
            .push(Action::UpdateReplicaSet(Box::new(rs.clone())));
        step.all.push(rs);
    }
}

/// The labels of `rs` match the deployment's selector.
fn selected(d: &Deployment, rs: &ReplicaSet) -> bool {
    d.spec.as_ref().is_some_and(|spec| {
        label_selector_matches(
            &spec.selector,
            rs.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
        )
    })
}

/// Whether `d` may adopt `rs` (upstream's ReplicaSet claiming): `rs` is an orphan (no
/// controller owner) in the deployment's namespace, neither of them is being deleted,
/// and the deployment's non-empty selector matches the ReplicaSet's labels.
pub fn adoptable(d: &Deployment, rs: &ReplicaSet) -> bool {
    let Some(spec) = d.spec.as_ref() else {
        return false;
    };
    let orphan = !rs
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true));
    let selects_something = spec
        .selector
        .match_labels
        .as_ref()
        .is_some_and(|m| !m.is_empty())
        || spec
            .selector
            .match_expressions
            .as_ref()
            .is_some_and(|e| !e.is_empty());
    orphan
        && selects_something
        && d.metadata.deletion_timestamp.is_none()
        && rs.metadata.deletion_timestamp.is_none()
        && rs.metadata.namespace == d.metadata.namespace
        && selected(d, rs)
}

/// Whether `d` lets go of `rs` (upstream's ReleaseReplicaSets): `d` controls it, it is
/// not being deleted, and its labels no longer match the selector.
pub fn releasable(d: &Deployment, rs: &ReplicaSet) -> bool {
    let uid = d.metadata.uid.as_deref().unwrap_or("");
    controlled_by(&rs.metadata, uid)
        && rs.metadata.deletion_timestamp.is_none()
        && d.metadata.deletion_timestamp.is_none()
        && !selected(d, rs)
}

/// `rs` with `d` as its controller owner (added to its other owner references).
pub fn adopted(d: &Deployment, rs: &ReplicaSet) -> ReplicaSet {
    let mut rs = rs.clone();
    rs.metadata
        .owner_references
        .get_or_insert_with(Vec::new)
        .push(controller_ref("apps/v1", "Deployment", &d.metadata));
    rs
}

/// The `pod-template-hash` of the deployment's new ReplicaSet: its template hashed
/// with its `status.collisionCount`.
fn new_hash(d: &Deployment, spec: &DeploymentSpec) -> String {
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    template_hash(&spec.template, collision)
}

/// What it means that the name of the new ReplicaSet the controller tried to create is
/// taken (upstream's `getNewReplicaSet` on AlreadyExists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameTaken {
    /// The existing ReplicaSet is this deployment's and has its template: it is the new
    /// ReplicaSet (an earlier pass created it before the cache showed it).
    Ours,
    /// A hash collision: a ReplicaSet with another template, or another owner, holds the
    /// name. Write this `collisionCount` to the deployment's status and reconcile again;
    /// the next pass hashes with it and picks another name.
    Collision(i32),
    /// The deployment is no longer the one the attempt was made for (its template,
    /// `collisionCount` or uid changed since): reconcile again, nothing to write.
    Stale,
}

/// Decides what the name of `tried` (a ReplicaSet this controller tried to create for
/// `d`, as `d` is now) being held by `existing` means.
pub fn name_taken(d: &Deployment, tried: &ReplicaSet, existing: &ReplicaSet) -> NameTaken {
    let uid = d.metadata.uid.as_deref().unwrap_or("");
    let Some(spec) = d.spec.as_ref() else {
        return NameTaken::Stale;
    };
    let existing_template = existing.spec.as_ref().and_then(|s| s.template.as_ref());
    if !uid.is_empty()
        && controlled_by(&existing.metadata, uid)
        && existing_template.is_some_and(|t| same_template(t, &spec.template))
    {
        return NameTaken::Ours;
    }
    let expected = format!(
        "{}-{}",
        d.metadata.name.as_deref().unwrap_or(""),
        new_hash(d, spec)
    );
    if uid.is_empty()
        || !controlled_by(&tried.metadata, uid)
        || tried.metadata.name.as_deref() != Some(expected.as_str())
    {
        return NameTaken::Stale;
    }
    let count = d.status.as_ref().and_then(|s| s.collision_count);
    NameTaken::Collision(count.unwrap_or(0).saturating_add(1))
}

/// Creates the new ReplicaSet with `replicas` replicas.
fn create_new(step: &mut Step, replicas: i32, surge: i32) {
    let d = step.d;
    let spec = d.spec.as_ref().unwrap();
    let hash = new_hash(d, spec);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
    let max_old = step.all.iter().map(revision).max().unwrap_or(0);
    let desired = step.desired();
    let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or(""));
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.metadata.namespace.clone(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some({
                let mut a = copied_annotations(&d.metadata);
                a.insert(REVISION.to_owned(), (max_old + 1).to_string());
                a.insert(DESIRED_REPLICAS.to_owned(), desired.to_string());
                a.insert(MAX_REPLICAS.to_owned(), (desired + surge).to_string());
                a
            }),
            owner_references: Some(vec![controller_ref("apps/v1", "Deployment", &d.metadata)]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    step.actions
        .push(Action::CreateReplicaSet(Box::new(rs.clone())));
    if replicas > 0 {
        let me = step.me();
        step.actions.push(Action::Event(Event::normal(
            me,
            "ScalingReplicaSet",
            format!("Scaled up replica set {name} from 0 to {replicas}"),
        )));
    }
    let mut updated = d.clone();
    updated
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION.to_owned(), (max_old + 1).to_string());
    step.actions
        .push(Action::UpdateDeployment(Box::new(updated)));
    step.all.push(rs);
    step.new = Some(step.all.len() - 1);
    step.progressing = Some((
        "NewReplicaSetCreated",
        format!("Created new replica set \"{name}\""),
    ));
}

/// Upstream's `scale`: the one active ReplicaSet (else the newest) takes all replicas;
/// a saturated new ReplicaSet retires the old ones; otherwise, for RollingUpdate, the
/// difference to `replicas + maxSurge` is shared out in proportion to each ReplicaSet's
/// size at its last scaling (`max-replicas` annotation), leftovers to the largest.
fn scale(step: &mut Step, surge: i32, recreate: bool) {
    let desired = step.desired();
    let active: Vec<usize> = (0..step.all.len())
        .filter(|i| spec_replicas(&step.all[*i]) > 0)
        .collect();
    let newest = || {
        step.new.or_else(|| {
            (0..step.all.len()).max_by_key(|i| {
                (
                    step.all[*i]
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0),
                    revision(&step.all[*i]),
                )
            })
        })
    };
    let only = match active[..] {
        [one] => Some(one),
        [] => newest(),
        _ => None,
    };
    if let Some(i) = only {
        step.scale(i, desired, surge);
        return;
    }
    if let Some(n) = step.new {
        let rs = &step.all[n];
        let saturated = spec_replicas(rs) == desired
            && annotation(&rs.metadata, DESIRED_REPLICAS) == Some(desired.to_string().as_str())
            && status_of(rs).2 == desired;
        if saturated {
            for o in step.olds() {
                if spec_replicas(&step.all[o]) > 0 {
                    step.scale(o, 0, surge);
                }
            }
            return;
        }
    }
    if recreate {
        return;
    }
    let allowed = if desired > 0 { desired + surge } else { 0 };
    let current: i32 = active.iter().map(|i| spec_replicas(&step.all[*i])).sum();
    let to_add = allowed - current;
    let mut order = active.clone();
    let created = |i: &usize| {
        step.all[*i]
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
    };
    order.sort_by(|a, b| {
        let by_size = spec_replicas(&step.all[*b]).cmp(&spec_replicas(&step.all[*a]));
        // Growing: ties go to the newer first; shrinking: to the older first.
        let by_age = if to_add > 0 {
            created(b).cmp(&created(a))
        } else {
            created(a).cmp(&created(b))
        };
        by_size.then(by_age)
    });
    let observed_total = step.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut added = 0;
    let mut sizes: Vec<(usize, i32)> = Vec::new();
    for &i in &order {
        let replicas = spec_replicas(&step.all[i]);
        let mut proportion = 0;
        if to_add != 0 && to_add != added && replicas != 0 {
            let fraction = if desired == 0 {
                -replicas
            } else {
                let annotated = annotation(&step.all[i].metadata, MAX_REPLICAS)
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(observed_total)
                    .max(1);
                ((f64::from(replicas) * f64::from(desired + surge)) / f64::from(annotated)).round()
                    as i32
                    - replicas
            };
            let left = to_add - added;
            proportion = if to_add > 0 {
                fraction.min(left)
            } else {
                fraction.max(left)
            };
        }
        added += proportion;
        sizes.push((i, replicas + proportion));
    }
    if let Some(first) = sizes.first_mut() {
        first.1 = (first.1 + to_add - added).max(0);
    }
    for (i, size) in sizes {
        step.scale(i, size, surge);
    }
}

fn rollout_rolling(step: &mut Step, surge: i32, max_unavailable: i32) {
    let desired = step.desired();
    if step.new.is_none() {
        let current: i32 = step.sum(spec_replicas);
        let replicas = (desired + surge - current).clamp(0, desired);
        create_new(step, replicas, surge);
        return;
    }
    let i = step.new.unwrap();
    // Scale the new ReplicaSet up (or down to the desired count).
    let new_replicas = spec_replicas(&step.all[i]);
    if new_replicas > desired {
        step.scale(i, desired, surge);
        return;
    }
    if new_replicas < desired {
        let current: i32 = step.sum(spec_replicas);
        let room = desired + surge - current;
        if room > 0 {
            step.scale(i, new_replicas + room.min(desired - new_replicas), surge);
            return;
        }
    } else {
        step.scale(i, desired, surge);
    }
    // Scale old ReplicaSets down while keeping the minimum available.
    let olds = step.olds();
    let old_pods: i32 = olds.iter().map(|o| spec_replicas(&step.all[*o])).sum();
    if old_pods > 0 {
        let all_pods: i32 = step.sum(spec_replicas);
        let min_available = desired - max_unavailable;
        let new_unavailable = spec_replicas(&step.all[i]) - status_of(&step.all[i]).2;
        let mut budget = all_pods - min_available - new_unavailable;
        let mut scaled_down = false;
        if budget > 0 {
            // First the old pods that are not available anyway.
            for o in &olds {
                if budget <= 0 {
                    break;
                }
                let replicas = spec_replicas(&step.all[*o]);
                let unhealthy = replicas - status_of(&step.all[*o]).2;
                if replicas == 0 || unhealthy <= 0 {
                    continue;
                }
                let cut = unhealthy.min(budget);
                step.scale(*o, replicas - cut, surge);
                budget -= cut;
                scaled_down = true;
            }
            // Then available ones, down to the minimum.
            let available: i32 = step.sum(|rs| status_of(rs).2);
            let mut total = (available - min_available).min(budget);
            for o in &olds {
                if total <= 0 {
                    break;
                }
                let replicas = spec_replicas(&step.all[*o]);
                if replicas == 0 {
                    continue;
                }
                let cut = replicas.min(total);
                step.scale(*o, replicas - cut, surge);
                total -= cut;
                scaled_down = true;
            }
        }
        if scaled_down {
            return;
        }
    }
    if complete(step) {
        cleanup(step);
    }
}

fn rollout_recreate(step: &mut Step, pods: &[Pod]) {
    let olds = step.olds();
    let mut scaled = false;
    for o in &olds {
        if spec_replicas(&step.all[*o]) > 0 {
            step.scale(*o, 0, 0);
            scaled = true;
        }
    }
    if scaled {
        return;
    }
    // Wait until no pod of an old ReplicaSet is left running.
    let old_uids: Vec<String> = olds
        .iter()
        .filter_map(|o| step.all[*o].metadata.uid.clone())
        .collect();
    let old_running = pods.iter().any(|p| {
        old_uids.iter().any(|u| controlled_by(&p.metadata, u))
            && !matches!(crate::pods::phase(p), "Succeeded" | "Failed")
    });
    if old_running {
        return;
    }
    let desired = step.desired();
    match step.new {
        None => create_new(step, desired, 0),
        Some(i) => step.scale(i, desired, 0),
    }
    if complete(step) {
        cleanup(step);
    }
}

/// All replicas updated, present and available, and the spec observed.
fn complete(step: &Step) -> bool {
    let Some(i) = step.new else { return false };
    let desired = step.desired();
    let (updated, _, _) = status_of(&step.all[i]);
    let replicas: i32 = step.sum(|rs| status_of(rs).0);
    let available: i32 = step.sum(|rs| status_of(rs).2);
    updated == desired && replicas == desired && available == desired
}

/// Deletes the oldest old ReplicaSets with nothing left beyond `revisionHistoryLimit`.
fn cleanup(step: &mut Step) {
    let limit = step
        .d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(DEFAULT_HISTORY_LIMIT);
    let mut olds: Vec<usize> = step
        .olds()
        .into_iter()
        .filter(|o| step.all[*o].metadata.deletion_timestamp.is_none())
        .collect();
    let diff = olds.len() as i32 - limit.max(0);
    if diff <= 0 {
        return;
    }
    olds.sort_by_key(|o| revision(&step.all[*o]));
    for o in olds.into_iter().take(diff as usize) {
        let rs = &step.all[o];
        let observed = rs
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .unwrap_or(0);
        if status_of(rs).0 != 0
            || spec_replicas(rs) != 0
            || rs.metadata.generation.unwrap_or(0) > observed
        {
            continue;
        }
        step.actions.push(Action::DeleteReplicaSet {
            namespace: rs.metadata.namespace.clone().unwrap_or_default(),
            name: rs.metadata.name.clone().unwrap_or_default(),
        });
    }
}

fn condition<'a>(
    status: Option<&'a DeploymentStatus>,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Upstream's SetDeploymentCondition: same status and reason changes nothing; same
/// status keeps the transition time.
fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut new: DeploymentCondition) {
    if let Some(old) = conditions.iter().find(|c| c.type_ == new.type_) {
        if old.status == new.status && old.reason == new.reason {
            return;
        }
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

fn cond(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn compute_status(step: &Step, max_unavailable: i32, paused: bool) -> DeploymentStatus {
    let d = step.d;
    let now = step.now;
    let old = d.status.as_ref();
    let desired = step.desired();
    let replicas = step.sum(|rs| status_of(rs).0);
    let available = step.sum(|rs| status_of(rs).2);
    let total_spec = step.sum(spec_replicas);
    let updated = step.new.map_or(0, |i| status_of(&step.all[i]).0);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(step.sum(|rs| status_of(rs).1)),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        terminating_replicas: None,
        collision_count: old.and_then(|s| s.collision_count),
        conditions: old.and_then(|s| s.conditions.clone()),
    };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if available >= desired - max_unavailable {
        set_condition(
            conditions,
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            conditions,
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    let current = condition(old, "Progressing").cloned();
    let new_name = step
        .new
        .and_then(|i| step.all[i].metadata.name.clone())
        .unwrap_or_default();
    if paused {
        if current.as_ref().and_then(|c| c.reason.as_deref()) != Some("DeploymentPaused") {
            set_condition(
                conditions,
                cond(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                    now,
                ),
            );
        }
    } else if current.as_ref().and_then(|c| c.reason.as_deref()) == Some("DeploymentPaused") {
        set_condition(
            conditions,
            cond(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                now,
            ),
        );
    } else if let Some((reason, message)) = &step.progressing {
        set_condition(
            conditions,
            cond("Progressing", "True", reason, message.clone(), now),
        );
    } else if step.new.is_some() {
        let deadline = d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE);
        let was_complete = current.as_ref().and_then(|c| c.reason.as_deref())
            == Some("NewReplicaSetAvailable")
            && replicas == updated;
        let done = updated == desired && replicas == desired && available == desired;
        let advanced = old.is_none_or(|o| {
            updated > o.updated_replicas.unwrap_or(0)
                || replicas < o.replicas.unwrap_or(0)
                || status.ready_replicas.unwrap_or(0) > o.ready_replicas.unwrap_or(0)
                || available > o.available_replicas.unwrap_or(0)
        });
        if current.is_none() {
            set_condition(
                conditions,
                cond(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{new_name}\""),
                    now,
                ),
            );
        } else if !was_complete {
            if done {
                set_condition(
                    conditions,
                    cond(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                        now,
                    ),
                );
            } else if advanced {
                let mut c = cond(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{new_name}\" is progressing."),
                    now,
                );
                // Progress refreshes the update time even when the reason stays.
                if let Some(cur) = current.as_ref().filter(|c| c.status == "True") {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                conditions.retain(|x| x.type_ != "Progressing");
                conditions.push(c);
            } else if deadline != i32::MAX
                && current
                    .as_ref()
                    .and_then(|c| c.last_update_time.as_ref())
                    .is_some_and(|t| t.0.as_second() + i64::from(deadline) < now.as_second())
            {
                set_condition(
                    conditions,
                    cond(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        now,
                    ),
                );
            }
        }
    }
    conditions.sort_by_key(|c| if c.type_ == "Available" { 0 } else { 1 });
    status
}

/// The template `kubectl rollout undo` writes back: that of `to_revision`, or of the
/// revision before the current one when `None`. The `pod-template-hash` label is dropped.
pub fn rollback_template(
    d: &Deployment,
    replica_sets: &[ReplicaSet],
    to_revision: Option<i64>,
) -> Result<PodTemplateSpec, String> {
    let uid = d.metadata.uid.as_deref().unwrap_or("");
    let mut owned: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| controlled_by(&rs.metadata, uid))
        .collect();
    owned.sort_by_key(|rs| std::cmp::Reverse(revision(rs)));
    let target = match to_revision.filter(|r| *r != 0) {
        Some(r) => owned
            .into_iter()
            .find(|rs| revision(rs) == r)
            .ok_or_else(|| format!("unable to find specified revision {r} in history"))?,
        None => *owned
            .get(1)
            .ok_or_else(|| "no rollout history found for deployment".to_owned())?,
    };
    let template = target
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .ok_or("the revision has no pod template")?;
    Ok(without_hash(template))
}

#[cfg(test)]
#[path = "deployment_tests.rs"]
mod tests;
