//! Registry authentication: parsing `WWW-Authenticate` challenges and building the
//! token request of the Docker/OCI bearer-token flow (the one Docker Hub uses), or a
//! basic `Authorization` header.

use anyhow::{Result, bail};
use base64::Engine as _;

use crate::registries::Auth;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq)]
pub enum Challenge {
    /// `Bearer realm=…,service=…,scope=…`: fetch a token from `realm`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter.
        scope: Option<String>,
    },
    /// `Basic realm=…`: send credentials with every request.
    Basic,
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Result<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => {
            let Some(realm) = get("realm") else {
                bail!("bearer challenge without realm: {header:?}");
            };
            Ok(Challenge::Bearer {
                realm,
                service: get("service"),
                scope: get("scope"),
            })
        }
        "basic" => Ok(Challenge::Basic),
        _ => bail!("unsupported authentication scheme in {header:?}"),
    }
}

/// `k=v, k2="quoted, \"value\""` → pairs.
fn parse_params(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            bail!("malformed authentication parameters {s:?}");
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => bail!("unterminated quoted string in {s:?}"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// The `Authorization: Basic …` value for credentials.
pub fn basic_header(auth: &Auth) -> String {
    let raw = format!("{}:{}", auth.username, auth.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The token URL for a bearer challenge, asking for pull access to `repository`
/// (the registry's own scope wins when it names one).
pub fn token_url(
    realm: &str,
    service: Option<&str>,
    scope: Option<&str>,
    repository: &str,
) -> String {
    let mut url = realm.to_string();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    if let Some(s) = service {
        url.push_str(&format!("{sep}service={}", encode(s)));
        sep = '&';
    }
    let scope = scope
        .map(str::to_string)
        .unwrap_or_else(|| format!("repository:{repository}:pull"));
    url.push_str(&format!("{sep}scope={}", encode(&scope)));
    url
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token from a token endpoint's JSON reply (`token` or `access_token`).
pub fn parse_token(body: &[u8]) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Reply {
        token: Option<String>,
        access_token: Option<String>,
    }
    let r: Reply = serde_json::from_slice(body)
        .map_err(|e| anyhow::anyhow!("token endpoint sent invalid JSON: {e}"))?;
    match r.token.or(r.access_token) {
        Some(t) if !t.is_empty() => Ok(t),
        _ => bail!("token endpoint reply has no token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }
        );
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = c
        else {
            unreachable!()
        };
        assert_eq!(
            token_url(&realm, service.as_deref(), scope.as_deref(), "x"),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fbusybox%3Apull"
        );
    }

    #[test]
    fn parses_basic_and_odd_spellings() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#).unwrap(),
            Challenge::Basic
        );
        let c = parse_challenge(r#"bearer realm=http://127.0.0.1:1/t, scope="a\"b,c""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
                scope: Some("a\"b,c".into())
            }
        );
        assert!(parse_challenge("Bearer service=x").is_err());
        assert!(parse_challenge("Negotiate abc").is_err());
        assert!(parse_challenge(r#"Bearer realm="open"#).is_err());
    }

    #[test]
    fn token_url_defaults_scope_to_pull() {
        assert_eq!(
            token_url("https://t/x?a=1", None, None, "lib/app"),
            "https://t/x?a=1&scope=repository%3Alib%2Fapp%3Apull"
        );
    }

    #[test]
    fn builds_basic_header_and_reads_tokens() {
        let a = Auth {
            username: "user".into(),
            password: "pass".into(),
        };
        assert_eq!(basic_header(&a), "Basic dXNlcjpwYXNz");
        assert_eq!(
            parse_token(br#"{"token":"abc","expires_in":300}"#).unwrap(),
            "abc"
        );
        assert_eq!(parse_token(br#"{"access_token":"xyz"}"#).unwrap(), "xyz");
        assert!(parse_token(br#"{}"#).is_err());
    }
}
