//! Garbage collection and namespace deletion, one reconciler woken after deletions
//! (and every 30 s): dependents whose owners are gone are deleted (background),
//! owners in foreground deletion wait for their dependents, owners marked `orphan`
//! (propagationPolicy=Orphan) first have the references to them stripped from their
//! dependents and then go, and terminating namespaces are emptied and then removed.
//! Also the fresh owner check that adoption makes (upstream's RecheckDeletionTimestamp).

use crate::api::Api;
use crate::api::meta;
use crate::api::objects::{
    DeleteOpts, FOREGROUND_FINALIZER, ORPHAN_FINALIZER, delete_object, key_of,
};
use crate::api::registry::{RESOURCES, Resource};
use crate::api::status::{ApiError, ApiResult};
use flotilla_store::{Key, StoreError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What the collector needs to know of one object (decoded without the rest of
/// the object, so a pass over 10,000 pods stays small).
struct Entry {
    res: &'static Resource,
    key: Key,
    uid: String,
    owners: Vec<String>,
    deleting: bool,
    foreground: bool,
    orphan: bool,
    no_finalizers: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SlimMeta {
    uid: String,
    deletion_timestamp: Option<String>,
    finalizers: Vec<String>,
    owner_references: Vec<SlimOwner>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SlimOwner {
    uid: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Slim {
    metadata: SlimMeta,
}

/// Runs the loop forever.
pub async fn run(api: Arc<Api>, wake: smol::channel::Receiver<()>) {
    loop {
        for _ in 0..20 {
            match pass(&api).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e.message, "garbage collection pass failed");
                    break;
                }
            }
        }
        let timer = async {
            smol::Timer::after(Duration::from_secs(30)).await;
        };
        let woken = async {
            let _ = wake.recv().await;
        };
        futures_lite::future::or(woken, timer).await;
        // Coalesce bursts of deletions into one pass.
        smol::Timer::after(Duration::from_millis(50)).await;
        while wake.try_recv().is_ok() {}
    }
}

fn all_objects(api: &Api) -> ApiResult<Vec<Entry>> {
    let mut out = Vec::new();
    for res in RESOURCES {
        let store_name = res.store_name();
        let mut after: Option<Key> = None;
        loop {
            let page = api
                .store
                .list(&store_name, None, after.as_ref(), Some(500))?;
            for o in &page.items {
                let slim: Slim = serde_json::from_slice(&o.value).unwrap_or_default();
                let m = slim.metadata;
                out.push(Entry {
                    res,
                    key: o.key.clone(),
                    uid: m.uid,
                    owners: m.owner_references.into_iter().map(|r| r.uid).collect(),
                    deleting: m.deletion_timestamp.is_some(),
                    foreground: m.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER),
                    orphan: m.finalizers.iter().any(|f| f == ORPHAN_FINALIZER),
                    no_finalizers: m.finalizers.is_empty(),
                });
            }
            if !page.more {
                break;
            }
            after = page.items.last().map(|o| o.key.clone());
        }
    }
    Ok(out)
}

/// One reconcile pass; returns whether it changed anything.
async fn pass(api: &Api) -> ApiResult<bool> {
    let objs = all_objects(api)?;
    let by_uid: HashMap<&str, &Entry> = objs.iter().map(|e| (e.uid.as_str(), e)).collect();
    let referenced: HashSet<&str> = objs
        .iter()
        .flat_map(|e| e.owners.iter().map(String::as_str))
        .collect();
    let mut changed = false;
    let background = DeleteOpts {
        grace: None,
        policy: Some("Background".into()),
        uid: None,
        rv: None,
        dry_run: false,
    };
    let foreground = DeleteOpts {
        policy: Some("Foreground".into()),
        ..background.clone_opts()
    };

    // Terminating namespaces: delete their contents, then finalize.
    let terminating: HashSet<&str> = objs
        .iter()
        .filter(|e| e.res.kind == "Namespace" && e.deleting)
        .map(|e| e.key.name.as_str())
        .collect();
    for ns in &terminating {
        let contents: Vec<&Entry> = objs
            .iter()
            .filter(|e| e.res.namespaced && e.key.namespace == *ns)
            .collect();
        for e in &contents {
            if !e.deleting {
                ignore_gone(delete_object(api, e.res, &e.key, &background).await)?;
                changed = true;
            } else if e.res.kind == "Pod" && e.no_finalizers {
                // Pods of a deleted namespace whose node never confirms are removed.
                let force = DeleteOpts {
                    grace: Some(0),
                    ..background.clone_opts()
                };
                ignore_gone(delete_object(api, e.res, &e.key, &force).await)?;
                changed = true;
            }
        }
        if contents.is_empty() {
            finalize_namespace(api, ns).await?;
            changed = true;
        }
    }

    // A dependent without owners is deleted as it asks itself: an `orphan` or
    // `foregroundDeletion` finalizer it carries is kept (no policy), as upstream does.
    let collect = DeleteOpts {
        policy: None,
        ..background.clone_opts()
    };
    for e in &objs {
        // Foreground deletion completes when no dependent remains.
        if e.deleting && e.foreground {
            if !referenced.contains(e.uid.as_str()) {
                remove_finalizer(api, e, FOREGROUND_FINALIZER).await?;
                changed = true;
            }
            continue;
        }
        // Orphaning: the dependents lose their reference to the owner, and only in a
        // later pass that finds none left does the owner lose its finalizer (and go).
        if e.deleting && e.orphan {
            if referenced.contains(e.uid.as_str()) {
                for d in objs.iter().filter(|d| d.owners.contains(&e.uid)) {
                    strip_owner(api, &d.key, &e.uid).await?;
                }
            } else {
                remove_finalizer(api, e, ORPHAN_FINALIZER).await?;
            }
            changed = true;
            continue;
        }
        if e.owners.is_empty() || e.deleting {
            continue;
        }
        let live: Vec<&&Entry> = e
            .owners
            .iter()
            .filter_map(|u| by_uid.get(u.as_str()))
            .collect();
        if live.is_empty() {
            ignore_gone(delete_object(api, e.res, &e.key, &collect).await)?;
            changed = true;
        } else if live.iter().all(|o| o.deleting && o.foreground) {
            ignore_gone(delete_object(api, e.res, &e.key, &foreground).await)?;
            changed = true;
        }
    }
    Ok(changed)
}

impl DeleteOpts {
    fn clone_opts(&self) -> DeleteOpts {
        DeleteOpts {
            grace: self.grace,
            policy: self.policy.clone(),
            uid: self.uid.clone(),
            rv: self.rv,
            dry_run: self.dry_run,
        }
    }
}

fn ignore_gone<T>(r: ApiResult<T>) -> ApiResult<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn remove_finalizer(api: &Api, e: &Entry, f: &str) -> ApiResult<()> {
    let Some(cur) = api.store.get(&e.key)? else {
        return Ok(());
    };
    let mut v = meta::decode(&cur.value, cur.revision);
    if v["metadata"]["uid"] != e.uid.as_str()
        || !v["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x == f))
    {
        return Ok(());
    }
    if let Some(list) = v["metadata"]["finalizers"].as_array_mut() {
        list.retain(|x| x != f);
    }
    if v["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| a.is_empty())
    {
        meta::metadata_mut(&mut v).remove("finalizers");
    }
    let r = if finalized(&v) {
        api.store
            .delete(&e.key, Some(cur.revision))
            .await
            .map(|_| ())
    } else {
        api.store
            .update(e.key.clone(), meta::encode(&v), Some(cur.revision))
            .await
            .map(|_| ())
    };
    match r {
        Ok(()) | Err(StoreError::Conflict { .. } | StoreError::NotFound) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn finalize_namespace(api: &Api, ns: &str) -> ApiResult<()> {
    let key = Key::cluster("namespaces", ns);
    let Some(cur) = api.store.get(&key)? else {
        return Ok(());
    };
    let mut v = meta::decode(&cur.value, cur.revision);
    v["spec"]["finalizers"] = json!([]);
    let r = if v["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        api.store.delete(&key, Some(cur.revision)).await.map(|_| ())
    } else {
        api.store
            .update(key, meta::encode(&v), Some(cur.revision))
            .await
            .map(|_| ())
    };
    match r {
        Ok(()) | Err(StoreError::Conflict { .. } | StoreError::NotFound) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Whether an object being deleted is done: no finalizer left, a namespace emptied
/// (no `spec.finalizers`), a pod's grace period over (its node confirmed), as the API
/// layer's update decides.
fn finalized(v: &Value) -> bool {
    let none = |l: &Value| l.as_array().is_none_or(|a| a.is_empty());
    !v["metadata"]["deletionTimestamp"].is_null()
        && none(&v["metadata"]["finalizers"])
        && none(&v["spec"]["finalizers"])
        && v["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            <= 0
}

/// Removes the owner reference to `uid` from the object at `key` (read fresh, retried
/// on conflicts); a dependent already gone is fine.
async fn strip_owner(api: &Api, key: &Key, uid: &str) -> ApiResult<()> {
    for _ in 0..5 {
        let Some(cur) = api.store.get(key)? else {
            return Ok(());
        };
        let mut v = meta::decode(&cur.value, cur.revision);
        let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() else {
            return Ok(());
        };
        let before = refs.len();
        refs.retain(|r| r["uid"] != uid);
        if refs.len() == before {
            return Ok(());
        }
        if refs.is_empty() {
            meta::metadata_mut(&mut v).remove("ownerReferences");
        }
        match api
            .store
            .update(key.clone(), meta::encode(&v), Some(cur.revision))
            .await
        {
            Ok(_) | Err(StoreError::NotFound) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal(format!(
        "orphaning {}/{}: too many conflicts",
        key.namespace, key.name
    )))
}

/// Upstream's RecheckDeletionTimestamp, read fresh from the store (not a cache): may
/// the owner `r` names in namespace `ns` adopt? Only if it exists with that uid and is
/// not being deleted — an owner being deleted must not take back what the collector
/// is orphaning from it.
pub fn may_adopt(api: &Api, ns: &str, r: &OwnerReference) -> ApiResult<bool> {
    let Some(res) = RESOURCES
        .iter()
        .find(|res| res.kind == r.kind && res.api_version() == r.api_version)
    else {
        return Ok(false);
    };
    let Some(cur) = api.store.get(&key_of(res, Some(ns), &r.name))? else {
        return Ok(false);
    };
    let slim: Slim = serde_json::from_slice(&cur.value).unwrap_or_default();
    Ok(slim.metadata.uid == r.uid && slim.metadata.deletion_timestamp.is_none())
}

#[cfg(test)]
mod tests {
    use super::finalized;
    use serde_json::json;

    #[test]
    fn an_object_is_finalized_only_when_nothing_holds_it() {
        let deleting = |md: serde_json::Value, spec: serde_json::Value| {
            let mut v = json!({"metadata": md, "spec": spec});
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            v
        };
        assert!(finalized(&deleting(json!({}), json!({}))));
        assert!(finalized(&deleting(json!({"finalizers": []}), json!({}))));
        assert!(!finalized(&json!({"metadata": {}})), "not being deleted");
        assert!(!finalized(&deleting(
            json!({"finalizers": ["orphan"]}),
            json!({})
        )));
        assert!(
            !finalized(&deleting(json!({}), json!({"finalizers": ["kubernetes"]}))),
            "a namespace not yet emptied"
        );
        assert!(
            !finalized(&deleting(
                json!({"deletionGracePeriodSeconds": 30}),
                json!({"nodeName": "n1"})
            )),
            "a pod its node has not confirmed"
        );
        assert!(finalized(&deleting(
            json!({"deletionGracePeriodSeconds": 0}),
            json!({"nodeName": "n1"})
        )));
    }
}
