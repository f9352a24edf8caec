//! The registries config file (default `/etc/flotilla/registries.yaml`), in the spirit of
//! k3s's `registries.yaml`: per-registry mirrors, and per-host credentials and TLS
//! settings. Also decides the endpoints a pull tries, in order.
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["https://mirror.example.com:5000"]
//! configs:
//!   "mirror.example.com:5000":
//!     auth: {username: fleet, password: secret}
//!     tls: {insecure_skip_verify: true}
//! ```
//!
//! Plain HTTP is used for endpoints written as `http://…`, for loopback registries
//! (127.0.0.0/8, `localhost`, `[::1]`), and as a fallback after HTTPS for hosts whose
//! config sets `tls.insecure_skip_verify` (like Docker's insecure registries).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Default location of the registries config.
pub const DEFAULT_PATH: &str = "/etc/flotilla/registries.yaml";

/// The parsed file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Registry name (`docker.io`, `ghcr.io`, or `*` for all) → mirrors.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Host (as in an endpoint URL or an image name) → credentials and TLS.
    #[serde(default)]
    pub configs: BTreeMap<String, HostConfig>,
}

/// Mirrors of one registry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Endpoint URLs, tried in order before the registry itself.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

/// Settings for one host.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Credentials.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// Registry credentials.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password or access token.
    #[serde(default)]
    pub password: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Auth {{ username: {:?}, password: <hidden> }}",
            self.username
        )
    }
}

/// TLS settings of a host.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Accept any certificate (and fall back to plain HTTP).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place to fetch an image from.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `scheme://host[:port]` with no trailing slash; `/v2/…` is appended.
    pub base: String,
    /// `host[:port]`.
    pub host: String,
    /// Credentials for this host.
    pub auth: Option<Auth>,
    /// Skip certificate verification.
    pub insecure: bool,
    /// A mirror (failures fall through to the next endpoint).
    pub mirror: bool,
}

impl RegistriesConfig {
    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<RegistriesConfig> {
        let cfg: RegistriesConfig = if text.trim().is_empty() {
            RegistriesConfig::default()
        } else {
            serde_yaml_ng::from_str(text).context("invalid registries config")?
        };
        for (name, m) in &cfg.mirrors {
            for e in &m.endpoint {
                split_url(e).with_context(|| format!("mirror endpoint {e:?} of {name:?}"))?;
            }
        }
        Ok(cfg)
    }

    /// Loads `path`; a missing file is an empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<RegistriesConfig> {
        match std::fs::read_to_string(path) {
            Ok(t) => Self::parse(&t).with_context(|| format!("in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn host(&self, host: &str) -> Option<&HostConfig> {
        self.configs.get(host)
    }

    /// Endpoints to try for `registry` (an image name's registry part), in order:
    /// its mirrors (or those of `*`), then the registry itself.
    pub fn endpoints(&self, registry: &str, api_host: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mirror = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        for url in mirror.map(|m| m.endpoint.as_slice()).unwrap_or_default() {
            if let Ok((scheme, host)) = split_url(url) {
                let hc = self.host(&host);
                out.push(Endpoint {
                    base: format!("{scheme}://{host}"),
                    auth: hc.and_then(|c| c.auth.clone()),
                    insecure: hc
                        .and_then(|c| c.tls.as_ref())
                        .is_some_and(|t| t.insecure_skip_verify),
                    host,
                    mirror: true,
                });
            }
        }
        let hc = self.host(registry).or_else(|| self.host(api_host));
        let auth = hc.and_then(|c| c.auth.clone());
        let insecure = hc
            .and_then(|c| c.tls.as_ref())
            .is_some_and(|t| t.insecure_skip_verify);
        let mk = |scheme: &str| Endpoint {
            base: format!("{scheme}://{api_host}"),
            host: api_host.to_string(),
            auth: auth.clone(),
            insecure,
            mirror: false,
        };
        if is_loopback(api_host) {
            out.push(mk("http"));
        } else {
            out.push(mk("https"));
            if insecure {
                out.push(mk("http"));
            }
        }
        out
    }
}

/// `scheme://host[:port][/path]` → (scheme, host[:port]); a missing scheme means https.
fn split_url(url: &str) -> Result<(String, String)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("https".to_string(), url),
    };
    if scheme != "http" && scheme != "https" {
        bail!("unsupported scheme {scheme:?} (use http or https)");
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        bail!("missing host");
    }
    Ok((scheme, host.to_string()))
}

/// True for `localhost`, 127.0.0.0/8 and `::1`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example.com:5000"
      - "http://10.0.0.5:5000/v2"
configs:
  "mirror.example.com:5000":
    auth:
      username: fleet
      password: s3cret
    tls:
      insecure_skip_verify: true
  "private.example.com":
    auth: {username: u, password: p}
"#;

    #[test]
    fn parses_k3s_style_config() {
        let cfg = RegistriesConfig::parse(YAML).unwrap();
        let eps = cfg.endpoints("docker.io", "registry-1.docker.io");
        assert_eq!(
            eps.iter().map(|e| e.base.as_str()).collect::<Vec<_>>(),
            [
                "https://mirror.example.com:5000",
                "http://10.0.0.5:5000",
                "https://registry-1.docker.io"
            ]
        );
        assert_eq!(eps[0].auth.as_ref().unwrap().username, "fleet");
        assert!(eps[0].insecure && eps[0].mirror);
        assert!(eps[1].auth.is_none());
        assert!(!eps[2].mirror);
        let eps = cfg.endpoints("private.example.com", "private.example.com");
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].auth.as_ref().unwrap().password, "p");
        assert!(
            !format!("{:?}", eps[0].auth).contains('p')
                || !format!("{:?}", eps[0].auth).contains("\"p\"")
        );
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        let cfg = RegistriesConfig::default();
        assert_eq!(
            cfg.endpoints("127.0.0.1:5000", "127.0.0.1:5000")[0].base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            cfg.endpoints("localhost:5000", "localhost:5000")[0].base,
            "http://localhost:5000"
        );
        assert_eq!(
            cfg.endpoints("example.com", "example.com")[0].base,
            "https://example.com"
        );
        assert!(is_loopback("[::1]:5000"));
        assert!(is_loopback("127.3.4.5"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn insecure_hosts_fall_back_to_http() {
        let cfg = RegistriesConfig::parse(
            "configs:\n  reg.lan:\n    tls:\n      insecure_skip_verify: true\n",
        )
        .unwrap();
        let eps = cfg.endpoints("reg.lan", "reg.lan");
        assert_eq!(
            eps.iter().map(|e| e.base.as_str()).collect::<Vec<_>>(),
            ["https://reg.lan", "http://reg.lan"]
        );
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let err =
            RegistriesConfig::parse("mirrors:\n  docker.io:\n    endpoints: [x]\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `endpoints`"),
            "{err:#}"
        );
        let err = RegistriesConfig::parse("mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("unsupported scheme"), "{err:#}");
        assert!(RegistriesConfig::parse("").unwrap().mirrors.is_empty());
    }
}
