//! Flags of `flotilla-agent run`, with the environment variables k3s users expect
//! (`FLOTILLA_SERVER`, `FLOTILLA_TOKEN` as `K3S_URL`, `K3S_TOKEN`), and the checks of
//! node names, labels and taints.

use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::token::{JoinToken, Server};

/// `flotilla-agent run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The controller's agent hub, e.g. https://10.0.0.1:6444.
    #[arg(long, env = "FLOTILLA_SERVER")]
    pub server: Server,
    /// Join token from the controller's <data-dir>/node-token; only needed until this
    /// node has joined.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    pub token: Option<JoinToken>,
    /// Where images, pod state and the node's credentials live; archives in its
    /// images/ folder are imported at start.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = flotilla_images::store::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Where the container runtime keeps its state.
    #[arg(long, default_value = flotilla_runtime::container::DEFAULT_ROOT)]
    pub runtime_root: PathBuf,
    /// Parent cgroup of every pod, relative to each hierarchy's root.
    #[arg(long, default_value = "/flotilla/pods")]
    pub cgroup_root: String,
    /// Registries config for pulls: mirrors, credentials, insecure registries.
    #[arg(long, default_value = flotilla_images::registries::DEFAULT_PATH)]
    pub registries: PathBuf,
    /// The node's name (default: the host name, lower-cased).
    #[arg(long, env = "FLOTILLA_NODE_NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the address of the default-route interface).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// A label to register the node with, key=value (repeatable).
    #[arg(long = "node-label", value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,
    /// A taint to register the node with, key=value:Effect or key:Effect (repeatable).
    #[arg(long = "node-taint", value_parser = parse_taint)]
    pub node_taints: Vec<(String, String, String)>,
}

/// The node name to use: the flag, else the host name lower-cased (as the kubelet).
pub fn node_name(flag: Option<&str>) -> Result<String, String> {
    match flag {
        Some(name) => Ok(name.to_string()),
        None => {
            let host = rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .to_lowercase();
            parse_node_name(&host).map_err(|e| {
                format!("the host name cannot be the node name ({e}); pass --node-name")
            })
        }
    }
}

/// A node name: a DNS subdomain (RFC 1123: lower case, digits, '-' and '.', at most 253).
pub fn parse_node_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid node name {s:?}: use lower-case letters, digits, '-' and '.' (a DNS subdomain)"
        ))
    }
}

/// A label key: an optional DNS-subdomain prefix and '/', then a name of at most 63
/// alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(|p| parse_node_name(p).is_ok()) && valid_value(name) && !name.is_empty()
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.', starting and
/// ending alphanumeric.
fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// `key=value`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must be key=value"))?;
    if !valid_key(k) {
        return Err(format!("label {s:?}: invalid key {k:?}"));
    }
    if !valid_value(v) {
        return Err(format!("label {s:?}: invalid value {v:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `key=value:Effect` or `key:Effect`, Effect one of NoSchedule, PreferNoSchedule,
/// NoExecute.
pub fn parse_taint(s: &str) -> Result<(String, String, String), String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("taint {s:?} must be key=value:Effect or key:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint {s:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
    if !valid_key(k) {
        return Err(format!("taint {s:?}: invalid key {k:?}"));
    }
    if !valid_value(v) {
        return Err(format!("taint {s:?}: invalid value {v:?}"));
    }
    Ok((k.to_string(), v.to_string(), effect.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_taints_and_names() {
        assert_eq!(
            parse_label("example.com/site=north").unwrap(),
            ("example.com/site".into(), "north".into())
        );
        assert_eq!(
            parse_label("empty=").unwrap(),
            ("empty".into(), String::new())
        );
        for bad in ["site", "=x", "a b=c", "site=-x", "Bad_Prefix/x=y"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_taint("dedicated=edge:NoSchedule").unwrap(),
            ("dedicated".into(), "edge".into(), "NoSchedule".into())
        );
        assert_eq!(
            parse_taint("gpu:NoExecute").unwrap(),
            ("gpu".into(), String::new(), "NoExecute".into())
        );
        let err = parse_taint("gpu=x:Never").unwrap_err();
        assert!(err.contains("effect \"Never\""), "{err}");
        assert!(parse_taint("gpu=x").is_err());
        assert!(parse_node_name("pi-04.site").is_ok());
        for bad in ["", "Pi", "-a", "a..b", "a_b"] {
            assert!(parse_node_name(bad).is_err(), "{bad}");
        }
    }
}
