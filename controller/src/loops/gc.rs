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
use serde_json::json;
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
                    foreground: m.finalizers.iter().any(|f| f == "foregroundDeletion"),
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

    for e in &objs {
        // Foreground deletion completes when no dependent remains.
        if e.deleting && e.foreground {
            if !referenced.contains(e.uid.as_str()) {
                remove_finalizer(api, e, "foregroundDeletion").await?;
                changed = true;
            }
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
            ignore_gone(delete_object(api, e.res, &e.key, &background).await)?;
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
    if let Some(list) = v["metadata"]["finalizers"].as_array_mut() {
        list.retain(|x| x != f);
    }
    let empty = v["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|a| a.is_empty());
    let r = if empty && !v["metadata"]["deletionTimestamp"].is_null() {
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
