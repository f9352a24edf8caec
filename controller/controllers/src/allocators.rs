//! Allocators for ClusterIPs, NodePorts and per-node pod CIDRs.
//!
//! Each is a bitmap over its range with a moving cursor, rebuilt from stored objects
//! (services, nodes) at start, so nothing is handed out twice across restarts. ClusterIPs
//! come from the service CIDR (default `10.43.0.0/16`) without the network and broadcast
//! addresses and without the first host address, which belongs to the `kubernetes`
//! service; NodePorts from 30000–32767; pod CIDRs are `/24`s of the cluster CIDR
//! (default `10.42.0.0/16`).

use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, Service};

use crate::actions::{Action, Event, reference};

/// Default service CIDR.
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
/// Default cluster (pod) CIDR.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// Default NodePort range.
pub const DEFAULT_NODE_PORTS: (u16, u16) = (30000, 32767);

/// Why an allocation failed; worded as the API server words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// Every value is taken.
    Full,
    /// The requested IP is taken.
    IpAllocated,
    /// The requested port is taken.
    PortAllocated,
    /// The requested IP is outside the range.
    IpNotInRange { ip: String, range: String },
    /// The requested port is outside the range.
    PortNotInRange { range: String },
    /// A CIDR or address that does not parse.
    Invalid(String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Full => f.write_str("range is full"),
            AllocError::IpAllocated => f.write_str("provided IP is already allocated"),
            AllocError::PortAllocated => f.write_str("provided port is already allocated"),
            AllocError::IpNotInRange { ip, range } => {
                write!(
                    f,
                    "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
                )
            }
            AllocError::PortNotInRange { range } => {
                write!(
                    f,
                    "provided port is not in the valid range. The range of valid ports is {range}"
                )
            }
            AllocError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for AllocError {}

/// A set of indices `0..size` with "next free after the cursor" allocation.
#[derive(Debug, Clone)]
struct Bitmap {
    words: Vec<u64>,
    size: u32,
    cursor: u32,
}

impl Bitmap {
    fn new(size: u32) -> Bitmap {
        Bitmap {
            words: vec![0; size.div_ceil(64) as usize],
            size,
            cursor: 0,
        }
    }
    fn has(&self, i: u32) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u32, on: bool) {
        let w = &mut self.words[(i / 64) as usize];
        if on {
            *w |= 1 << (i % 64)
        } else {
            *w &= !(1 << (i % 64))
        }
    }
    /// Claims `i`; false when it was taken.
    fn claim(&mut self, i: u32) -> bool {
        if self.has(i) {
            return false;
        }
        self.set(i, true);
        true
    }
    /// Claims the next free index at or after the cursor (wrapping), skipping `skip`.
    fn next(&mut self, skip: Option<u32>) -> Option<u32> {
        for k in 0..self.size {
            let i = (self.cursor + k) % self.size;
            if Some(i) != skip && !self.has(i) {
                self.set(i, true);
                self.cursor = (i + 1) % self.size;
                return Some(i);
            }
        }
        None
    }
    fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }
}

/// An IPv4 CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; the address must be the network address.
    pub fn parse(s: &str) -> Result<Cidr, AllocError> {
        let bad = || AllocError::Invalid(format!("invalid CIDR address: {s}"));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        if u32::from(ip) & !mask != 0 {
            return Err(AllocError::Invalid(format!(
                "{s} is not a network address (host bits set)"
            )));
        }
        Ok(Cidr {
            network: ip,
            prefix,
        })
    }

    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// Does the CIDR hold this address?
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let off = u64::from(u32::from(ip)).wrapping_sub(u64::from(u32::from(self.network)));
        u32::from(ip) >= u32::from(self.network) && off < self.size()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// ClusterIP allocator.
#[derive(Debug, Clone)]
pub struct ClusterIps {
    cidr: Cidr,
    used: Bitmap,
}

impl ClusterIps {
    /// An empty allocator over `cidr` (at least a /30).
    pub fn new(cidr: &str) -> Result<ClusterIps, AllocError> {
        let cidr = Cidr::parse(cidr)?;
        if cidr.prefix > 30 {
            return Err(AllocError::Invalid(format!(
                "service CIDR {cidr} is too small"
            )));
        }
        // Host addresses only: not the network and not the broadcast address.
        let hosts = (cidr.size() - 2).min(u64::from(u32::MAX)) as u32;
        Ok(ClusterIps {
            cidr,
            used: Bitmap::new(hosts),
        })
    }

    /// The allocator with the ClusterIPs of these services already taken.
    pub fn rebuild(cidr: &str, services: &[Service]) -> Result<ClusterIps, AllocError> {
        let mut a = ClusterIps::new(cidr)?;
        for s in services {
            for ip in service_ips(s) {
                // Addresses outside the range (an older CIDR) are left alone.
                let _ = a.allocate_specific(&ip);
            }
        }
        Ok(a)
    }

    /// The address reserved for the `kubernetes` service (the first host address).
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network) + 1)
    }

    /// The next free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, AllocError> {
        let i = self.used.next(Some(0)).ok_or(AllocError::Full)?;
        Ok(Ipv4Addr::from(u32::from(self.cidr.network) + 1 + i))
    }

    /// Takes a requested address.
    pub fn allocate_specific(&mut self, ip: &str) -> Result<Ipv4Addr, AllocError> {
        let i = self.index(ip)?;
        if !self.used.claim(i) {
            return Err(AllocError::IpAllocated);
        }
        Ok(Ipv4Addr::from(u32::from(self.cidr.network) + 1 + i))
    }

    /// Gives an address back (unknown or foreign addresses are ignored).
    pub fn release(&mut self, ip: &str) {
        if let Ok(i) = self.index(ip) {
            self.used.set(i, false);
        }
    }

    /// How many addresses are taken.
    pub fn used(&self) -> u32 {
        self.used.count()
    }

    fn index(&self, ip: &str) -> Result<u32, AllocError> {
        let not_in_range = || AllocError::IpNotInRange {
            ip: ip.to_owned(),
            range: self.cidr.to_string(),
        };
        let addr: Ipv4Addr = ip
            .parse()
            .map_err(|_| AllocError::Invalid(format!("{ip:?} is not a valid IP address")))?;
        if !self.cidr.contains(addr) {
            return Err(not_in_range());
        }
        let off = u32::from(addr) - u32::from(self.cidr.network);
        if off == 0 || u64::from(off) == self.cidr.size() - 1 {
            return Err(not_in_range());
        }
        Ok(off - 1)
    }
}

/// NodePort allocator.
#[derive(Debug, Clone)]
pub struct NodePorts {
    first: u16,
    last: u16,
    used: Bitmap,
}

impl NodePorts {
    /// An empty allocator over `first..=last`.
    pub fn new(first: u16, last: u16) -> NodePorts {
        NodePorts {
            first,
            last,
            used: Bitmap::new(u32::from(last.saturating_sub(first)) + 1),
        }
    }

    /// The allocator with the NodePorts of these services already taken.
    pub fn rebuild(first: u16, last: u16, services: &[Service]) -> NodePorts {
        let mut a = NodePorts::new(first, last);
        for s in services {
            for p in service_node_ports(s) {
                let _ = a.allocate_specific(p);
            }
        }
        a
    }

    /// The next free port.
    pub fn allocate(&mut self) -> Result<u16, AllocError> {
        let i = self.used.next(None).ok_or(AllocError::Full)?;
        Ok(self.first + i as u16)
    }

    /// Takes a requested port.
    pub fn allocate_specific(&mut self, port: i32) -> Result<u16, AllocError> {
        if port < i32::from(self.first) || port > i32::from(self.last) {
            return Err(AllocError::PortNotInRange {
                range: format!("{}-{}", self.first, self.last),
            });
        }
        if !self.used.claim((port - i32::from(self.first)) as u32) {
            return Err(AllocError::PortAllocated);
        }
        Ok(port as u16)
    }

    /// Gives a port back.
    pub fn release(&mut self, port: i32) {
        if port >= i32::from(self.first) && port <= i32::from(self.last) {
            self.used.set((port - i32::from(self.first)) as u32, false);
        }
    }
}

fn service_ips(s: &Service) -> Vec<String> {
    let Some(spec) = &s.spec else { return vec![] };
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if let Some(ip) = &spec.cluster_ip
        && !ips.contains(ip)
    {
        ips.push(ip.clone());
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips
}

fn service_node_ports(s: &Service) -> Vec<i32> {
    s.spec
        .as_ref()
        .and_then(|sp| sp.ports.as_ref())
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.node_port)
                .filter(|p| *p != 0)
                .collect()
        })
        .unwrap_or_default()
}

/// Fills in a new service's ClusterIP and NodePorts, honouring requested values. On
/// error nothing stays allocated and the message names the field.
pub fn assign_service(
    svc: &mut Service,
    ips: &mut ClusterIps,
    ports: &mut NodePorts,
) -> Result<(), String> {
    let Some(spec) = svc.spec.as_mut() else {
        return Ok(());
    };
    let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_owned());
    if type_ == "ExternalName" {
        return Ok(());
    }
    let mut taken_ip: Option<Ipv4Addr> = None;
    let requested = spec.cluster_ip.clone().filter(|ip| !ip.is_empty());
    match requested.as_deref() {
        Some("None") => {}
        Some(ip) => {
            taken_ip = Some(ips.allocate_specific(ip).map_err(|e| {
                format!("spec.clusterIPs: Invalid value: [{ip:?}]: failed to allocate IP {ip}: {e}")
            })?);
        }
        None => {
            taken_ip = Some(
                ips.allocate()
                    .map_err(|e| format!("failed to allocate a serviceIP: {e}"))?,
            );
        }
    }
    let mut taken_ports: Vec<i32> = Vec::new();
    let undo = |ips: &mut ClusterIps, ports: &mut NodePorts, taken_ports: &[i32]| {
        if let Some(ip) = taken_ip {
            ips.release(&ip.to_string());
        }
        for p in taken_ports {
            ports.release(*p);
        }
    };
    if type_ == "NodePort" || type_ == "LoadBalancer" {
        for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
            let result = match p.node_port.filter(|n| *n != 0) {
                Some(n) => ports
                    .allocate_specific(n)
                    .map_err(|e| format!("spec.ports[{i}].nodePort: Invalid value: {n}: {e}")),
                None => ports.allocate().map_err(|e| {
                    format!("spec.ports[{i}].nodePort: failed to allocate a nodePort: {e}")
                }),
            };
            match result {
                Ok(n) => {
                    p.node_port = Some(i32::from(n));
                    taken_ports.push(i32::from(n));
                }
                Err(e) => {
                    undo(ips, ports, &taken_ports);
                    return Err(e);
                }
            }
        }
    }
    if let Some(ip) = taken_ip {
        spec.cluster_ip = Some(ip.to_string());
        spec.cluster_ips = Some(vec![ip.to_string()]);
    } else {
        spec.cluster_ips = Some(vec!["None".to_owned()]);
    }
    Ok(())
}

/// Gives a deleted service's ClusterIP and NodePorts back.
pub fn release_service(svc: &Service, ips: &mut ClusterIps, ports: &mut NodePorts) {
    for ip in service_ips(svc) {
        ips.release(&ip);
    }
    for p in service_node_ports(svc) {
        ports.release(p);
    }
}

/// Gives every node without a pod CIDR the next free `/mask` of `cluster_cidr`, after
/// taking those already assigned. Nodes are served in name order, so the result is
/// deterministic.
pub fn assign_pod_cidrs(
    cluster_cidr: &str,
    mask: u8,
    nodes: &[Node],
) -> Result<Vec<Action>, AllocError> {
    let cluster = Cidr::parse(cluster_cidr)?;
    if mask < cluster.prefix || mask > 30 {
        return Err(AllocError::Invalid(format!(
            "node CIDR mask /{mask} does not fit in {cluster}"
        )));
    }
    let subnets = 1u32 << (mask - cluster.prefix).min(24);
    let step = 1u32 << (32 - mask);
    let mut used = Bitmap::new(subnets);
    let pod_cidr = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .filter(|c| !c.is_empty())
    };
    for n in nodes {
        if let Some(c) = pod_cidr(n).and_then(|c| Cidr::parse(&c).ok())
            && c.prefix == mask
            && cluster.contains(c.network)
        {
            used.claim((u32::from(c.network) - u32::from(cluster.network)) / step);
        }
    }
    let mut waiting: Vec<&Node> = nodes.iter().filter(|n| pod_cidr(n).is_none()).collect();
    waiting.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut actions = Vec::new();
    for n in waiting {
        let name = n.metadata.name.clone().unwrap_or_default();
        match used.next(None) {
            Some(i) => {
                let net = Ipv4Addr::from(u32::from(cluster.network) + i * step);
                actions.push(Action::SetPodCidr {
                    node: name,
                    cidr: format!("{net}/{mask}"),
                });
            }
            None => actions.push(Action::Event(Event::normal(
                reference("v1", "Node", &n.metadata),
                "CIDRNotAvailable",
                format!("Node {name} status is now: CIDRNotAvailable"),
            ))),
        }
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::from;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        from(json!({"metadata": {"name": "s", "namespace": "default"}, "spec": v}))
    }

    #[test]
    fn cluster_ips_skip_network_broadcast_and_the_kubernetes_address() {
        let mut a = ClusterIps::new("10.43.0.0/29").unwrap();
        assert_eq!(a.kubernetes_service_ip(), Ipv4Addr::new(10, 43, 0, 1));
        let got: Vec<String> = (0..5).map(|_| a.allocate().unwrap().to_string()).collect();
        assert_eq!(
            got,
            [
                "10.43.0.2",
                "10.43.0.3",
                "10.43.0.4",
                "10.43.0.5",
                "10.43.0.6"
            ]
        );
        assert_eq!(a.allocate(), Err(AllocError::Full));
        assert_eq!(
            a.allocate_specific("10.43.0.1").unwrap(),
            Ipv4Addr::new(10, 43, 0, 1)
        );
        a.release("10.43.0.4");
        assert_eq!(a.allocate().unwrap().to_string(), "10.43.0.4");
    }

    #[test]
    fn requested_ips_are_checked() {
        let mut a = ClusterIps::new(DEFAULT_SERVICE_CIDR).unwrap();
        a.allocate_specific("10.43.5.5").unwrap();
        assert_eq!(
            a.allocate_specific("10.43.5.5").unwrap_err().to_string(),
            "provided IP is already allocated"
        );
        assert_eq!(
            a.allocate_specific("10.44.0.1").unwrap_err().to_string(),
            "the provided IP (10.44.0.1) is not in the valid range. The range of valid IPs is 10.43.0.0/16"
        );
        assert!(a.allocate_specific("10.43.255.255").is_err(), "broadcast");
        assert!(a.allocate_specific("10.43.0.0").is_err(), "network");
        assert!(
            ClusterIps::new("10.43.0.1/16")
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
        assert!(ClusterIps::new("banana").is_err());
    }

    #[test]
    fn allocations_stay_unique_across_a_restart() {
        let mut ips = ClusterIps::new(DEFAULT_SERVICE_CIDR).unwrap();
        let mut ports = NodePorts::new(30000, 32767);
        let mut stored = Vec::new();
        for _ in 0..50 {
            let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}));
            assign_service(&mut s, &mut ips, &mut ports).unwrap();
            stored.push(s);
        }
        // "Restart": rebuild from what was stored and keep allocating.
        let mut ips = ClusterIps::rebuild(DEFAULT_SERVICE_CIDR, &stored).unwrap();
        let mut ports = NodePorts::rebuild(30000, 32767, &stored);
        assert_eq!(ips.used(), 50);
        for _ in 0..50 {
            let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
            assign_service(&mut s, &mut ips, &mut ports).unwrap();
            stored.push(s);
        }
        let mut all_ips: Vec<String> = stored
            .iter()
            .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap())
            .collect();
        let mut all_ports: Vec<i32> = stored.iter().flat_map(service_node_ports).collect();
        let (n_ips, n_ports) = (all_ips.len(), all_ports.len());
        all_ips.sort();
        all_ips.dedup();
        all_ports.sort();
        all_ports.dedup();
        assert_eq!((all_ips.len(), all_ports.len()), (n_ips, n_ports));
        assert!(!all_ips.contains(&"10.43.0.1".to_owned()));
        assert!(all_ports.iter().all(|p| (30000..=32767).contains(p)));
    }

    #[test]
    fn a_failed_assignment_leaves_nothing_allocated() {
        let mut ips = ClusterIps::new(DEFAULT_SERVICE_CIDR).unwrap();
        let mut ports = NodePorts::new(30000, 32767);
        let mut first =
            svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}));
        assign_service(&mut first, &mut ips, &mut ports).unwrap();
        let mut clash = svc(
            json!({"type": "NodePort", "ports": [{"port": 81}, {"port": 80, "nodePort": 30080}]}),
        );
        let err = assign_service(&mut clash, &mut ips, &mut ports).unwrap_err();
        assert_eq!(
            err,
            "spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated"
        );
        assert_eq!(ips.used(), 1, "the clashing service's IP went back");
        assert_eq!(
            ports.allocate_specific(30000),
            Ok(30000),
            "its first port went back too"
        );
        let mut out = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}));
        assert_eq!(
            assign_service(&mut out, &mut ips, &mut ports).unwrap_err(),
            "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
    }

    #[test]
    fn headless_and_external_name_services_get_no_ip() {
        let mut ips = ClusterIps::new(DEFAULT_SERVICE_CIDR).unwrap();
        let mut ports = NodePorts::new(30000, 32767);
        let mut headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assign_service(&mut headless, &mut ips, &mut ports).unwrap();
        assert_eq!(
            headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        let mut ext = svc(json!({"type": "ExternalName", "externalName": "example.com"}));
        assign_service(&mut ext, &mut ips, &mut ports).unwrap();
        assert_eq!(ips.used(), 0);
        let mut plain = svc(json!({"ports": [{"port": 80}]}));
        assign_service(&mut plain, &mut ips, &mut ports).unwrap();
        assert_eq!(
            plain.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.43.0.2")
        );
        assert!(
            plain.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
                .node_port
                .is_none()
        );
        release_service(&plain, &mut ips, &mut ports);
        assert_eq!(ips.used(), 0);
    }

    #[test]
    fn pod_cidrs_are_unique_24s_also_after_a_restart() {
        let node = |name: &str, cidr: Option<&str>| -> Node {
            from(json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr}}))
        };
        let actions = assign_pod_cidrs(
            DEFAULT_CLUSTER_CIDR,
            24,
            &[
                node("b", None),
                node("a", Some("10.42.0.0/24")),
                node("c", None),
            ],
        )
        .unwrap();
        assert_eq!(
            actions,
            vec![
                Action::SetPodCidr {
                    node: "b".into(),
                    cidr: "10.42.1.0/24".into()
                },
                Action::SetPodCidr {
                    node: "c".into(),
                    cidr: "10.42.2.0/24".into()
                },
            ]
        );
        let small = assign_pod_cidrs(
            "10.42.0.0/23",
            24,
            &[
                node("a", Some("10.42.0.0/24")),
                node("b", Some("10.42.1.0/24")),
                node("c", None),
            ],
        )
        .unwrap();
        assert!(matches!(&small[..], [Action::Event(e)] if e.reason == "CIDRNotAvailable"));
        assert!(assign_pod_cidrs(DEFAULT_CLUSTER_CIDR, 8, &[]).is_err());
    }
}
