//! The k3s-style join token `K10<sha256 hex of the CA certificate DER>::node:<secret>`
//! and the controller address `https://HOST[:PORT]` the agent dials.

use std::fmt;
use std::str::FromStr;

/// Port of the controller's agent hub when `--server` names none.
pub const DEFAULT_HUB_PORT: u16 = 6444;

/// A parsed join token: the pinned CA hash and the secret sent once at join.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_hash: [u8; 32],
    /// The shared secret the hub checks before signing a node certificate.
    pub secret: String,
}

/// Never print the secret, not even in debug logs.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "K10{}::node:<redacted>", hex::encode(self.ca_hash))
    }
}

impl FromStr for JoinToken {
    type Err = String;

    fn from_str(s: &str) -> Result<JoinToken, String> {
        const SHAPE: &str = "expected K10<64 hex digits>::node:<secret> (the controller writes it to <data-dir>/node-token)";
        let s = s.trim();
        let rest = s
            .strip_prefix("K10")
            .ok_or_else(|| format!("join token does not start with K10; {SHAPE}"))?;
        let (hash, rest) = rest
            .split_once("::")
            .ok_or_else(|| format!("join token has no '::' separator; {SHAPE}"))?;
        let mut ca_hash = [0u8; 32];
        hex::decode_to_slice(hash, &mut ca_hash).map_err(|_| {
            format!("join token's CA hash {hash:?} is not 64 hexadecimal digits; {SHAPE}")
        })?;
        let secret = rest
            .strip_prefix("node:")
            .ok_or_else(|| format!("join token's secret does not start with 'node:'; {SHAPE}"))?;
        if secret.is_empty() {
            return Err(format!("join token has an empty secret; {SHAPE}"));
        }
        Ok(JoinToken {
            ca_hash,
            secret: secret.to_string(),
        })
    }
}

/// The controller's hub address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or IP address (without brackets), also the TLS server name.
    pub host: String,
    pub port: u16,
}

impl Server {
    /// `host:port` for connecting (IPv6 addresses in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl FromStr for Server {
    type Err = String;

    fn from_str(s: &str) -> Result<Server, String> {
        let rest = s.strip_prefix("https://").ok_or_else(|| {
            format!("server {s:?} must be an https:// URL, e.g. https://10.0.0.1:6444")
        })?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "server {s:?} must be https://HOST[:PORT] without a path or user"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("server {s:?} has an unclosed '[' in its address"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| {
                        format!("server {s:?}: expected ':PORT' after the address")
                    })?),
                ),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("server {s:?} has no host"));
        }
        let port = match port {
            None => DEFAULT_HUB_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("server {s:?} has an invalid port {p:?}"))?,
        };
        Ok(Server {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn token_parses_and_hides_its_secret() {
        let token: JoinToken = format!("K10{HASH}::node:s3cret").parse().unwrap();
        assert_eq!(hex::encode(token.ca_hash), HASH);
        assert_eq!(token.secret, "s3cret");
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn bad_tokens_say_what_is_wrong() {
        let cases = [
            ("s3cret", "does not start with K10"),
            (&format!("K10{HASH}:node:x"), "no '::' separator"),
            ("K10abc::node:x", "not 64 hexadecimal digits"),
            (
                &format!("K10{HASH}::server:x"),
                "does not start with 'node:'",
            ),
            (&format!("K10{HASH}::node:"), "empty secret"),
        ];
        for (token, message) in cases {
            let err = token.parse::<JoinToken>().unwrap_err();
            assert!(err.contains(message), "{token}: {err}");
            assert!(err.contains("node-token"), "{err}");
        }
    }

    #[test]
    fn server_urls() {
        let s: Server = "https://10.0.0.1:7000".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.1", 7000));
        let s: Server = "https://ctl.example/".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port), ("ctl.example", DEFAULT_HUB_PORT));
        let s: Server = "https://[fd00::1]:6444".parse().unwrap();
        assert_eq!(s.host, "fd00::1");
        assert_eq!(s.authority(), "[fd00::1]:6444");
        for bad in [
            "http://10.0.0.1:6444",
            "10.0.0.1:6444",
            "https://:6444",
            "https://h:0",
            "https://h:x",
            "https://h/api",
        ] {
            assert!(bad.parse::<Server>().is_err(), "{bad}");
        }
    }
}
