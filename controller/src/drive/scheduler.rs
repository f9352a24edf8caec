//! The scheduler loop: takes unbound pods from its queue in batches, decides each one
//! against the in-memory [`Cluster`] (kept current by the pod and node watches), binds
//! the placed ones through the `binding` subresource, and writes `PodScheduled=False`
//! plus a `FailedScheduling` event for the rest, once per verdict. Writes go out
//! concurrently (up to [`IN_FLIGHT`] pods at once) while the next batch is decided.
//! Unschedulable pods are tried again once nodes or pods changed (checked every
//! second), and at least once a minute.

use super::Ctx;
use super::cache::ObjKey;
use super::podrec::PodRecord;
use super::write;
use flotilla_controllers::{Action, scheduling};
use flotilla_scheduler::Cluster;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The scheduler's view, shared with the watch routing.
#[derive(Default)]
pub struct State {
    /// Bound pods per node, nodes and their capacity.
    pub cluster: Cluster,
    /// Pods placed in `cluster` whose binding the watch has not shown yet.
    assumed: HashSet<ObjKey>,
    /// Pods that fit nowhere, waiting for the cluster to change.
    unschedulable: HashSet<ObjKey>,
}

/// How many pods one pass decides before their bindings go out.
const BATCH: usize = 512;
/// How many pods' writes (bindings, conditions) are in flight at once, across passes:
/// enough for the store's group commits, few enough that their transient objects stay
/// small.
const IN_FLIGHT: usize = 128;

/// Whether this scheduler should place the pod now.
fn wants_scheduling(p: &PodRecord) -> bool {
    let ours = p.spec.as_ref().is_some_and(|s| {
        s.scheduler_name
            .as_deref()
            .is_none_or(|n| n == "default-scheduler")
    });
    ours && !p.bound() && !p.finished() && p.deletion_timestamp.is_none()
}

/// Takes in a pod's current state: a bound, unfinished pod counts on its node (the
/// cluster digests its spec), any other is forgotten, as `Cluster::upsert_pod` does.
fn upsert(cluster: &mut Cluster, p: &PodRecord) {
    if p.bound() && !p.finished() {
        cluster.upsert_pod(&p.to_pod(true));
    } else {
        let ns = Some(&*p.namespace).filter(|n| !n.is_empty());
        cluster.remove_pod(ns.unwrap_or("default"), &p.name);
    }
}

/// The same spec and labels: what placement depends on.
fn same_placement_inputs(a: &PodRecord, b: &PodRecord) -> bool {
    let same_spec = match (&a.spec, &b.spec) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
        (x, y) => x.is_none() && y.is_none(),
    };
    same_spec && a.node_name == b.node_name && a.labels == b.labels
}

/// Takes in a pod change from the watch.
pub fn on_pod(ctx: &Ctx, old: Option<&PodRecord>, new: Option<&PodRecord>) {
    if !ctx.config.controllers.on("scheduler") {
        return;
    }
    let mut s = ctx.sched.lock().unwrap_or_else(|p| p.into_inner());
    match new {
        Some(p) => {
            let k = p.key();
            if p.bound() || !s.assumed.contains(&k) {
                s.assumed.remove(&k);
                upsert(&mut s.cluster, p);
            }
            if wants_scheduling(p) && !s.assumed.contains(&k) {
                // A pod waiting for the cluster to change is not retried for its own
                // status updates (such as the PodScheduled=False just written).
                let same = old.is_some_and(|o| same_placement_inputs(o, p));
                if !(s.unschedulable.contains(&k) && same) {
                    ctx.queues.scheduler.add(k);
                }
            } else {
                s.unschedulable.remove(&k);
            }
        }
        None => {
            if let Some(p) = old {
                let k = p.key();
                s.assumed.remove(&k);
                s.unschedulable.remove(&k);
                s.cluster.remove_pod(&k.0, &k.1);
            }
        }
    }
}

/// Takes in a node change from the watch.
pub fn on_node(
    ctx: &Ctx,
    old: Option<&k8s_openapi::api::core::v1::Node>,
    new: Option<&k8s_openapi::api::core::v1::Node>,
) {
    if !ctx.config.controllers.on("scheduler") {
        return;
    }
    let mut s = ctx.sched.lock().unwrap_or_else(|p| p.into_inner());
    match (old, new) {
        (_, Some(n)) => s.cluster.upsert_node(n),
        (Some(n), None) => s
            .cluster
            .remove_node(n.metadata.name.as_deref().unwrap_or("")),
        (None, None) => {}
    }
}

/// Re-queues unschedulable pods when the cluster changed (or a minute passed).
pub async fn retry_loop(ctx: Arc<Ctx>) {
    let mut seen_version = 0;
    let mut flushed = Instant::now();
    loop {
        smol::Timer::after(Duration::from_secs(1)).await;
        let mut s = ctx.sched.lock().unwrap_or_else(|p| p.into_inner());
        let version = s.cluster.version();
        if s.unschedulable.is_empty() {
            seen_version = version;
            continue;
        }
        if version != seen_version || flushed.elapsed() >= Duration::from_secs(60) {
            seen_version = version;
            flushed = Instant::now();
            for k in s.unschedulable.drain() {
                ctx.queues.scheduler.add(k);
            }
        }
    }
}

/// The scheduling loop.
pub async fn run(ctx: Arc<Ctx>) {
    let q = &ctx.queues.scheduler;
    let slots = Arc::new(smol::lock::Semaphore::new(IN_FLIGHT));
    loop {
        let mut batch = vec![q.next().await];
        while batch.len() < BATCH {
            match q.try_next() {
                Some(k) => batch.push(k),
                None => break,
            }
        }
        let now = Timestamp::now();
        let mut work: Vec<(ObjKey, bool, Vec<Action>)> = Vec::new();
        {
            let mut s = ctx.sched.lock().unwrap_or_else(|p| p.into_inner());
            for k in batch {
                let Some(rec) = ctx.pods.get(&k) else {
                    continue;
                };
                if !wants_scheduling(&rec) || s.assumed.contains(&k) {
                    continue;
                }
                let actions = scheduling::schedule(&mut s.cluster, &rec.to_pod(true), now);
                let placed = matches!(actions.first(), Some(Action::BindPod { .. }));
                if placed {
                    s.assumed.insert(k.clone());
                    s.unschedulable.remove(&k);
                } else {
                    s.unschedulable.insert(k.clone());
                }
                work.push((k, placed, actions));
            }
        }
        // Writes go out while the next batch is decided; a full window holds the loop.
        for (k, placed, actions) in work {
            let slot = slots.acquire_arc().await;
            let ctx = ctx.clone();
            crate::exec::executor()
                .spawn(async move {
                    let r = execute(&ctx, actions).await;
                    drop(slot);
                    finish(&ctx, k, placed, r);
                })
                .detach();
        }
    }
}

/// Settles one pod's writes: forgets its failures, or undoes a failed binding's
/// assumption and retries it with back-off.
fn finish(ctx: &Ctx, k: ObjKey, placed: bool, r: crate::api::status::ApiResult<()>) {
    let q = &ctx.queues.scheduler;
    let Err(e) = r else {
        q.forget(&k);
        return;
    };
    if placed {
        // Undo the assumption; the watch brings the pod's real state back.
        let mut s = ctx.sched.lock().unwrap_or_else(|p| p.into_inner());
        s.assumed.remove(&k);
        s.cluster.remove_pod(&k.0, &k.1);
        if let Some(p) = ctx.pods.get(&k) {
            upsert(&mut s.cluster, &p);
        }
    }
    if e.code == 404 {
        return;
    }
    tracing::warn!(pod = %format!("{}/{}", k.0, k.1), error = %e.message, "scheduling failed; retrying");
    q.retry(k);
}

/// Binds (the first action), then records the rest (events, conditions).
async fn execute(ctx: &Arc<Ctx>, actions: Vec<Action>) -> crate::api::status::ApiResult<()> {
    for a in actions {
        match a {
            Action::BindPod {
                namespace,
                name,
                node,
            } => write::bind(ctx, &namespace, &name, &node).await?,
            Action::Event(ev) => super::events::record(ctx, ev, write::SCHEDULER),
            other => {
                write::execute(ctx, None, vec![other]).await?;
            }
        }
    }
    Ok(())
}
