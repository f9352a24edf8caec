//! The `serve` flags of the scheduler and controllers, named as kube-controller-manager
//! and kube-apiserver name them (`--node-monitor-grace-period=40s`,
//! `--cluster-cidr`, `--service-cidr`, `--service-node-port-range`, `--controllers`),
//! and their validation: a bad value stops the controller at start with an error
//! naming the flag and what is wrong with it.

use anyhow::{Result, bail};
use flotilla_controllers::allocators::{self, Cidr};
use flotilla_controllers::node_lifecycle;
use std::collections::BTreeSet;
use std::time::Duration;

/// Every loop `--controllers` can name (kube-controller-manager's names, plus the
/// scheduler, which runs in the same process here).
pub const CONTROLLERS: &[&str] = &[
    "daemonset",
    "deployment",
    "endpoint",
    "job",
    "nodeipam",
    "nodelifecycle",
    "replicaset",
    "scheduler",
];

/// Settings of the scheduler and controllers, as `serve` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Flags {
    /// How long a node may stop renewing its Lease before it is marked Unknown and
    /// gets the unreachable NoExecute taint (a duration: 40s, 2m, 1m30s).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// tolerationSeconds of pods without their own toleration for the
    /// node.kubernetes.io/not-ready:NoExecute taint.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(i64).range(0..))]
    pub default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of pods without their own toleration for the
    /// node.kubernetes.io/unreachable:NoExecute taint.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(i64).range(0..))]
    pub default_unreachable_toleration_seconds: i64,
    /// IPv4 range of pod addresses; each node gets a /24 of it as its podCIDR.
    #[arg(long, default_value = allocators::DEFAULT_CLUSTER_CIDR, value_parser = parse_pod_cidr)]
    pub cluster_cidr: String,
    /// IPv4 range ClusterIPs are allocated from (the first address is the
    /// `kubernetes` service's).
    #[arg(long, default_value = allocators::DEFAULT_SERVICE_CIDR, value_parser = parse_service_cidr)]
    pub service_cidr: String,
    /// Inclusive range of NodePorts (FIRST-LAST).
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: PortRange,
    /// Which loops run: a comma-separated list where `*` means all, `NAME` turns one
    /// on and `-NAME` turns one off (e.g. `*,-scheduler`). Names: daemonset,
    /// deployment, endpoint, job, nodeipam, nodelifecycle, replicaset, scheduler.
    #[arg(long, default_value = "*", value_parser = parse_controllers)]
    pub controllers: Enabled,
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// The loops `--controllers` turned on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enabled(BTreeSet<&'static str>);

impl Enabled {
    /// Whether the loop called `name` (one of [`CONTROLLERS`]) runs.
    pub fn on(&self, name: &str) -> bool {
        debug_assert!(CONTROLLERS.contains(&name), "unknown loop {name}");
        self.0.contains(name)
    }
}

impl Flags {
    /// The node lifecycle controller's timings.
    pub fn lifecycle(&self) -> node_lifecycle::Config {
        node_lifecycle::Config {
            grace_period: self.node_monitor_grace_period,
            not_ready_toleration_seconds: self.default_not_ready_toleration_seconds,
            unreachable_toleration_seconds: self.default_unreachable_toleration_seconds,
        }
    }
}

impl Default for Flags {
    fn default() -> Flags {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            flags: Flags,
        }
        let m = <Wrap as clap::CommandFactory>::command().get_matches_from(["x"]);
        Wrap::from_arg_matches(&m).expect("defaults parse").flags
    }
}

/// Parses a Go-style duration (`40s`, `2m`, `1m30s`, `500ms`); zero and negative
/// durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let d: jiff::SignedDuration = s.trim().parse().map_err(|_| {
        anyhow::anyhow!("{s:?} is not a duration (write it with a unit, like 40s, 2m or 1m30s)")
    })?;
    if d.is_negative() || d.is_zero() {
        bail!("{s:?}: the duration must be positive");
    }
    Ok(Duration::try_from(d)?)
}

fn parse_cidr(s: &str, min_prefix: u8, max_prefix: u8) -> Result<String> {
    let c = Cidr::parse(s.trim()).map_err(|e| anyhow::anyhow!("{e} (expected a.b.c.d/n)"))?;
    if c.prefix < min_prefix || c.prefix > max_prefix {
        bail!("{s:?}: the prefix length must be between /{min_prefix} and /{max_prefix}");
    }
    Ok(s.trim().to_owned())
}

/// A cluster CIDR: room for at least one /24.
fn parse_pod_cidr(s: &str) -> Result<String> {
    parse_cidr(s, 8, 24)
}

/// A service CIDR: at least a /28 (the network, broadcast and `kubernetes` service
/// addresses are not handed out), at most a /12 as kube-apiserver allows.
fn parse_service_cidr(s: &str) -> Result<String> {
    parse_cidr(s, 12, 28)
}

/// Parses `FIRST-LAST` (or `FIRST+SIZE`, as kube-apiserver accepts).
pub fn parse_port_range(s: &str) -> Result<PortRange> {
    let bad =
        || anyhow::anyhow!("{s:?} is not a port range (expected FIRST-LAST, e.g. 30000-32767)");
    let s = s.trim();
    let (first, last) = if let Some((a, b)) = s.split_once('-') {
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        (a, b)
    } else if let Some((a, n)) = s.split_once('+') {
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let n: u16 = n.trim().parse().map_err(|_| bad())?;
        if n == 0 {
            bail!("{s:?}: the range is empty");
        }
        (a, a.checked_add(n - 1).ok_or_else(bad)?)
    } else {
        return Err(bad());
    };
    if first == 0 || first > last {
        bail!("{s:?}: the first port must be at least 1 and not above the last");
    }
    Ok(PortRange { first, last })
}

/// Parses kube-controller-manager's `--controllers` list.
pub fn parse_controllers(s: &str) -> Result<Enabled> {
    let mut on = BTreeSet::new();
    let mut off = BTreeSet::new();
    let mut star = false;
    for item in s.split(',').map(str::trim) {
        if item == "*" {
            star = true;
            continue;
        }
        let (name, enable) = match item.strip_prefix('-') {
            Some(n) => (n, false),
            None => (item, true),
        };
        let Some(known) = CONTROLLERS.iter().find(|c| **c == name) else {
            bail!(
                "unknown controller {name:?} (known: {}; `*` means all)",
                CONTROLLERS.join(", ")
            );
        };
        if enable {
            on.insert(*known);
        } else {
            off.insert(*known);
        }
    }
    if let Some(both) = on.intersection(&off).next() {
        bail!("controller {both:?} is both turned on and off");
    }
    let mut set: BTreeSet<&'static str> = if star {
        CONTROLLERS.iter().copied().collect()
    } else {
        BTreeSet::new()
    };
    set.extend(on);
    set.retain(|c| !off.contains(c));
    Ok(Enabled(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go_durations() {
        assert_eq!(parse_duration("40s").unwrap(), Duration::from_secs(40));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        let e = parse_duration("40").unwrap_err().to_string();
        assert!(e.contains("with a unit"), "{e}");
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn port_ranges_are_checked() {
        assert_eq!(
            parse_port_range("30000-32767").unwrap(),
            PortRange {
                first: 30000,
                last: 32767
            }
        );
        assert_eq!(
            parse_port_range("30000+100").unwrap(),
            PortRange {
                first: 30000,
                last: 30099
            }
        );
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("30000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("30000-70000").is_err());
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(parse_pod_cidr("10.42.0.0/16").is_ok());
        assert!(parse_pod_cidr("10.42.0.0/25").is_err(), "no room for a /24");
        assert!(
            parse_pod_cidr("10.42.0.1/16").is_err(),
            "not a network address"
        );
        assert!(parse_service_cidr("10.43.0.0/16").is_ok());
        assert!(parse_service_cidr("10.0.0.0/8").is_err(), "too large");
        assert!(parse_service_cidr("fd00::/108").is_err());
    }

    #[test]
    fn controllers_lists_turn_loops_on_and_off() {
        let all = parse_controllers("*").unwrap();
        assert!(CONTROLLERS.iter().all(|c| all.on(c)));
        let no_sched = parse_controllers("*,-scheduler").unwrap();
        assert!(!no_sched.on("scheduler") && no_sched.on("deployment"));
        let only = parse_controllers("scheduler,job").unwrap();
        assert!(only.on("scheduler") && only.on("job") && !only.on("deployment"));
        let e = parse_controllers("*,-schedular").unwrap_err().to_string();
        assert!(e.contains("unknown controller \"schedular\""), "{e}");
        assert!(parse_controllers("job,-job").is_err());
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let f = Flags::default();
        assert_eq!(f.node_monitor_grace_period, Duration::from_secs(40));
        assert_eq!(f.default_unreachable_toleration_seconds, 300);
        assert_eq!(f.cluster_cidr, "10.42.0.0/16");
        assert_eq!(f.service_cidr, "10.43.0.0/16");
        assert_eq!(
            f.service_node_port_range,
            PortRange {
                first: 30000,
                last: 32767
            }
        );
    }
}
