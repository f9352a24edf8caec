//! Routing: which work-queue keys a change of each resource concerns (the watches'
//! event handlers). A pod wakes its controller owner, the scheduler when unbound, and
//! its namespace's services; a ReplicaSet wakes itself and its Deployment (an orphan: those that may adopt it); a node wakes
//! the scheduler's view, every DaemonSet and the node pass.

use super::Ctx;
use super::cache::{ObjKey, controller_of};
use super::podrec::PodRecord;
use super::{nodes, scheduler};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn key(meta: &ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn either<'a, T>(old: Option<&'a T>, new: Option<&'a T>) -> impl Iterator<Item = &'a T> {
    old.into_iter().chain(new)
}

/// What of a pod its services' Endpoints depend on.
fn endpoint_view(p: &PodRecord) -> impl PartialEq + '_ {
    (
        &p.labels,
        p.deletion_timestamp.is_some(),
        &p.pod_ip,
        &p.phase,
        p.ready.as_ref().map(|c| &c.status),
        &p.node_name,
    )
}

/// A pod changed.
pub fn pod(ctx: &Ctx, old: Option<&PodRecord>, new: Option<&PodRecord>) {
    scheduler::on_pod(ctx, old, new);
    let mut orphan = false;
    for p in either(old, new) {
        match p.controller() {
            Some(r) => {
                let k = (p.namespace.as_ref().to_owned(), r.name.clone());
                match r.kind.as_str() {
                    "ReplicaSet" => ctx.queues.replicasets.add(k),
                    "DaemonSet" => ctx.queues.daemonsets.add(k),
                    "Job" => ctx.queues.jobs.add(k),
                    _ => {}
                }
            }
            None => orphan = true,
        }
    }
    let some = new.or(old).expect("a change has a side");
    let ns = &*some.namespace;
    if orphan {
        // ReplicaSets adopt matching orphans.
        for rs in ctx.replicasets.list_ns(ns) {
            ctx.queues.replicasets.add(key(&rs.metadata));
        }
    }
    let endpoints_changed = match (old, new) {
        (Some(a), Some(b)) => endpoint_view(a) != endpoint_view(b),
        _ => true,
    };
    if endpoints_changed {
        for svc in ctx.services.list_ns(ns) {
            if svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some()
            {
                ctx.queues.endpoints.add(key(&svc.metadata));
            }
        }
    }
}

/// A node changed.
pub fn node(ctx: &Ctx, old: Option<&Node>, new: Option<&Node>) {
    scheduler::on_node(ctx, old, new);
    // Heartbeats alone (condition times) concern neither DaemonSets nor the node pass.
    let placement = |n: &Node| {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        (n.metadata.labels.clone(), n.spec.clone(), ready)
    };
    if let (Some(a), Some(b)) = (old, new)
        && placement(a) == placement(b)
    {
        return;
    }
    for ds in ctx.daemonsets.list() {
        ctx.queues.daemonsets.add(key(&ds.metadata));
    }
    ctx.queues.nodes.add(nodes::key());
}

/// A lease changed (a node's heartbeat). Renewals of healthy nodes need no pass right
/// away (the periodic pass measures silence); a renewal of a node that is not Ready or
/// carries a `NoExecute` taint brings it back at once.
pub fn lease(ctx: &Ctx, old: Option<&Lease>, new: Option<&Lease>) {
    let Some(l) = new.or(old) else { return };
    let name = l.metadata.name.clone().unwrap_or_default();
    let healthy = ctx.nodes.get(&(String::new(), name)).is_some_and(|n| {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let no_execute = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"));
        ready && !no_execute
    });
    if !healthy || new.is_none() {
        ctx.queues.nodes.add(nodes::key());
    }
}

/// A ReplicaSet changed: it, its Deployment, and — while it is an orphan — the
/// Deployments that may adopt it.
pub fn replicaset(ctx: &Ctx, old: Option<&ReplicaSet>, new: Option<&ReplicaSet>) {
    for rs in either(old, new) {
        ctx.queues.replicasets.add(key(&rs.metadata));
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        if let Some(r) = controller_of(rs.metadata.owner_references.as_deref())
            && r.kind == "Deployment"
        {
            ctx.queues.deployments.add((ns.clone(), r.name.clone()));
        }
    }
    if let Some(rs) = new {
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        for d in ctx.deployments.list_ns(ns) {
            if flotilla_controllers::deployment::adoptable(&d, rs) {
                ctx.queues.deployments.add(key(&d.metadata));
            }
        }
    }
}

/// A Deployment changed.
pub fn deployment(ctx: &Ctx, old: Option<&Deployment>, new: Option<&Deployment>) {
    if let Some(d) = new.or(old) {
        ctx.queues.deployments.add(key(&d.metadata));
    }
}

/// A DaemonSet changed.
pub fn daemonset(ctx: &Ctx, old: Option<&DaemonSet>, new: Option<&DaemonSet>) {
    if let Some(d) = new.or(old) {
        ctx.queues.daemonsets.add(key(&d.metadata));
    }
}

/// A Job changed.
pub fn job(ctx: &Ctx, old: Option<&Job>, new: Option<&Job>) {
    if let Some(j) = new.or(old) {
        ctx.queues.jobs.add(key(&j.metadata));
    }
}

/// A Service changed (its Endpoints follow, or go with it).
pub fn service(ctx: &Ctx, old: Option<&Service>, new: Option<&Service>) {
    if let Some(s) = new.or(old) {
        ctx.queues.endpoints.add(key(&s.metadata));
    }
}

/// An Endpoints object changed: put it back in line if its service exists.
pub fn endpoints(ctx: &Ctx, old: Option<&Endpoints>, new: Option<&Endpoints>) {
    if let Some(e) = new.or(old) {
        let k = key(&e.metadata);
        if ctx.services.get(&k).is_some() {
            ctx.queues.endpoints.add(k);
        }
    }
}
