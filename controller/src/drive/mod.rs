//! The driver of the scheduler and controllers (kube-rs's model): typed caches fed by
//! store watches ([`cache`]), work queues of keys with back-off ([`queue`]), routing of
//! every change to the keys it concerns ([`route`]), one loop per controller calling the
//! pure decision functions of `flotilla-scheduler` and `flotilla-controllers`, and an
//! executor that writes their actions through the API layer ([`write`], [`events`]).
//! Pods are cached as compact records with interned specs ([`podrec`]) and handed to
//! the pure functions as transient `Pod`s.
//!
//! Settings are `serve` flags ([`config`]); `--controllers` says which loops run.
//! ClusterIPs and NodePorts are allocated at admission by `loops::ipalloc`.

pub mod cache;
pub mod config;
pub mod endpoints;
pub mod events;
pub mod nodes;
pub mod podrec;
pub mod queue;
pub mod route;
pub mod scheduler;
pub mod workloads;
pub mod write;

use crate::api::Api;
use crate::api::status::ApiResult;
use anyhow::{Context, Result};
use cache::{Cache, ObjKey};
pub use config::Flags;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use podrec::PodRecord;
use queue::Queue;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One queue per loop.
#[derive(Default)]
pub struct Queues {
    pub scheduler: Queue,
    pub replicasets: Queue,
    pub deployments: Queue,
    pub daemonsets: Queue,
    pub jobs: Queue,
    pub endpoints: Queue,
    pub nodes: Queue,
}

/// Everything the loops share.
pub struct Ctx {
    pub api: Arc<Api>,
    pub config: Flags,
    pub pods: Cache<PodRecord>,
    pub nodes: Cache<Node>,
    pub leases: Cache<Lease>,
    pub replicasets: Cache<ReplicaSet>,
    pub deployments: Cache<Deployment>,
    pub daemonsets: Cache<DaemonSet>,
    pub jobs: Cache<Job>,
    pub services: Cache<Service>,
    pub endpoints: Cache<Endpoints>,
    pub queues: Queues,
    pub sched: Mutex<scheduler::State>,
    pub events: events::Recorder,
}

impl Ctx {
    /// Waits until the cache of `store_name` has seen revision `rv`.
    pub async fn wait_for(&self, store_name: &str, rv: u64) {
        match store_name {
            "pods" => self.pods.wait_for(rv).await,
            "nodes" => self.nodes.wait_for(rv).await,
            "apps/replicasets" => self.replicasets.wait_for(rv).await,
            "apps/deployments" => self.deployments.wait_for(rv).await,
            "apps/daemonsets" => self.daemonsets.wait_for(rv).await,
            "batch/jobs" => self.jobs.wait_for(rv).await,
            "endpoints" => self.endpoints.wait_for(rv).await,
            _ => {}
        }
    }
}

/// Runs `reconcile` for each key of `queue`, forever: requeues when asked, backs off on
/// failure.
async fn worker<F, Fut>(ctx: Arc<Ctx>, name: &'static str, queue: fn(&Ctx) -> &Queue, reconcile: F)
where
    F: Fn(Arc<Ctx>, ObjKey) -> Fut,
    Fut: Future<Output = ApiResult<Option<Duration>>>,
{
    loop {
        let key = queue(&ctx).next().await;
        match reconcile(ctx.clone(), key.clone()).await {
            Ok(requeue) => {
                queue(&ctx).forget(&key);
                if let Some(d) = requeue {
                    queue(&ctx).add_after(key, d);
                }
            }
            Err(e) => {
                tracing::warn!(controller = name, object = %format!("{}/{}", key.0, key.1), error = %e.message, "reconcile failed; retrying");
                queue(&ctx).retry(key);
            }
        }
    }
}

macro_rules! informer {
    ($ctx:expr, $field:ident, $route:path) => {{
        let from = cache::relist(&$ctx, &$ctx.$field, $route)
            .with_context(|| format!("listing {}", $ctx.$field.store_name))?;
        crate::exec::spawn(cache::follow($ctx.clone(), |c| &c.$field, $route, from));
    }};
}

/// Fills the caches and starts every loop.
pub fn spawn(api: Arc<Api>, config: Flags) -> Result<()> {
    let ctx = Arc::new(Ctx {
        api,
        config,
        pods: Cache::new("pods"),
        nodes: Cache::new("nodes"),
        leases: Cache::new("coordination.k8s.io/leases"),
        replicasets: Cache::new("apps/replicasets"),
        deployments: Cache::new("apps/deployments"),
        daemonsets: Cache::new("apps/daemonsets"),
        jobs: Cache::new("batch/jobs"),
        services: Cache::new("services"),
        endpoints: Cache::new("endpoints"),
        queues: Queues::default(),
        sched: Mutex::new(scheduler::State::default()),
        events: events::Recorder::default(),
    });
    // Nodes before pods, so the scheduler knows them before the first decision.
    informer!(ctx, nodes, route::node);
    informer!(ctx, leases, route::lease);
    informer!(ctx, pods, route::pod);
    informer!(ctx, replicasets, route::replicaset);
    informer!(ctx, deployments, route::deployment);
    informer!(ctx, daemonsets, route::daemonset);
    informer!(ctx, jobs, route::job);
    informer!(ctx, services, route::service);
    informer!(ctx, endpoints, route::endpoints);

    let on = |name| ctx.config.controllers.on(name);
    crate::exec::spawn(events::run(ctx.clone()));
    if on("scheduler") {
        crate::exec::spawn(scheduler::run(ctx.clone()));
        crate::exec::spawn(scheduler::retry_loop(ctx.clone()));
    }
    if on("replicaset") {
        crate::exec::spawn(worker(
            ctx.clone(),
            "replicaset",
            |c| &c.queues.replicasets,
            workloads::replicaset,
        ));
    }
    if on("deployment") {
        crate::exec::spawn(worker(
            ctx.clone(),
            "deployment",
            |c| &c.queues.deployments,
            workloads::deployment,
        ));
    }
    if on("daemonset") {
        crate::exec::spawn(worker(
            ctx.clone(),
            "daemonset",
            |c| &c.queues.daemonsets,
            workloads::daemonset,
        ));
    }
    if on("job") {
        crate::exec::spawn(worker(
            ctx.clone(),
            "job",
            |c| &c.queues.jobs,
            workloads::job,
        ));
    }
    if on("endpoint") {
        crate::exec::spawn(worker(
            ctx.clone(),
            "endpoints",
            |c| &c.queues.endpoints,
            endpoints::reconcile,
        ));
    }
    if on("nodelifecycle") || on("nodeipam") {
        crate::exec::spawn(nodes::run(ctx.clone()));
        ctx.queues.nodes.add(nodes::key());
    }
    Ok(())
}
