//! The driver of the scheduler and controllers (kube-rs's model): typed caches fed by
//! store watches ([`cache`]), work queues of keys with back-off ([`queue`]), routing of
//! every change to the keys it concerns ([`route`]), one loop per controller calling the
//! pure decision functions of `flotilla-scheduler` and `flotilla-controllers`, and an
//! executor that writes their actions through the API layer ([`write`], [`events`]).
//!
//! Settings come from the environment (bad values stop the controller at start):
//! `FLOTILLA_NODE_MONITOR_GRACE_PERIOD` (seconds a node may stay silent before it turns
//! Unknown, default 40), `FLOTILLA_DEFAULT_TOLERATION_SECONDS` (how long pods stay on an
//! unreachable node, default 300), `FLOTILLA_CLUSTER_CIDR` (pod CIDRs, default
//! 10.42.0.0/16, a /24 per node). ClusterIPs and NodePorts are allocated at admission
//! by `loops::ipalloc`.

pub mod cache;
pub mod endpoints;
pub mod events;
pub mod nodes;
pub mod queue;
pub mod route;
pub mod scheduler;
pub mod workloads;
pub mod write;

use crate::api::Api;
use crate::api::status::ApiResult;
use anyhow::{Context, Result};
use cache::{Cache, ObjKey};
use flotilla_controllers::node_lifecycle;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use queue::Queue;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Timings and ranges.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node grace period and default toleration seconds.
    pub lifecycle: node_lifecycle::Config,
    /// Where node pod CIDRs come from.
    pub cluster_cidr: String,
}

impl Config {
    /// The configuration from the environment (see the module docs).
    pub fn from_env() -> Result<Config> {
        let mut lifecycle = node_lifecycle::Config::default();
        if let Some(v) = env_u64("FLOTILLA_NODE_MONITOR_GRACE_PERIOD")? {
            lifecycle.grace_period = Duration::from_secs(v);
        }
        if let Some(v) = env_u64("FLOTILLA_DEFAULT_TOLERATION_SECONDS")? {
            lifecycle.default_toleration_seconds = v as i64;
        }
        let cluster_cidr = std::env::var("FLOTILLA_CLUSTER_CIDR")
            .unwrap_or_else(|_| flotilla_controllers::allocators::DEFAULT_CLUSTER_CIDR.to_owned());
        flotilla_controllers::allocators::Cidr::parse(&cluster_cidr)
            .map_err(|e| anyhow::anyhow!("FLOTILLA_CLUSTER_CIDR={cluster_cidr:?}: {e}"))?;
        Ok(Config {
            lifecycle,
            cluster_cidr,
        })
    }
}

fn env_u64(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a whole number of seconds")),
        Err(_) => Ok(None),
    }
}

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
    pub config: Config,
    pub pods: Cache<Pod>,
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
pub fn spawn(api: Arc<Api>) -> Result<()> {
    let config = Config::from_env()?;
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

    crate::exec::spawn(scheduler::run(ctx.clone()));
    crate::exec::spawn(scheduler::retry_loop(ctx.clone()));
    crate::exec::spawn(worker(
        ctx.clone(),
        "replicaset",
        |c| &c.queues.replicasets,
        workloads::replicaset,
    ));
    crate::exec::spawn(worker(
        ctx.clone(),
        "deployment",
        |c| &c.queues.deployments,
        workloads::deployment,
    ));
    crate::exec::spawn(worker(
        ctx.clone(),
        "daemonset",
        |c| &c.queues.daemonsets,
        workloads::daemonset,
    ));
    crate::exec::spawn(worker(
        ctx.clone(),
        "job",
        |c| &c.queues.jobs,
        workloads::job,
    ));
    crate::exec::spawn(worker(
        ctx.clone(),
        "endpoints",
        |c| &c.queues.endpoints,
        endpoints::reconcile,
    ));
    crate::exec::spawn(nodes::run(ctx.clone()));
    ctx.queues.nodes.add(nodes::key());
    Ok(())
}
