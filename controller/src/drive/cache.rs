//! Typed caches fed by store watches (kube-rs's reflector): list once, then watch from
//! the list's revision; a watcher that ends is resumed from its last revision, and a
//! `Gone` answer (history compacted) means listing again. Every change is handed to a
//! routing function that turns it into work-queue keys. Most caches hold k8s-openapi
//! objects (Nodes without their image lists); the pod cache holds compact
//! [`PodRecord`]s.

use super::Ctx;
use super::podrec::{Interner, PodRecord};
use crate::api::meta;
use flotilla_store::{EventKind, StoreError};
use k8s_openapi::Metadata;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type ObjKey = (String, String);

/// A k8s-openapi object type, cached whole but for what [`Object::slim`] drops.
pub trait Object: DeserializeOwned + Metadata<Ty = ObjectMeta> + Send + Sync + 'static {
    /// Drops parts no loop reads and that can be large.
    fn slim(&mut self) {}
}

impl Object for Lease {}
impl Object for ReplicaSet {}
impl Object for Deployment {}
impl Object for DaemonSet {}
impl Object for Job {}
impl Object for Service {}
impl Object for Endpoints {}

impl Object for Node {
    /// A node's image list (tens of KiB on a busy node) is read by no loop.
    fn slim(&mut self) {
        if let Some(s) = self.status.as_mut() {
            s.images = None;
        }
    }
}

/// What a cache may hold: decoded from the stored JSON, keyed by namespace and name,
/// indexed by its controller owner.
pub trait Cached: Sized + Send + Sync + 'static {
    /// State every decode of one cache shares (the pod cache's interned specs).
    type Shared: Default + Send + Sync;
    /// Decodes a stored object at `revision`.
    fn decode(value: &[u8], revision: u64, shared: &Self::Shared) -> Option<Self>;
    /// Its `(namespace, name)`.
    fn key(&self) -> ObjKey;
    /// The uid of its controller owner reference.
    fn controller_uid(&self) -> Option<&str>;
    /// Its resourceVersion.
    fn resource_version(&self) -> u64;
}

impl<T: Object> Cached for T {
    type Shared = ();
    fn decode(value: &[u8], revision: u64, _: &()) -> Option<T> {
        decode(value, revision)
    }
    fn key(&self) -> ObjKey {
        key_of(self.metadata())
    }
    fn controller_uid(&self) -> Option<&str> {
        controller_uid(self.metadata())
    }
    fn resource_version(&self) -> u64 {
        self.metadata()
            .resource_version
            .as_deref()
            .and_then(meta::parse_rv)
            .unwrap_or(0)
    }
}

impl Cached for PodRecord {
    type Shared = Interner;
    fn decode(value: &[u8], revision: u64, shared: &Interner) -> Option<PodRecord> {
        PodRecord::decode(value, revision, shared)
            .map_err(|e| tracing::warn!(error = %e, "undecodable pod in the store"))
            .ok()
    }
    fn key(&self) -> ObjKey {
        PodRecord::key(self)
    }
    fn controller_uid(&self) -> Option<&str> {
        self.controller().map(|r| r.uid.as_str())
    }
    fn resource_version(&self) -> u64 {
        self.resource_version
    }
}

/// Called with the old and new state of every changed object (`None`: absent).
pub type Route<T> = fn(&Ctx, Option<&T>, Option<&T>);

#[derive(Default)]
struct Inner<T> {
    items: HashMap<ObjKey, Arc<T>>,
    /// Controller owner uid → objects it controls.
    by_owner: HashMap<String, HashSet<ObjKey>>,
    /// Objects without a controller owner (ReplicaSets look for pods to adopt here).
    orphans: HashSet<ObjKey>,
}

/// The objects of one resource as last seen, with an index by controller owner.
pub struct Cache<T: Cached> {
    /// The store's name for the resource (`pods`, `apps/deployments`).
    pub store_name: &'static str,
    inner: RwLock<Inner<T>>,
    /// Every change up to this store revision is in the cache.
    revision: AtomicU64,
    /// What decodes share.
    shared: T::Shared,
}

fn key_of(meta: &ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The controller among these owner references (Kubernetes allows at most one).
pub fn controller_of(refs: Option<&[OwnerReference]>) -> Option<&OwnerReference> {
    refs?.iter().find(|r| r.controller == Some(true))
}

/// The uid of the object's controller owner reference.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    controller_of(meta.owner_references.as_deref()).map(|r| r.uid.as_str())
}

impl<T: Cached> Cache<T> {
    /// An empty cache of the resource stored under `store_name`.
    pub fn new(store_name: &'static str) -> Cache<T> {
        Cache {
            store_name,
            inner: RwLock::new(Inner {
                items: HashMap::new(),
                by_owner: HashMap::new(),
                orphans: HashSet::new(),
            }),
            revision: AtomicU64::new(0),
            shared: T::Shared::default(),
        }
    }

    /// The object at `key`.
    pub fn get(&self, key: &ObjKey) -> Option<Arc<T>> {
        self.read().items.get(key).cloned()
    }

    /// Every object.
    pub fn list(&self) -> Vec<Arc<T>> {
        self.read().items.values().cloned().collect()
    }

    /// Every object in `namespace`.
    pub fn list_ns(&self, namespace: &str) -> Vec<Arc<T>> {
        self.read()
            .items
            .iter()
            .filter(|(k, _)| k.0 == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The objects whose controller owner has this uid.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<T>> {
        let g = self.read();
        g.by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|k| g.items.get(k).cloned())
            .collect()
    }

    /// The objects of `namespace` without a controller owner.
    pub fn orphans_ns(&self, namespace: &str) -> Vec<Arc<T>> {
        let g = self.read();
        g.orphans
            .iter()
            .filter(|k| k.0 == namespace)
            .filter_map(|k| g.items.get(k).cloned())
            .collect()
    }

    /// The revision the cache has caught up with.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Waits (up to 10 s) until the cache has seen every change up to `rv`, so a
    /// controller does not act twice on its own writes.
    pub async fn wait_for(&self, rv: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.revision() < rv && Instant::now() < deadline {
            smol::Timer::after(Duration::from_millis(2)).await;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<T>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<T>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, obj: T) -> (Option<Arc<T>>, Arc<T>) {
        let key = obj.key();
        let obj = Arc::new(obj);
        let mut g = self.write();
        let old = g.items.insert(key.clone(), obj.clone());
        if let Some(uid) = old.as_ref().and_then(|o| o.controller_uid()) {
            let uid = uid.to_owned();
            unindex(&mut g, &uid, &key);
        }
        match obj.controller_uid() {
            Some(uid) => {
                g.orphans.remove(&key);
                g.by_owner.entry(uid.to_owned()).or_default().insert(key);
            }
            None => {
                g.orphans.insert(key);
            }
        }
        (old, obj)
    }

    fn remove(&self, key: &ObjKey) -> Option<Arc<T>> {
        let mut g = self.write();
        let old = g.items.remove(key)?;
        g.orphans.remove(key);
        if let Some(uid) = old.controller_uid() {
            let uid = uid.to_owned();
            unindex(&mut g, &uid, key);
        }
        Some(old)
    }
}

fn unindex<T>(g: &mut Inner<T>, uid: &str, key: &ObjKey) {
    if let Some(set) = g.by_owner.get_mut(uid) {
        set.remove(key);
        if set.is_empty() {
            g.by_owner.remove(uid);
        }
    }
}

fn decode<T: Object>(value: &[u8], revision: u64) -> Option<T> {
    let mut obj = match serde_json::from_slice::<T>(value) {
        Ok(mut obj) => {
            obj.metadata_mut().resource_version = Some(revision.to_string());
            obj
        }
        Err(e) => {
            // Fall back to the API's own decoding (it tolerates what it stored).
            let v = meta::decode(value, revision);
            serde_json::from_value::<T>(v)
                .map_err(
                    |e2| tracing::warn!(error = %e, again = %e2, "undecodable object in the store"),
                )
                .ok()?
        }
    };
    obj.slim();
    Some(obj)
}

/// Lists the resource, replaces the cache's contents and routes every difference.
/// Returns the revision to watch from.
pub fn relist<T: Cached>(ctx: &Ctx, cache: &Cache<T>, route: Route<T>) -> Result<u64, StoreError> {
    let page = ctx.api.store.list(cache.store_name, None, None, None)?;
    let mut seen = HashSet::new();
    for o in &page.items {
        let Some(obj) = T::decode(&o.value, o.revision, &cache.shared) else {
            continue;
        };
        seen.insert((o.key.namespace.clone(), o.key.name.clone()));
        let (old, new) = cache.insert(obj);
        if old
            .as_ref()
            .is_none_or(|old| old.resource_version() != new.resource_version())
        {
            route(ctx, old.as_deref(), Some(&new));
        }
    }
    let gone: Vec<ObjKey> = cache
        .read()
        .items
        .keys()
        .filter(|k| !seen.contains(*k))
        .cloned()
        .collect();
    for k in gone {
        if let Some(old) = cache.remove(&k) {
            route(ctx, Some(&old), None);
        }
    }
    cache.revision.fetch_max(page.revision, Ordering::AcqRel);
    Ok(page.revision)
}

/// Follows the resource forever from revision `from` (the initial list's).
pub async fn follow<T: Cached>(
    ctx: Arc<Ctx>,
    cache: fn(&Ctx) -> &Cache<T>,
    route: Route<T>,
    mut from: u64,
) {
    loop {
        let c = cache(&ctx);
        let mut relist_now = false;
        match ctx.api.store.watch(c.store_name, None, Some(from)) {
            Ok(mut w) => {
                while let Some(ev) = w.next().await {
                    let key = (ev.object.key.namespace.clone(), ev.object.key.name.clone());
                    match ev.kind {
                        EventKind::Deleted => {
                            if let Some(old) = c.remove(&key) {
                                route(&ctx, Some(&old), None);
                            }
                        }
                        EventKind::Added | EventKind::Modified => {
                            if let Some(obj) =
                                T::decode(&ev.object.value, ev.object.revision, &c.shared)
                            {
                                let (old, new) = c.insert(obj);
                                route(&ctx, old.as_deref(), Some(&new));
                            }
                        }
                    }
                    from = ev.object.revision;
                    c.revision.fetch_max(w.progress(), Ordering::AcqRel);
                }
                match w.error() {
                    Some(StoreError::Gone { .. }) => relist_now = true,
                    Some(e) => tracing::warn!(resource = c.store_name, error = %e, "watch ended"),
                    None => {}
                }
                from = from.max(w.progress());
            }
            Err(StoreError::Gone { .. }) => relist_now = true,
            Err(e) => {
                tracing::warn!(resource = c.store_name, error = %e, "cannot watch; retrying");
                smol::Timer::after(Duration::from_secs(1)).await;
            }
        }
        if relist_now {
            match relist(&ctx, c, route) {
                Ok(rev) => from = rev,
                Err(e) => {
                    tracing::warn!(resource = c.store_name, error = %e, "cannot list; retrying");
                    smol::Timer::after(Duration::from_secs(1)).await;
                }
            }
        }
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_node_leaves_its_image_list_out() {
        let stored = serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"a": "b"}},
            "status": {"images": [{"names": ["busybox:1.36"], "sizeBytes": 1000}],
                "allocatable": {"cpu": "2"},
                "conditions": [{"type": "Ready", "status": "True"}]}});
        let n: Node = decode(&serde_json::to_vec(&stored).unwrap(), 7).unwrap();
        let status = n.status.unwrap();
        assert_eq!(status.images, None);
        assert!(status.allocatable.unwrap().contains_key("cpu"));
        assert_eq!(status.conditions.unwrap()[0].status, "True");
        assert_eq!(n.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(n.metadata.labels.unwrap()["a"], "b");
    }
}
