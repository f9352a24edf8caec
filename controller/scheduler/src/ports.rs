//! Host ports: which `(protocol, hostIP, hostPort)` triples a pod claims on its node and
//! whether two claims collide. An empty host IP means `0.0.0.0`, which collides with
//! every address for the same protocol and port.

use k8s_openapi::api::core::v1::PodSpec;

/// The wildcard host address.
const ANY: &str = "0.0.0.0";

/// One host port claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The host address, `0.0.0.0` for all.
    pub ip: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Do two claims collide?
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == ANY || other.ip == ANY)
    }
}

/// The host ports a pod claims (app and init containers; ports with hostPort 0 claim none).
pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    let mut out = Vec::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            let Some(port) = p.host_port.filter(|p| *p > 0) else {
                continue;
            };
            let ip = p
                .host_ip
                .as_deref()
                .filter(|ip| !ip.is_empty())
                .unwrap_or(ANY);
            out.push(HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                ip: ip.to_owned(),
                port,
            });
        }
    }
    out
}

/// Does any of `wanted` collide with any of `used`?
pub fn any_conflict(wanted: &[HostPort], used: &[HostPort]) -> bool {
    wanted.iter().any(|w| used.iter().any(|u| w.conflicts(u)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hp(protocol: &str, ip: &str, port: i32) -> HostPort {
        HostPort {
            protocol: protocol.into(),
            ip: ip.into(),
            port,
        }
    }

    #[test]
    fn collisions_respect_protocol_and_address() {
        assert!(hp("TCP", ANY, 80).conflicts(&hp("TCP", ANY, 80)));
        assert!(hp("TCP", ANY, 80).conflicts(&hp("TCP", "10.0.0.1", 80)));
        assert!(hp("TCP", "10.0.0.1", 80).conflicts(&hp("TCP", ANY, 80)));
        assert!(hp("TCP", "10.0.0.1", 80).conflicts(&hp("TCP", "10.0.0.1", 80)));
        assert!(!hp("TCP", "10.0.0.1", 80).conflicts(&hp("TCP", "10.0.0.2", 80)));
        assert!(!hp("TCP", ANY, 80).conflicts(&hp("UDP", ANY, 80)));
        assert!(!hp("TCP", ANY, 80).conflicts(&hp("TCP", ANY, 81)));
    }

    #[test]
    fn pod_host_ports_default_protocol_and_address() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": [{"name": "a", "ports": [
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"},
            {"containerPort": 9000}
        ]}]}))
        .unwrap();
        assert_eq!(
            host_ports(&spec),
            vec![hp("TCP", ANY, 8080), hp("UDP", "127.0.0.1", 53)]
        );
        assert!(any_conflict(
            &host_ports(&spec),
            &[hp("TCP", "10.1.1.1", 8080)]
        ));
        assert!(!any_conflict(
            &host_ports(&spec),
            &[hp("TCP", "10.1.1.1", 53)]
        ));
    }
}
