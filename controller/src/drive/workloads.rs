//! Reconcilers of the workload resources — ReplicaSet, Deployment, DaemonSet, Job — each
//! reading its object and what it owns from the caches, asking the pure controller in
//! `flotilla-controllers` what to do, and executing that.

use super::Ctx;
use super::cache::ObjKey;
use super::write::{self, Subject};
use crate::api::status::ApiResult;
use flotilla_controllers::{Action, daemonset, deployment, job, replicaset};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;
use std::time::Duration;

/// Transient pods of the owner with this uid; `spec` false leaves out all of the spec
/// but `nodeName` (for controllers that read nothing else of it).
fn owned_pods(ctx: &Ctx, uid: Option<&str>, spec: bool) -> Vec<Pod> {
    uid.map(|u| {
        ctx.pods
            .owned_by(u)
            .iter()
            .map(|p| p.to_pod(spec))
            .collect()
    })
    .unwrap_or_default()
}

async fn run(
    ctx: &Arc<Ctx>,
    subject: Subject,
    actions: Vec<Action>,
) -> ApiResult<Option<Duration>> {
    let out = write::execute(ctx, Some(&subject), actions).await?;
    write::settle(ctx, &out).await;
    Ok(out.requeue)
}

fn subject(group: &str, plural: &str, key: &ObjKey) -> Subject {
    Subject {
        res: write::resource(group, plural),
        namespace: key.0.clone(),
        name: key.1.clone(),
    }
}

/// One ReplicaSet: its pods, and the namespace's orphans it may adopt.
pub async fn replicaset(ctx: Arc<Ctx>, key: ObjKey) -> ApiResult<Option<Duration>> {
    let Some(rs) = ctx.replicasets.get(&key) else {
        return Ok(None);
    };
    // The ReplicaSet controller reads of a pod's spec only its nodeName.
    let mut pods = owned_pods(&ctx, rs.metadata.uid.as_deref(), false);
    pods.extend(ctx.pods.orphans_ns(&key.0).iter().map(|p| p.to_pod(false)));
    let actions = replicaset::reconcile(&rs, &pods, Timestamp::now());
    run(&ctx, subject("apps", "replicasets", &key), actions).await
}

/// One Deployment: its ReplicaSets and their pods, and the namespace's orphaned
/// ReplicaSets it may adopt.
pub async fn deployment(ctx: Arc<Ctx>, key: ObjKey) -> ApiResult<Option<Duration>> {
    let Some(d) = ctx.deployments.get(&key) else {
        return Ok(None);
    };
    let sets: Vec<_> = d
        .metadata
        .uid
        .as_deref()
        .map(|u| ctx.replicasets.owned_by(u))
        .unwrap_or_default();
    let mut pods = Vec::new();
    for rs in &sets {
        // The Deployment controller reads of pods only their owner and phase.
        pods.extend(owned_pods(&ctx, rs.metadata.uid.as_deref(), false));
    }
    let mut sets: Vec<_> = sets.iter().map(|rs| (**rs).clone()).collect();
    sets.extend(
        ctx.replicasets
            .orphans_ns(&key.0)
            .iter()
            .map(|rs| (**rs).clone()),
    );
    let actions = deployment::reconcile(&d, &sets, &pods, Timestamp::now());
    run(&ctx, subject("apps", "deployments", &key), actions).await
}

/// One DaemonSet: every node and its pods.
pub async fn daemonset(ctx: Arc<Ctx>, key: ObjKey) -> ApiResult<Option<Duration>> {
    let Some(ds) = ctx.daemonsets.get(&key) else {
        return Ok(None);
    };
    let nodes: Vec<Node> = ctx.nodes.list().iter().map(|n| (**n).clone()).collect();
    // The DaemonSet controller reads an unbound pod's node affinity.
    let pods = owned_pods(&ctx, ds.metadata.uid.as_deref(), true);
    let actions = daemonset::reconcile(&ds, &nodes, &pods, Timestamp::now());
    run(&ctx, subject("apps", "daemonsets", &key), actions).await
}

/// One Job: its pods.
pub async fn job(ctx: Arc<Ctx>, key: ObjKey) -> ApiResult<Option<Duration>> {
    let Some(j) = ctx.jobs.get(&key) else {
        return Ok(None);
    };
    // The Job controller reads its template's spec, not its pods'.
    let pods = owned_pods(&ctx, j.metadata.uid.as_deref(), false);
    let actions = job::reconcile(&j, &pods, Timestamp::now());
    run(&ctx, subject("batch", "jobs", &key), actions).await
}
