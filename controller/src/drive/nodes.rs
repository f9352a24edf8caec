//! Node lifecycle and pod CIDRs: one pass over all nodes and leases (and the pods of the
//! nodes it asks about) whenever a node or lease changes (and every few seconds): Ready
//! from lease renewals, the unreachable `NoExecute` taint after the grace period,
//! evictions after `tolerationSeconds`, and a `/24` of the cluster CIDR for each node
//! without one.

use super::Ctx;
use super::write;
use flotilla_controllers::allocators;
use flotilla_controllers::node_lifecycle::NodeLifecycle;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;
use std::time::Duration;

/// The single key of the node pass.
pub fn key() -> super::cache::ObjKey {
    (String::new(), "nodes".to_owned())
}

/// How often the pass runs without any change.
const TICK: Duration = Duration::from_secs(5);

/// Runs the node pass forever.
pub async fn run(ctx: Arc<Ctx>) {
    let mut lifecycle = NodeLifecycle::new(ctx.config.lifecycle());
    let q = &ctx.queues.nodes;
    loop {
        futures_lite::future::or(
            async {
                q.next().await;
            },
            async {
                smol::Timer::after(TICK).await;
            },
        )
        .await;
        // One pass covers every queued change.
        smol::Timer::after(Duration::from_millis(20)).await;
        while q.try_next().is_some() {}
        let nodes: Vec<_> = ctx.nodes.list().iter().map(|n| (**n).clone()).collect();
        let leases: Vec<_> = ctx.leases.list().iter().map(|l| (**l).clone()).collect();
        // Pods become transient Pods only for a node the pass asks about.
        let pods_on = |node: &str| -> Vec<Pod> {
            ctx.pods
                .list()
                .iter()
                .filter(|p| p.node_name.as_deref() == Some(node))
                .map(|p| p.to_pod(true))
                .collect()
        };
        let mut actions = Vec::new();
        if ctx.config.controllers.on("nodelifecycle") {
            actions = lifecycle.reconcile_by_node(&nodes, &leases, &pods_on, Timestamp::now());
        }
        if ctx.config.controllers.on("nodeipam") {
            match allocators::assign_pod_cidrs(&ctx.config.cluster_cidr, 24, &nodes) {
                Ok(a) => actions.extend(a),
                Err(e) => tracing::warn!(error = %e, "cannot assign pod CIDRs"),
            }
        }
        match write::execute(&ctx, None, actions).await {
            Ok(out) => {
                write::settle(&ctx, &out).await;
                q.forget(&key());
                if let Some(d) = out.requeue {
                    q.add_after(key(), d);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "node lifecycle pass failed; retrying");
                q.retry(key());
            }
        }
    }
}
