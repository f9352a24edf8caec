//! The hub: the controller's end of the agent link (DESIGN.md, "Protocols").
//!
//! Agents dial it over TLS ([`listen`]). A link without a client certificate is a join
//! ([`join`]): the token's secret buys a node certificate signed from the agent's CSR,
//! for a node name that no other machine's key owns ([`owner`]). A link with a node
//! certificate of the name's owner is a session ([`session`]) for that node only: its
//! Node object and Lease ([`node`]), the node's desired pods resolved to
//! [`PodSpec`](flotilla_shared::pod::PodSpec)s ([`resolve`]) and kept current from
//! store watches ([`index`]), pod reports turned into pod status ([`report`]) and
//! events ([`events`]), and multiplexed log and exec streams ([`streams`]) that the
//! API's `pods/log` and `pods/exec` relay.

pub mod codec;
pub mod events;
pub mod index;
pub mod join;
pub mod listen;
pub mod node;
pub mod owner;
pub mod report;
pub mod resolve;
pub mod session;
pub mod streams;
pub mod write;

use crate::api::Api;
use crate::pki;
use anyhow::{Context, Result};
use session::Session;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The hub's settings, from the `serve` flags.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where agents dial (`--hub-listen`).
    pub listen: SocketAddr,
    /// The cluster's pod range (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// The service range (`--service-cidr`); cluster DNS is its tenth address.
    pub service_cidr: String,
}

/// The cluster DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The hub's shared state.
pub struct Hub {
    pub api: Arc<Api>,
    pub config: Config,
    /// The cluster DNS service address given to every node.
    pub cluster_dns: String,
    ca: pki::Ca,
    token: pki::NodeToken,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Which pods are bound to which node, and what each node was sent.
    pub index: Mutex<index::Index>,
}

static HUB: OnceLock<Arc<Hub>> = OnceLock::new();

/// The running hub (None before [`spawn`], e.g. in unit tests).
pub fn get() -> Option<Arc<Hub>> {
    HUB.get().cloned()
}

impl Hub {
    /// The connected session of `node`.
    pub fn session(&self, node: &str) -> Option<Arc<Session>> {
        self.lock_sessions().get(node).cloned()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pod index, locked.
    pub fn lock_index(&self) -> std::sync::MutexGuard<'_, index::Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `s` as its node's session, closing the one it replaces. Replacing one
    /// whose agent still answers is reported: a machine reconnecting has left its old
    /// link (closed, or silent since it went down), so when it repeats, two machines
    /// hold this node's credentials (a card cloned after the node joined) and take
    /// the session from each other.
    fn register(&self, s: Arc<Session>) {
        let (node, peer) = (s.node.clone(), s.peer);
        let old = self.lock_sessions().insert(node.clone(), s);
        if let Some(old) = old {
            let quiet = old.quiet_for();
            if quiet < session::HEARTBEAT + Duration::from_secs(5) {
                tracing::warn!(
                    %node, old_peer = %old.peer, new_peer = %peer,
                    "node {node}: a session from {peer} replaced the one from {} that was still answering ({:.1}s ago); \
                     if this repeats, two machines hold this node's credentials (a card cloned after the node joined): \
                     give the copy its own --node-name after removing its <data-dir>/link",
                    old.peer,
                    quiet.as_secs_f64()
                );
            }
            old.close("replaced by a new session of the same node");
        }
    }

    /// Ends `node`'s session if its certificate holds another key than `key` (the
    /// name was just taken over by the machine holding `key`).
    fn close_other_owners(&self, node: &str, key: &str) {
        if let Some(s) = self.session(node)
            && s.key != key
        {
            s.close(&format!("another machine now owns node name {node:?}"));
        }
    }

    /// Removes `s` if it still is its node's session.
    fn unregister(&self, s: &Session) {
        let mut map = self.lock_sessions();
        if map.get(&s.node).is_some_and(|cur| cur.id == s.id) {
            map.remove(&s.node);
        }
    }

    /// The settings every node gets, with its podCIDR.
    pub fn node_config(&self, pod_cidr: &str) -> flotilla_shared::pod::NodeConfig {
        flotilla_shared::pod::NodeConfig {
            pod_cidr: pod_cidr.to_owned(),
            cluster_cidr: self.config.cluster_cidr.clone(),
            service_cidr: self.config.service_cidr.clone(),
            cluster_dns: self.cluster_dns.clone(),
            cluster_domain: CLUSTER_DOMAIN.to_owned(),
        }
    }
}

/// The tenth address of an IPv4 range (`10.43.0.0/16` → `10.43.0.10`), where the
/// cluster DNS service lives, as in k3s.
pub fn cluster_dns(service_cidr: &str) -> Result<String> {
    let (base, _) = service_cidr
        .split_once('/')
        .with_context(|| format!("service CIDR {service_cidr:?} has no prefix length"))?;
    let ip: std::net::Ipv4Addr = base
        .parse()
        .with_context(|| format!("service CIDR {service_cidr:?} is not IPv4"))?;
    Ok(std::net::Ipv4Addr::from(u32::from(ip) + 10).to_string())
}

/// Starts the hub: writes the node token (`<data-dir>/node-token`) on first start,
/// then listens for agents and follows the store.
pub fn spawn(
    api: Arc<Api>,
    data_dir: &Path,
    serving: &pki::CertAndKey,
    config: Config,
) -> Result<()> {
    let ca = pki::Ca::load_or_create(data_dir)?;
    let token = pki::load_or_create_node_token(data_dir, &ca.cert_pem)?;
    let tls = listen::tls_config(&ca.cert_pem, &serving.cert_pem, &serving.key_pem)?;
    let hub = Arc::new(Hub {
        api,
        cluster_dns: cluster_dns(&config.service_cidr)?,
        config,
        ca,
        token,
        sessions: Mutex::new(HashMap::new()),
        index: Mutex::new(index::Index::default()),
    });
    if HUB.set(hub.clone()).is_err() {
        anyhow::bail!("the hub is already running");
    }
    index::spawn(hub.clone())?;
    crate::exec::spawn(listen::run(hub, tls));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_dns_is_the_tenth_service_address() {
        assert_eq!(super::cluster_dns("10.43.0.0/16").unwrap(), "10.43.0.10");
        assert_eq!(super::cluster_dns("10.96.0.0/12").unwrap(), "10.96.0.10");
        assert!(super::cluster_dns("fd00::/64").is_err());
    }
}
