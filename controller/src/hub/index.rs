//! Which pods belong to which node, and keeping connected nodes current. The index
//! holds per pod only its key, node, uid and a hash of what its node was last sent —
//! never a copy of the pod: specs are resolved from the store when they are sent.
//! Store watches feed it: pods (bind, change, delete → `PodUpsert`/`PodRemove`),
//! ConfigMaps and Secrets (pods referencing them are resolved again; a changed result
//! is a new revision) and Nodes (a new podCIDR → `NodeConfig`).

use super::Hub;
use super::resolve::{self, Cluster};
use super::session::Session;
use crate::api::auth::pod_references;
use flotilla_shared::pod::PodSpec;
use flotilla_shared::wire::{self, Frame};
use flotilla_store::{EventKind, Key, StoreError};
use k8s_openapi::api::core::v1 as k8s;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// `(namespace, name)` of a pod.
pub type PodKey = (String, String);

/// What the index knows of one bound pod.
struct Placed {
    node: String,
    uid: String,
    /// Store revision of the pod value last looked at (older events are skipped).
    seen: u64,
    /// Hash and revision of the spec the node was last sent.
    sent: Option<(u64, u64)>,
    /// The last resolution error reported for the pod.
    error: Option<String>,
}

/// Pods by key and by node.
#[derive(Default)]
pub struct Index {
    pods: HashMap<PodKey, Placed>,
    by_node: HashMap<String, HashSet<PodKey>>,
}

/// Writes to do after the index is unlocked.
pub enum Effect {
    /// The pod cannot be started: a reference does not resolve.
    ConfigError {
        namespace: String,
        name: String,
        uid: String,
        message: String,
    },
}

impl Index {
    fn remove(&mut self, key: &PodKey) -> Option<Placed> {
        let p = self.pods.remove(key)?;
        if let Some(set) = self.by_node.get_mut(&p.node) {
            set.remove(key);
            if set.is_empty() {
                self.by_node.remove(&p.node);
            }
        }
        Some(p)
    }

    fn insert(&mut self, key: PodKey, p: Placed) {
        self.by_node
            .entry(p.node.clone())
            .or_default()
            .insert(key.clone());
        self.pods.insert(key, p);
    }
}

fn spec_hash(spec: &PodSpec) -> u64 {
    let mut s = spec.clone();
    s.revision = 0;
    let bytes = wire::encode(&Frame::PodUpsert(s)).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn decode_pod(value: &[u8]) -> Option<k8s::Pod> {
    serde_json::from_slice(value)
        .map_err(|e| tracing::warn!(error = %e, "undecodable pod in the store"))
        .ok()
}

fn node_of(pod: &k8s::Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// Resolves `pod` (stored at `rev`) for its node: the spec and whether it differs
/// from what the node was last sent (which it then records as sent). None when a
/// reference does not resolve.
fn refresh(
    hub: &Hub,
    p: &mut Placed,
    pod: &k8s::Pod,
    rev: u64,
    effects: &mut Vec<Effect>,
) -> Option<(PodSpec, bool)> {
    p.seen = p.seen.max(rev);
    let cluster = Cluster {
        dns: &hub.cluster_dns,
        domain: super::CLUSTER_DOMAIN,
    };
    match resolve::resolve(&hub.api.store, pod, rev, &cluster) {
        Ok(r) => {
            p.error = None;
            let hash = spec_hash(&r.spec);
            let (revision, changed) = match p.sent {
                Some((h, old)) if h == hash => (old, false),
                Some((_, old)) => (r.revision.max(old + 1), true),
                None => (r.revision, true),
            };
            p.sent = Some((hash, revision));
            let mut spec = r.spec;
            spec.revision = revision;
            Some((spec, changed))
        }
        Err(message) => {
            // A pod the node already runs keeps its last spec, as the kubelet keeps
            // running containers whose ConfigMap went away.
            if p.sent.is_none() && p.error.as_deref() != Some(&message) {
                effects.push(Effect::ConfigError {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    uid: p.uid.clone(),
                    message: message.clone(),
                });
            }
            p.error = Some(message);
            None
        }
    }
}

/// Applies one pod change (`value` None: deleted) at store revision `rev`.
fn pod_changed(
    hub: &Hub,
    idx: &mut Index,
    key: PodKey,
    value: Option<&[u8]>,
    rev: u64,
    effects: &mut Vec<Effect>,
) {
    let pod = value.and_then(decode_pod);
    let new_node = pod.as_ref().and_then(node_of).map(str::to_owned);
    let new_uid = pod
        .as_ref()
        .and_then(|p| p.metadata.uid.clone())
        .unwrap_or_default();
    if let Some(old) = idx.pods.get(&key) {
        if rev <= old.seen && value.is_some() {
            return;
        }
        if new_node.as_deref() != Some(old.node.as_str()) || old.uid != new_uid {
            let old = idx.remove(&key).expect("present");
            if let Some(s) = hub.session(&old.node) {
                s.send(Frame::PodRemove { uid: old.uid });
            }
        }
    }
    let (Some(node), Some(pod)) = (new_node, pod) else {
        return;
    };
    let mut p = idx.remove(&key).unwrap_or(Placed {
        node: node.clone(),
        uid: new_uid,
        seen: 0,
        sent: None,
        error: None,
    });
    p.seen = p.seen.max(rev);
    if let Some(s) = hub.session(&node)
        && let Some((spec, true)) = refresh(hub, &mut p, &pod, rev, effects)
    {
        s.send(Frame::PodUpsert(spec));
    }
    idx.insert(key, p);
}

/// A ConfigMap or Secret changed: pods of connected nodes that reference it are
/// resolved again.
fn ref_changed(
    hub: &Hub,
    idx: &mut Index,
    plural: &str,
    ns: &str,
    name: &str,
    effects: &mut Vec<Effect>,
) {
    let keys: Vec<PodKey> = idx
        .pods
        .iter()
        .filter(|(k, p)| k.0 == ns && hub.session(&p.node).is_some())
        .map(|(k, _)| k.clone())
        .collect();
    for key in keys {
        let Ok(Some(o)) = hub.api.store.get(&Key::new("pods", &key.0, &key.1)) else {
            continue;
        };
        let Some(pod) = decode_pod(&o.value) else {
            continue;
        };
        let spec_json = serde_json::to_value(&pod.spec).unwrap_or_default();
        if !pod_references(&spec_json, plural, name) {
            continue;
        }
        let Some(p) = idx.pods.get_mut(&key) else {
            continue;
        };
        if p.uid != pod.metadata.uid.clone().unwrap_or_default() {
            continue;
        }
        if let Some(s) = hub.session(&p.node)
            && let Some((spec, true)) = refresh(hub, p, &pod, o.revision, effects)
        {
            s.send(Frame::PodUpsert(spec));
        }
    }
}

/// Sends a node its settings and its complete pod set (under the index lock, so no
/// change slips between the set and the updates that follow it).
fn send_all(hub: &Hub, idx: &mut Index, s: &Session, effects: &mut Vec<Effect>) {
    let pod_cidr = hub
        .api
        .store
        .get(&Key::cluster("nodes", &s.node))
        .ok()
        .flatten()
        .and_then(|o| serde_json::from_slice::<k8s::Node>(&o.value).ok())
        .and_then(|n| n.spec?.pod_cidr)
        .unwrap_or_default();
    s.send_config(hub.node_config(&pod_cidr));
    let keys: Vec<PodKey> = idx
        .by_node
        .get(&s.node)
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut set = Vec::with_capacity(keys.len());
    for key in keys {
        let stored = hub.api.store.get(&Key::new("pods", &key.0, &key.1));
        let Some(p) = idx.pods.get_mut(&key) else {
            continue;
        };
        let Ok(Some(o)) = stored else { continue };
        let Some(pod) = decode_pod(&o.value) else {
            continue;
        };
        if node_of(&pod) != Some(s.node.as_str()) {
            continue;
        }
        if let Some((spec, _)) = refresh(hub, p, &pod, o.revision, effects) {
            set.push(spec);
        }
    }
    s.send(Frame::PodSet(set));
}

/// A node's session started: register it and send its settings and pods.
pub fn session_started(hub: &Arc<Hub>, s: &Arc<Session>) {
    let mut effects = Vec::new();
    {
        let mut idx = hub.lock_index();
        hub.register(s.clone());
        send_all(hub, &mut idx, s, &mut effects);
    }
    run_effects(hub, effects);
}

fn run_effects(hub: &Arc<Hub>, effects: Vec<Effect>) {
    for e in effects {
        let hub = hub.clone();
        crate::exec::spawn(async move {
            match e {
                Effect::ConfigError {
                    namespace,
                    name,
                    uid,
                    message,
                } => super::report::config_error(&hub, &namespace, &name, &uid, &message).await,
            }
        });
    }
}

/// Lists the pods, fills the index, and follows pods, ConfigMaps, Secrets and Nodes.
pub fn spawn(hub: Arc<Hub>) -> anyhow::Result<()> {
    let from = relist_pods(&hub)?;
    let rev = hub.api.store.revision().max(1);
    crate::exec::spawn(follow(hub.clone(), "pods", from));
    crate::exec::spawn(follow(hub.clone(), "configmaps", rev));
    crate::exec::spawn(follow(hub.clone(), "secrets", rev));
    crate::exec::spawn(follow(hub, "nodes", rev));
    Ok(())
}

/// Rebuilds the index from a list of every pod; returns the list's revision.
fn relist_pods(hub: &Arc<Hub>) -> Result<u64, StoreError> {
    let mut fresh = Index::default();
    let mut effects = Vec::new();
    let mut idx = hub.lock_index();
    let summary = hub.api.store.list_each("pods", None, None, None, |o| {
        if let Some(pod) = decode_pod(o.value)
            && let Some(node) = node_of(&pod)
        {
            let key = (o.key.namespace.clone(), o.key.name.clone());
            let old = idx.pods.get(&key);
            fresh.insert(
                key,
                Placed {
                    node: node.to_owned(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                    seen: o.revision,
                    sent: old.and_then(|p| p.sent),
                    error: old.and_then(|p| p.error.clone()),
                },
            );
        }
        Ok(())
    })?;
    *idx = fresh;
    // Every connected node gets its whole set again.
    let sessions: Vec<Arc<Session>> = hub.lock_sessions().values().cloned().collect();
    for s in sessions {
        send_all(hub, &mut idx, &s, &mut effects);
    }
    drop(idx);
    run_effects(hub, effects);
    Ok(summary.revision.max(1))
}

fn resync(hub: &Arc<Hub>) {
    let mut effects = Vec::new();
    let mut idx = hub.lock_index();
    let sessions: Vec<Arc<Session>> = hub.lock_sessions().values().cloned().collect();
    for s in sessions {
        send_all(hub, &mut idx, &s, &mut effects);
    }
    drop(idx);
    run_effects(hub, effects);
}

/// Follows one resource from `from`; a compacted history means listing again.
async fn follow(hub: Arc<Hub>, resource: &'static str, mut from: u64) {
    loop {
        let mut gone = false;
        match hub.api.store.watch(resource, None, Some(from)) {
            Ok(mut w) => {
                while let Some(ev) = w.next().await {
                    from = ev.object.revision;
                    handle(&hub, resource, &ev);
                }
                gone = matches!(w.error(), Some(StoreError::Gone { .. }));
                if let Some(e) = w.error().filter(|_| !gone) {
                    tracing::warn!(resource, error = %e, "hub watch ended; resuming");
                }
                from = from.max(w.progress());
            }
            Err(StoreError::Gone { .. }) => gone = true,
            Err(e) => {
                tracing::warn!(resource, error = %e, "hub cannot watch; retrying");
                smol::Timer::after(Duration::from_secs(1)).await;
            }
        }
        if gone {
            let relisted = if resource == "pods" {
                relist_pods(&hub)
            } else {
                resync(&hub);
                Ok(hub.api.store.revision().max(1))
            };
            match relisted {
                Ok(rev) => from = rev,
                Err(e) => {
                    tracing::warn!(resource, error = %e, "hub cannot list; retrying");
                    smol::Timer::after(Duration::from_secs(1)).await;
                }
            }
        }
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

fn handle(hub: &Arc<Hub>, resource: &str, ev: &flotilla_store::Event) {
    let key = &ev.object.key;
    let mut effects = Vec::new();
    match resource {
        "pods" => {
            let value = (ev.kind != EventKind::Deleted).then_some(&ev.object.value[..]);
            let mut idx = hub.lock_index();
            pod_changed(
                hub,
                &mut idx,
                (key.namespace.clone(), key.name.clone()),
                value,
                ev.object.revision,
                &mut effects,
            );
        }
        "configmaps" | "secrets" => {
            let mut idx = hub.lock_index();
            ref_changed(
                hub,
                &mut idx,
                resource,
                &key.namespace,
                &key.name,
                &mut effects,
            );
        }
        "nodes" => {
            if ev.kind != EventKind::Deleted
                && let Some(s) = hub.session(&key.name)
                && let Ok(n) = serde_json::from_slice::<k8s::Node>(&ev.object.value)
            {
                let cidr = n.spec.and_then(|s| s.pod_cidr).unwrap_or_default();
                s.send_config(hub.node_config(&cidr));
            }
        }
        _ => {}
    }
    run_effects(hub, effects);
}
