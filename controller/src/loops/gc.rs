//! Garbage collection and namespace deletion, one reconciler woken after deletions
//! (and every 30 s): dependents whose owners are gone are deleted (background),
//! owners in foreground deletion wait for their dependents, orphaning strips owner
//! references, and terminating namespaces are emptied and then removed.

use crate::api::Api;
use crate::api::meta;
use crate::api::objects::{DeleteOpts, delete_object, key_of};
use crate::api::registry::{RESOURCES, Resource};
use crate::api::status::ApiResult;
use flotilla_store::{Key, StoreError};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

struct Entry {
    res: &'static Resource,
    key: Key,
    value: Value,
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
        let page = api.store.list(&res.store_name(), None, None, None)?;
        for o in page.items {
            out.push(Entry {
                res,
                key: o.key,
                value: meta::decode(&o.value, o.revision),
            });
        }
    }
    Ok(out)
}

fn deleting(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

fn has_finalizer(v: &Value, f: &str) -> bool {
    v["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn owner_uids(v: &Value) -> Vec<String> {
    v["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_owned))
        .collect()
}

/// One reconcile pass; returns whether it changed anything.
async fn pass(api: &Api) -> ApiResult<bool> {
    let objs = all_objects(api)?;
    let by_uid: HashMap<&str, &Entry> = objs
        .iter()
        .filter_map(|e| e.value["metadata"]["uid"].as_str().map(|u| (u, e)))
        .collect();
    let referenced: HashSet<String> = objs.iter().flat_map(|e| owner_uids(&e.value)).collect();
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
        .filter(|e| e.res.kind == "Namespace" && deleting(&e.value))
        .map(|e| e.key.name.as_str())
        .collect();
    for ns in &terminating {
        let contents: Vec<&Entry> = objs
            .iter()
            .filter(|e| e.res.namespaced && e.key.namespace == *ns)
            .collect();
        for e in &contents {
            if !deleting(&e.value) {
                ignore_gone(delete_object(api, e.res, &e.key, &background).await)?;
                changed = true;
            } else if e.res.kind == "Pod"
                && e.value["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty())
            {
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

    for e in &objs {
        let v = &e.value;
        // Foreground deletion completes when no dependent remains.
        if deleting(v) && has_finalizer(v, "foregroundDeletion") {
            let uid = v["metadata"]["uid"].as_str().unwrap_or("");
            if !referenced.contains(uid) {
                remove_finalizer(api, e, "foregroundDeletion").await?;
                changed = true;
            }
            continue;
        }
        let owners = owner_uids(v);
        if owners.is_empty() || deleting(v) {
            continue;
        }
        let live: Vec<&&Entry> = owners
            .iter()
            .filter_map(|u| by_uid.get(u.as_str()))
            .collect();
        if live.is_empty() {
            ignore_gone(delete_object(api, e.res, &e.key, &background).await)?;
            changed = true;
        } else if live
            .iter()
            .all(|o| deleting(&o.value) && has_finalizer(&o.value, "foregroundDeletion"))
        {
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
    if let Some(list) = v["metadata"]["finalizers"].as_array_mut() {
        list.retain(|x| x != f);
    }
    let empty = v["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|a| a.is_empty());
    let r = if empty && deleting(&v) {
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

/// Removes owner references to `uid` from every object in `ns` (and cluster-scoped
/// ones): the dependents survive their owner (propagationPolicy=Orphan).
pub async fn orphan_dependents(api: &Api, uid: &str, ns: &str) -> ApiResult<()> {
    for res in RESOURCES {
        let scope = if res.namespaced {
            Some(ns).filter(|n| !n.is_empty())
        } else {
            None
        };
        if res.namespaced && scope.is_none() {
            continue;
        }
        let page = api.store.list(&res.store_name(), scope, None, None)?;
        for o in page.items {
            let mut v = meta::decode(&o.value, o.revision);
            let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() else {
                continue;
            };
            let before = refs.len();
            refs.retain(|r| r["uid"] != uid);
            if refs.len() == before {
                continue;
            }
            if refs.is_empty() {
                meta::metadata_mut(&mut v).remove("ownerReferences");
            }
            let key = key_of(res, Some(&o.key.namespace), &o.key.name);
            match api
                .store
                .update(key, meta::encode(&v), Some(o.revision))
                .await
            {
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
