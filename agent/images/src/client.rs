//! A blocking OCI Distribution (registry v2) client for one endpoint and repository:
//! manifests and blobs, the bearer-token and basic auth flows, retries with backoff,
//! and blob downloads that resume a partial file with `Range` requests.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ureq::Body;
use ureq::http::Response;

use crate::auth::{Challenge, basic_header, parse_challenge, parse_token, token_url};
use crate::content::ContentStore;
use crate::digest::{Digest, HashingWriter};
use crate::manifest::ACCEPT_MANIFESTS;
use crate::progress::{Event, Progress};
use crate::registries::Endpoint;

/// Largest manifest or token reply accepted.
const MAX_DOCUMENT: u64 = 8 << 20;

/// Tuning of a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Attempts per request before giving up (network errors, 5xx, 429).
    pub attempts: u32,
    /// First pause between attempts; doubles each time, up to 8 s.
    pub backoff: Duration,
    /// Download bandwidth limit in bytes per second, per blob.
    pub limit_rate: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempts: 6,
            backoff: Duration::from_millis(250),
            limit_rate: None,
        }
    }
}

/// A failure, and whether trying again may help.
enum Failure {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Fatal(e)
    }
}

/// An image that the registry does not have (HTTP 404 on its manifest).
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for NotFound {}

/// Client for one repository at one endpoint.
pub struct RegistryClient {
    agent: ureq::Agent,
    endpoint: Endpoint,
    repository: String,
    authorization: Mutex<Option<String>>,
    options: ClientOptions,
}

impl RegistryClient {
    /// A client for `repository` at `endpoint`.
    pub fn new(endpoint: Endpoint, repository: &str, options: ClientOptions) -> RegistryClient {
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(endpoint.insecure)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .user_agent(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        RegistryClient {
            agent: ureq::Agent::new_with_config(config),
            endpoint,
            repository: repository.to_string(),
            authorization: Mutex::new(None),
            options,
        }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{reference}",
            self.endpoint.base, self.repository
        )
    }

    /// One GET with the current credentials; on 401 runs the challenge's auth flow
    /// once and repeats the request.
    fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
    ) -> Result<Response<Body>, Failure> {
        let mut refreshed = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(offset) = range {
                req = req.header("Range", format!("bytes={offset}-"));
            }
            if let Some(auth) = self.authorization.lock().unwrap().clone() {
                req = req.header("Authorization", auth);
            }
            let resp = req
                .call()
                .map_err(|e| Failure::Retry(anyhow!("{} unreachable: {e}", self.endpoint.base)))?;
            let status = resp.status().as_u16();
            if status == 401 && !refreshed {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        anyhow!(
                            "{} answered 401 without a WWW-Authenticate challenge",
                            self.endpoint.host
                        )
                    })?;
                let challenge = parse_challenge(challenge)?;
                self.authenticate(&challenge)?;
                refreshed = true;
                continue;
            }
            return match status {
                200..=299 => Ok(resp),
                401 | 403 => Err(Failure::Fatal(anyhow!(
                    "{} refused access to {} (HTTP {status}): check the credentials for {} in the registries config",
                    self.endpoint.host,
                    self.repository,
                    self.endpoint.host
                ))),
                429 | 500..=599 => Err(Failure::Retry(anyhow!(
                    "{} answered HTTP {status} for {url}",
                    self.endpoint.host
                ))),
                _ => Err(Failure::Fatal(status_error(status, url, resp))),
            };
        }
    }

    fn authenticate(&self, challenge: &Challenge) -> Result<(), Failure> {
        let creds = self.endpoint.auth.as_ref();
        let header = match challenge {
            Challenge::Basic => match creds {
                Some(c) => basic_header(c),
                None => {
                    return Err(Failure::Fatal(anyhow!(
                        "{} requires credentials; add them under configs.\"{}\".auth in the registries config",
                        self.endpoint.host,
                        self.endpoint.host
                    )));
                }
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let url = token_url(
                    realm,
                    service.as_deref(),
                    scope.as_deref(),
                    &self.repository,
                );
                let mut req = self.agent.get(&url);
                if let Some(c) = creds {
                    req = req.header("Authorization", basic_header(c));
                }
                let resp = req.call().map_err(|e| {
                    Failure::Retry(anyhow!("token endpoint {realm} unreachable: {e}"))
                })?;
                match resp.status().as_u16() {
                    200 => {}
                    401 | 403 => {
                        return Err(Failure::Fatal(anyhow!(
                            "token endpoint {realm} refused the credentials for {}",
                            self.endpoint.host
                        )));
                    }
                    s => {
                        return Err(Failure::Retry(anyhow!(
                            "token endpoint {realm} answered HTTP {s}"
                        )));
                    }
                }
                let body = read_limited(resp, MAX_DOCUMENT).map_err(Failure::Retry)?;
                format!("Bearer {}", parse_token(&body)?)
            }
        };
        *self.authorization.lock().unwrap() = Some(header);
        Ok(())
    }

    fn retrying<T>(
        &self,
        what: &str,
        progress: Progress<'_>,
        mut op: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T> {
        let mut pause = self.options.backoff;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) if attempt >= self.options.attempts => {
                    return Err(e.context(format!("{what}: giving up after {attempt} attempts")));
                }
                Err(Failure::Retry(e)) => {
                    attempt += 1;
                    progress(&Event::Retrying {
                        what: what.to_string(),
                        attempt,
                        error: format!("{e:#}"),
                    });
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(8));
                }
            }
        }
    }

    /// Fetches a manifest or index by tag or digest. Returns the bytes, their digest
    /// (checked against the requested digest, or the registry's `Docker-Content-Digest`)
    /// and the content type.
    pub fn manifest(
        &self,
        reference: &str,
        progress: Progress<'_>,
    ) -> Result<(Vec<u8>, Digest, Option<String>)> {
        let url = self.url("manifests", reference);
        let (body, header_digest, content_type) =
            self.retrying(&format!("manifest {reference}"), progress, || {
                let resp = match self.get(&url, Some(ACCEPT_MANIFESTS), None) {
                    Err(Failure::Fatal(e)) if e.is::<NotFound>() => {
                        return Err(Failure::Fatal(anyhow!(NotFound(format!(
                            "image {}/{}:{reference} not found at {} (manifest unknown)",
                            self.endpoint.host, self.repository, self.endpoint.base
                        )))));
                    }
                    other => other?,
                };
                let header = |n: &str| {
                    resp.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let digest = header("docker-content-digest");
                let ctype = header("content-type");
                let body = read_limited(resp, MAX_DOCUMENT).map_err(Failure::Retry)?;
                Ok((body, digest, ctype))
            })?;
        let actual = Digest::of(&body);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != actual {
                bail!(
                    "manifest {reference} from {} does not match its digest (content hashes to {actual}); refusing it",
                    self.endpoint.host
                );
            }
        } else if let Some(h) = header_digest
            && h.parse::<Digest>().is_ok_and(|d| d != actual)
        {
            bail!(
                "manifest {reference} from {} hashes to {actual} but the registry says {h}; refusing it",
                self.endpoint.host
            );
        }
        Ok((body, actual, content_type))
    }

    /// Downloads blob `digest` into the store unless present, resuming a partial
    /// download left by an earlier attempt or run, and verifying size and digest.
    pub fn fetch_blob(
        &self,
        store: &ContentStore,
        digest: &Digest,
        size: u64,
        progress: Progress<'_>,
    ) -> Result<()> {
        if store.has(digest) {
            progress(&Event::Cached {
                digest: digest.clone(),
                size,
            });
            return Ok(());
        }
        // One downloader per blob: concurrent pulls of the same layer wait here.
        let lock_path = store.partial_path(digest).with_extension("lock");
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        let result = if store.has(digest) {
            Ok(())
        } else {
            let url = self.url("blobs", &digest.to_string());
            self.retrying(&format!("blob {}", digest.short()), progress, || {
                self.download_once(store, &url, digest, size, progress)
            })
        };
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        result.with_context(|| format!("downloading blob {digest} from {}", self.endpoint.base))?;
        progress(&Event::Downloaded {
            digest: digest.clone(),
            size,
        });
        Ok(())
    }

    fn download_once(
        &self,
        store: &ContentStore,
        url: &str,
        digest: &Digest,
        size: u64,
        progress: Progress<'_>,
    ) -> Result<(), Failure> {
        let (file, hasher) = store.open_partial(digest)?;
        let offset = hasher.len();
        if offset > size {
            store.discard_partial(digest);
            return Err(Failure::Retry(anyhow!(
                "partial download was larger than the blob; starting over"
            )));
        }
        let range = (offset > 0 && offset < size).then_some(offset);
        let resp = if offset == size {
            None
        } else {
            Some(self.get(url, None, range)?)
        };
        let mut writer = match resp.as_ref().map(|r| r.status().as_u16()) {
            Some(206) => {
                let start = resp
                    .as_ref()
                    .and_then(|r| r.headers().get("content-range"))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    store.discard_partial(digest);
                    return Err(Failure::Retry(anyhow!(
                        "registry answered a range request with the wrong range"
                    )));
                }
                progress(&Event::Resumed {
                    digest: digest.clone(),
                    offset,
                });
                HashingWriter::with_hasher(file, hasher)
            }
            Some(_) if offset > 0 => {
                // The server ignored the Range header: start over.
                file.set_len(0).context("truncating partial download")?;
                HashingWriter::with_hasher(file, crate::digest::Hasher::new())
            }
            _ => HashingWriter::with_hasher(file, hasher),
        };
        if let Some(resp) = resp {
            let mut body = resp.into_body().into_reader();
            let mut buf = vec![0u8; 128 * 1024];
            let started = Instant::now();
            let mut last_report = Instant::now();
            let mut received: u64 = 0;
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        writer.flush().ok();
                        return Err(Failure::Retry(anyhow!(
                            "connection lost after {} of {size} bytes: {e}",
                            writer.len()
                        )));
                    }
                };
                if writer.len() + n as u64 > size {
                    store.discard_partial(digest);
                    return Err(Failure::Fatal(anyhow!(
                        "registry sent more than the {size} bytes the manifest declares"
                    )));
                }
                writer
                    .write_all(&buf[..n])
                    .context("writing partial download")?;
                received += n as u64;
                if let Some(rate) = self.options.limit_rate {
                    let due = Duration::from_secs_f64(received as f64 / rate.max(1) as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                if last_report.elapsed() >= Duration::from_millis(250) {
                    last_report = Instant::now();
                    progress(&Event::Downloading {
                        digest: digest.clone(),
                        done: writer.len(),
                        total: size,
                    });
                }
            }
        }
        if writer.len() < size {
            return Err(Failure::Retry(anyhow!(
                "connection closed after {} of {size} bytes",
                writer.len()
            )));
        }
        let (file, hasher) = writer.into_parts();
        // A complete file with the wrong digest is corrupt: no retry can fix that.
        store
            .commit_partial(file, hasher, digest, Some(size))
            .map_err(Failure::Fatal)
    }
}

fn read_limited(resp: Response<Body>, limit: u64) -> Result<Vec<u8>> {
    resp.into_body()
        .into_with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| anyhow!("reading reply: {e}"))
}

fn status_error(status: u16, url: &str, resp: Response<Body>) -> anyhow::Error {
    let body = read_limited(resp, 64 * 1024).unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let detail: String = text.chars().take(300).collect();
    if status == 404 {
        anyhow!(NotFound(format!("{url} not found: {}", detail.trim())))
    } else {
        anyhow!(
            "registry answered HTTP {status} for {url}: {}",
            detail.trim()
        )
    }
}

#[cfg(test)]
mod tests {
    //! The bearer-token flow against a minimal in-process HTTP server playing a
    //! Docker Hub-style registry and its token service.

    use super::*;
    use crate::registries::Auth;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::Arc;

    const MANIFEST: &[u8] = br#"{"schemaVersion":2}"#;

    /// Serves until the test ends; returns its address and the request heads seen.
    fn token_registry() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (addr.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut head = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                s.lock().unwrap().push(head.clone());
                let lower = head.to_ascii_lowercase();
                let (status, extra, body): (&str, String, Vec<u8>) = if head
                    .starts_with("GET /token?")
                {
                    // base64("fleet:s3cret")
                    if lower.contains("authorization: basic zmxlzxq6cznjcmv0") {
                        ("200 OK", String::new(), br#"{"token":"tok123"}"#.to_vec())
                    } else {
                        ("401 Unauthorized", String::new(), Vec::new())
                    }
                } else if lower.contains("authorization: bearer tok123") {
                    let d = Digest::of(MANIFEST);
                    (
                        "200 OK",
                        format!(
                            "Content-Type: {}\r\nDocker-Content-Digest: {d}\r\n",
                            crate::manifest::OCI_MANIFEST
                        ),
                        MANIFEST.to_vec(),
                    )
                } else {
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://{a}/token\",service=\"fake\",scope=\"repository:team/app:pull\"\r\n"
                    );
                    ("401 Unauthorized", challenge, Vec::new())
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        (addr, seen)
    }

    fn client(addr: &str, auth: Option<Auth>) -> RegistryClient {
        let endpoint = Endpoint {
            base: format!("http://{addr}"),
            host: addr.to_string(),
            auth,
            insecure: false,
            mirror: false,
        };
        RegistryClient::new(endpoint, "team/app", ClientOptions::default())
    }

    #[test]
    fn bearer_token_flow_with_credentials() {
        let (addr, seen) = token_registry();
        let auth = Auth {
            username: "fleet".into(),
            password: "s3cret".into(),
        };
        let c = client(&addr, Some(auth));
        let (body, digest, ctype) = c.manifest("v1", &crate::progress::silent).unwrap();
        assert_eq!(body, MANIFEST);
        assert_eq!(digest, Digest::of(MANIFEST));
        assert_eq!(ctype.as_deref(), Some(crate::manifest::OCI_MANIFEST));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[1].starts_with("GET /token?service=fake&scope=repository%3Ateam%2Fapp%3Apull "),
            "{}",
            seen[1]
        );
        // The token is reused for the next request without another round trip.
        drop(seen);
        c.manifest("v1", &crate::progress::silent).unwrap();
    }

    #[test]
    fn bearer_token_flow_with_wrong_credentials_is_a_clear_error() {
        let (addr, _) = token_registry();
        let auth = Auth {
            username: "fleet".into(),
            password: "wrong".into(),
        };
        let err = client(&addr, Some(auth))
            .manifest("v1", &crate::progress::silent)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("refused the credentials"),
            "{err:#}"
        );
    }
}
