//! The executor: turns controllers' [`Action`]s into writes through the API layer's own
//! create/update/delete functions (defaulting, validation and admission apply), in order.
//! Runs of pod creations, deletions and bindings go out concurrently so the store's group
//! commit batches them.

use super::Ctx;
use super::cache::controller_of;
use super::events;
use crate::api::binding;
use crate::api::meta::{self, metadata_mut};
use crate::api::objects::{
    DeleteOpts, WriteOpts, create_object, delete_object, key_of, update_object,
};
use crate::api::query::Query;
use crate::api::registry::{self, Resource};
use crate::api::status::{ApiError, ApiResult};
use flotilla_controllers::{Action, Status};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The field manager of controller writes.
pub const MANAGER: &str = "kube-controller-manager";
/// The field manager of bindings and scheduling conditions.
pub const SCHEDULER: &str = "default-scheduler";

/// The object a reconcile was about (for `UpdateStatus`).
#[derive(Clone)]
pub struct Subject {
    pub res: &'static Resource,
    pub namespace: String,
    pub name: String,
}

/// What executing a list of actions left to do.
#[derive(Default)]
pub struct Outcome {
    /// The earliest requeue asked for.
    pub requeue: Option<Duration>,
    /// Highest revision written per store resource (to wait for the caches).
    pub written: Vec<(&'static str, u64)>,
}

impl Outcome {
    fn wrote(&mut self, res: &'static Resource, obj: &Value) {
        let Some(rv) = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(meta::parse_rv)
        else {
            return;
        };
        let name = store_name(res);
        match self.written.iter_mut().find(|(n, _)| *n == name) {
            Some((_, r)) => *r = (*r).max(rv),
            None => self.written.push((name, rv)),
        }
    }

    fn merge(&mut self, other: Outcome) {
        if let Some(d) = other.requeue {
            self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
        }
        for (n, rv) in other.written {
            match self.written.iter_mut().find(|(m, _)| *m == n) {
                Some((_, r)) => *r = (*r).max(rv),
                None => self.written.push((n, rv)),
            }
        }
    }
}

/// The registry entry of a core resource.
pub fn resource(group: &str, plural: &str) -> &'static Resource {
    registry::find(group, "v1", plural).expect("a built-in resource")
}

fn store_name(res: &'static Resource) -> &'static str {
    match (res.group, res.plural) {
        ("", p) => p,
        ("apps", "deployments") => "apps/deployments",
        ("apps", "replicasets") => "apps/replicasets",
        ("apps", "daemonsets") => "apps/daemonsets",
        ("batch", "jobs") => "batch/jobs",
        _ => "other",
    }
}

fn opts<'a>(q: &'a Query, manager: &str) -> WriteOpts<'a> {
    WriteOpts {
        query: q,
        manager: manager.to_owned(),
        operation: "Update",
        fields: None,
    }
}

fn ok_if_gone<T: Default>(r: ApiResult<T>) -> ApiResult<T> {
    match r {
        Err(e) if e.code == 404 => Ok(T::default()),
        r => r,
    }
}

/// Creates an object through the API layer.
pub async fn create(
    ctx: &Ctx,
    res: &'static Resource,
    namespace: &str,
    obj: Value,
    manager: &str,
) -> ApiResult<Value> {
    let q = Query::default();
    let ns = Some(namespace).filter(|n| !n.is_empty());
    create_object(&ctx.api, res, ns, obj, &opts(&q, manager), &mut Vec::new()).await
}

/// Reads the object, lets `f` change it (returning false leaves it be) and writes it
/// back (to `sub`, e.g. `status`), retrying on conflicts. `None` when it is gone or
/// `f` declined.
pub async fn modify(
    ctx: &Ctx,
    res: &'static Resource,
    namespace: &str,
    name: &str,
    sub: Option<&str>,
    manager: &str,
    mut f: impl FnMut(&mut Value) -> bool,
) -> ApiResult<Option<Value>> {
    let key = key_of(res, Some(namespace), name);
    let q = Query::default();
    let mut last = None;
    for _ in 0..5 {
        let Some(old) = ctx.api.store.get(&key)? else {
            return Ok(None);
        };
        let mut v = meta::decode(&old.value, old.revision);
        if !f(&mut v) {
            return Ok(None);
        }
        match update_object(
            &ctx.api,
            res,
            sub,
            &old,
            v,
            Some(old.revision),
            &opts(&q, manager),
            &mut Vec::new(),
        )
        .await
        {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.code == 409 => last = Some(e),
            Err(e) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::internal("too many conflicts")))
}

/// Replaces an object's metadata and spec with `new`, if it still is at the
/// resourceVersion `new` carries (a conflict makes the reconcile retry).
async fn replace(ctx: &Ctx, res: &'static Resource, new: Value) -> ApiResult<Value> {
    let ns = new["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let name = meta::name(&new).to_owned();
    let expected = new["metadata"]["resourceVersion"]
        .as_str()
        .and_then(meta::parse_rv);
    let Some(old) = ctx.api.store.get(&key_of(res, Some(&ns), &name))? else {
        return Err(ApiError::not_found(res.group, res.plural, &name));
    };
    let q = Query::default();
    update_object(
        &ctx.api,
        res,
        None,
        &old,
        new,
        expected,
        &opts(&q, MANAGER),
        &mut Vec::new(),
    )
    .await
}

/// Deletes an object (background propagation); gone already is fine.
pub async fn delete(
    ctx: &Ctx,
    res: &'static Resource,
    namespace: &str,
    name: &str,
) -> ApiResult<()> {
    let o = DeleteOpts {
        grace: None,
        policy: Some("Background".into()),
        uid: None,
        rv: None,
        dry_run: false,
    };
    ok_if_gone(
        delete_object(&ctx.api, res, &key_of(res, Some(namespace), name), &o)
            .await
            .map(|_| ()),
    )
}

/// Binds a pod as kube-scheduler's POST of a Binding does, through the API layer's own
/// binding path (one durable write of the stored pod; no request round trip). Like
/// kube-scheduler's binder it names the uid of the pod it decided for (from the cache),
/// so a pod deleted and created again under the same name is not bound in its stead.
pub async fn bind(ctx: &Arc<Ctx>, namespace: &str, name: &str, node: &str) -> ApiResult<()> {
    let uid = ctx
        .pods
        .get(&(namespace.to_owned(), name.to_owned()))
        .and_then(|p| p.uid.clone());
    let b = binding::Binding {
        uid: uid.as_deref(),
        ..binding::Binding::new(namespace, name, node, SCHEDULER)
    };
    binding::bind_pod(&ctx.api, &b).await.map(|_| ())
}

fn set_condition(list: &mut Value, cond: Value) -> bool {
    if !list.is_array() {
        *list = json!([]);
    }
    let arr = list.as_array_mut().expect("array");
    let ty = cond["type"].clone();
    match arr.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            let same = c["status"] == cond["status"]
                && c["reason"] == cond["reason"]
                && c["message"] == cond["message"];
            if same && cond["type"] != "Ready" {
                return false;
            }
            *c = cond;
        }
        None => arr.push(cond),
    }
    true
}

fn status_value(s: &Status) -> Value {
    match s {
        Status::Deployment(s) => serde_json::to_value(s),
        Status::ReplicaSet(s) => serde_json::to_value(s),
        Status::DaemonSet(s) => serde_json::to_value(s),
        Status::Job(s) => serde_json::to_value(s),
    }
    .expect("statuses serialize")
}

/// The name of a new ReplicaSet a Deployment wanted is taken (upstream's
/// `getNewReplicaSet`): `Ok` when it is that Deployment's, with its template (an earlier
/// pass created it before the cache showed it). Otherwise a hash collision raises the
/// Deployment's `status.collisionCount` (once the cache shows it, the next pass names
/// the ReplicaSet anew), or the Deployment changed since; either way the reconcile fails
/// with `taken` so the rest of its actions are not run and it runs again.
async fn replicaset_name_taken(
    ctx: &Ctx,
    tried: &k8s_openapi::api::apps::v1::ReplicaSet,
    taken: ApiError,
) -> ApiResult<()> {
    use flotilla_controllers::deployment::{self, NameTaken};
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let rs_res = resource("apps", "replicasets");
    let d_res = resource("apps", "deployments");
    let ns = tried.metadata.namespace.as_deref().unwrap_or("");
    let name = tried.metadata.name.as_deref().unwrap_or("");
    let owner = controller_of(tried.metadata.owner_references.as_deref())
        .filter(|r| r.kind == "Deployment");
    let (Some(owner), Some(stored)) = (owner, ctx.api.store.get(&key_of(rs_res, Some(ns), name))?)
    else {
        return Err(taken);
    };
    let existing: ReplicaSet = serde_json::from_value(meta::decode(&stored.value, stored.revision))
        .map_err(|e| ApiError::internal(format!("stored ReplicaSet {ns}/{name}: {e}")))?;
    let mut decision = None;
    let written = modify(ctx, d_res, ns, &owner.name, Some("status"), MANAGER, |v| {
        let Ok(d) = serde_json::from_value::<Deployment>(v.clone()) else {
            return false;
        };
        let n = deployment::name_taken(&d, tried, &existing);
        decision = Some(n);
        let NameTaken::Collision(count) = n else {
            return false;
        };
        v["status"]["collisionCount"] = json!(count);
        true
    })
    .await?;
    match (decision, written) {
        (Some(NameTaken::Ours), _) => Ok(()),
        (Some(NameTaken::Collision(count)), Some(d)) => {
            let mut o = Outcome::default();
            o.wrote(d_res, &d);
            settle(ctx, &o).await;
            Err(ApiError::new(
                409,
                "AlreadyExists",
                format!(
                    "replicasets.apps \"{name}\" already exists with another template or \
                     owner (hash collision); collisionCount of deployment {ns}/{} is now {count}",
                    owner.name
                ),
            ))
        }
        _ => Err(taken),
    }
}

/// Runs one action.
async fn one(
    ctx: &Arc<Ctx>,
    subject: Option<&Subject>,
    action: Action,
    out: &mut Outcome,
) -> ApiResult<()> {
    let pods = resource("", "pods");
    let nodes = resource("", "nodes");
    match action {
        Action::CreatePod { pod, owner } => {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let v = serde_json::to_value(&*pod).expect("pods serialize");
            let created = create(ctx, pods, &ns, v, MANAGER).await?;
            out.wrote(pods, &created);
            let ev = flotilla_controllers::Event::created_pod(owner, meta::name(&created));
            events::record(ctx, ev, MANAGER);
        }
        Action::BindPod {
            namespace,
            name,
            node,
        } => bind(ctx, &namespace, &name, &node).await?,
        Action::AdoptPod {
            namespace,
            name,
            owner,
        } => {
            // The owner is read again from the store right before each write attempt
            // (upstream's RecheckDeletionTimestamp): one gone, replaced or being deleted
            // adopts nothing — the garbage collector may be orphaning these pods.
            let value = serde_json::to_value(&owner).expect("owner refs serialize");
            let mut recheck = Ok(());
            let r = modify(ctx, pods, &namespace, &name, None, MANAGER, |v| {
                let refs = &mut metadata_mut(v)
                    .entry("ownerReferences")
                    .or_insert_with(|| json!([]));
                let Some(refs) = refs.as_array_mut() else {
                    return false;
                };
                if refs.iter().any(|r| r["controller"] == true) {
                    return false;
                }
                match crate::loops::gc::may_adopt(&ctx.api, &namespace, &owner) {
                    Ok(true) => {}
                    Ok(false) => return false,
                    Err(e) => {
                        recheck = Err(e);
                        return false;
                    }
                }
                refs.push(value.clone());
                true
            })
            .await?;
            recheck?;
            if let Some(v) = r {
                out.wrote(pods, &v);
            }
        }
        Action::ReleasePod {
            namespace,
            name,
            owner_uid,
        } => {
            let r = modify(ctx, pods, &namespace, &name, None, MANAGER, |v| {
                let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() else {
                    return false;
                };
                let before = refs.len();
                refs.retain(|r| r["uid"] != owner_uid.as_str());
                let changed = refs.len() != before;
                if refs.is_empty() {
                    metadata_mut(v).remove("ownerReferences");
                }
                changed
            })
            .await?;
            if let Some(v) = r {
                out.wrote(pods, &v);
            }
        }
        Action::DeletePod { namespace, name } => delete(ctx, pods, &namespace, &name).await?,
        Action::SetPodCondition {
            namespace,
            name,
            condition,
        } => {
            let cond = serde_json::to_value(&condition).expect("conditions serialize");
            let manager = if condition.type_ == "PodScheduled" {
                SCHEDULER
            } else {
                MANAGER
            };
            binding::set_pod_condition(&ctx.api, &namespace, &name, &cond, manager).await?;
        }
        Action::CreateReplicaSet(rs) => {
            let res = resource("apps", "replicasets");
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            let v = serde_json::to_value(&*rs).expect("replicasets serialize");
            match create(ctx, res, &ns, v, MANAGER).await {
                Ok(created) => out.wrote(res, &created),
                Err(e) if e.code == 409 => replicaset_name_taken(ctx, &rs, e).await?,
                Err(e) => return Err(e),
            }
        }
        Action::UpdateReplicaSet(rs) => {
            let res = resource("apps", "replicasets");
            // Adopting (the cached ReplicaSet has no controller, the update adds one): the
            // owner is read again from the store first (upstream's
            // RecheckDeletionTimestamp). One gone, replaced or being deleted adopts
            // nothing and the reconcile stops; the write itself is conditional on the
            // cached resourceVersion, so a ReplicaSet changed since is not adopted either.
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            let name = rs.metadata.name.clone().unwrap_or_default();
            let cached = ctx.replicasets.get(&(ns.clone(), name.clone()));
            if let (Some(owner), Some(cached)) = (
                controller_of(rs.metadata.owner_references.as_deref()),
                cached,
            ) && controller_of(cached.metadata.owner_references.as_deref()).is_none()
                && !crate::loops::gc::may_adopt(&ctx.api, &ns, owner)?
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "not adopting replicaset {ns}/{name}: {} {ns}/{} (uid {}) is gone or \
                         being deleted",
                        owner.kind, owner.name, owner.uid
                    ),
                ));
            }
            let v = replace(ctx, res, serde_json::to_value(&*rs).expect("serialize")).await?;
            out.wrote(res, &v);
        }
        Action::DeleteReplicaSet { namespace, name } => {
            delete(ctx, resource("apps", "replicasets"), &namespace, &name).await?
        }
        Action::UpdateDeployment(d) => {
            let res = resource("apps", "deployments");
            let v = replace(ctx, res, serde_json::to_value(&*d).expect("serialize")).await?;
            out.wrote(res, &v);
        }
        Action::DeleteJob { namespace, name } => {
            delete(ctx, resource("batch", "jobs"), &namespace, &name).await?
        }
        Action::UpdateStatus(status) => {
            let Some(s) = subject else {
                return Err(ApiError::internal("a status update without its object"));
            };
            let status = status_value(&status);
            let r = modify(
                ctx,
                s.res,
                &s.namespace,
                &s.name,
                Some("status"),
                MANAGER,
                |v| {
                    if v["status"] == status {
                        return false;
                    }
                    v["status"] = status.clone();
                    true
                },
            )
            .await?;
            if let Some(v) = r {
                out.wrote(s.res, &v);
            }
        }
        Action::SetNodeCondition { node, condition } => {
            let cond = serde_json::to_value(&condition).expect("conditions serialize");
            let r = modify(ctx, nodes, "", &node, Some("status"), MANAGER, |v| {
                set_condition(&mut v["status"]["conditions"], cond.clone())
            })
            .await?;
            if let Some(v) = r {
                out.wrote(nodes, &v);
            }
        }
        Action::AddTaint { node, taint } => {
            let t = serde_json::to_value(&taint).expect("taints serialize");
            let r = modify(ctx, nodes, "", &node, None, MANAGER, |v| {
                if !v["spec"]["taints"].is_array() {
                    v["spec"]["taints"] = json!([]);
                }
                let list = v["spec"]["taints"].as_array_mut().expect("array");
                if list
                    .iter()
                    .any(|x| x["key"] == t["key"] && x["effect"] == t["effect"])
                {
                    return false;
                }
                list.push(t.clone());
                true
            })
            .await?;
            if let Some(v) = r {
                out.wrote(nodes, &v);
            }
        }
        Action::RemoveTaint { node, key, effect } => {
            let r = modify(ctx, nodes, "", &node, None, MANAGER, |v| {
                let Some(list) = v["spec"]["taints"].as_array_mut() else {
                    return false;
                };
                let before = list.len();
                list.retain(|x| !(x["key"] == key.as_str() && x["effect"] == effect.as_str()));
                let changed = list.len() != before;
                if list.is_empty()
                    && let Some(spec) = v["spec"].as_object_mut()
                {
                    spec.remove("taints");
                }
                changed
            })
            .await?;
            if let Some(v) = r {
                out.wrote(nodes, &v);
            }
        }
        Action::SetPodCidr { node, cidr } => {
            let r = modify(ctx, nodes, "", &node, None, MANAGER, |v| {
                if v["spec"]["podCIDR"].as_str().is_some_and(|c| !c.is_empty()) {
                    return false;
                }
                v["spec"]["podCIDR"] = json!(cidr);
                v["spec"]["podCIDRs"] = json!([cidr]);
                true
            })
            .await?;
            if let Some(v) = r {
                out.wrote(nodes, &v);
            }
        }
        Action::PutEndpoints(ep) => {
            let res = resource("", "endpoints");
            let ns = ep.metadata.namespace.clone().unwrap_or_default();
            let name = ep.metadata.name.clone().unwrap_or_default();
            let mut want = serde_json::to_value(&*ep).expect("endpoints serialize");
            if let Some(m) = want["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            let r = modify(ctx, res, &ns, &name, None, MANAGER, |v| {
                let mut next = want.clone();
                next["metadata"] = v["metadata"].clone();
                next["metadata"]["labels"] = want["metadata"]["labels"].clone();
                if next["metadata"]["labels"].is_null()
                    && let Some(m) = next["metadata"].as_object_mut()
                {
                    m.remove("labels");
                }
                *v = next;
                true
            })
            .await?;
            match r {
                Some(v) => out.wrote(res, &v),
                None => match create(ctx, res, &ns, want, MANAGER).await {
                    Ok(v) => out.wrote(res, &v),
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Action::DeleteEndpoints { namespace, name } => {
            delete(ctx, resource("", "endpoints"), &namespace, &name).await?
        }
        Action::Event(ev) => events::record(ctx, ev, MANAGER),
        Action::Requeue(d) => {
            out.requeue = Some(out.requeue.map_or(d, |r| r.min(d)));
        }
    }
    Ok(())
}

/// How many pod creations, deletions or bindings go out at once.
const CONCURRENT: usize = 64;

fn batchable(a: &Action) -> bool {
    matches!(
        a,
        Action::CreatePod { .. } | Action::DeletePod { .. } | Action::BindPod { .. }
    )
}

/// Executes the actions in order (runs of pod creations/deletions/bindings concurrently).
/// Stops at the first failure and returns it; the caller retries the whole reconcile.
pub async fn execute(
    ctx: &Arc<Ctx>,
    subject: Option<&Subject>,
    actions: Vec<Action>,
) -> ApiResult<Outcome> {
    let mut out = Outcome::default();
    let mut it = actions.into_iter().peekable();
    while let Some(a) = it.next() {
        if !batchable(&a) || !it.peek().is_some_and(batchable) {
            one(ctx, subject, a, &mut out).await?;
            continue;
        }
        let mut run = vec![a];
        while run.len() < CONCURRENT && it.peek().is_some_and(batchable) {
            run.push(it.next().expect("peeked"));
        }
        let tasks: Vec<_> = run
            .into_iter()
            .map(|a| {
                let ctx = ctx.clone();
                crate::exec::executor().spawn(async move {
                    let mut o = Outcome::default();
                    one(&ctx, None, a, &mut o).await.map(|_| o)
                })
            })
            .collect();
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(o) => out.merge(o),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
    }
    Ok(out)
}

/// Waits until the caches hold everything `out` wrote.
pub async fn settle(ctx: &Ctx, out: &Outcome) {
    for (name, rv) in &out.written {
        ctx.wait_for(name, *rv).await;
    }
}
