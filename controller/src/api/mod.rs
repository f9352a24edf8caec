//! The Kubernetes-compatible HTTP API: request routing from paths to discovery,
//! OpenAPI and resource verbs, and the response helpers they share.

pub mod auth;
pub mod binding;
pub mod defaults;
pub mod discovery;
pub mod immutable;
pub mod list;
pub mod meta;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod podexec;
pub mod podlog;
pub mod protobuf;
pub mod query;
pub mod registry;
pub mod status;
pub mod table;
pub mod validation;
pub mod watch;

use auth::{Authenticator, Identity};
use bytes::Bytes;
use flotilla_store::Store;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response};
use query::Query;
use registry::Resource;
use serde_json::Value;
use status::{ApiError, ApiResult};
use std::sync::Arc;

/// The body type of every response (full or streamed).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response.
pub fn json_bytes(code: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(body))
        .expect("valid response")
}

pub fn json(code: u16, v: &Value) -> Response<Body> {
    json_bytes(code, serde_json::to_vec(v).expect("JSON values serialize"))
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json(e.code, &e.to_status())
}

/// Shared state of the API server.
pub struct Api {
    pub store: Store,
    pub auth: Authenticator,
    /// Wakes the garbage collector and namespace loops after deletions.
    pub gc_wake: smol::channel::Sender<()>,
    /// `https://host:port` for discovery's serverAddressByClientCIDRs.
    pub server_address: String,
}

/// What a resource request addresses.
#[derive(Clone)]
pub struct Target {
    pub res: &'static Resource,
    /// Namespace from the path (None for cluster-scoped or all-namespaces requests).
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// A request after authentication: method, target, query, headers and body.
pub struct Call {
    pub method: Method,
    pub query: Query,
    pub accept: String,
    pub content_type: String,
    pub user_agent: String,
    pub body: Bytes,
    pub ident: Identity,
}

impl Call {
    /// Whether the client asked for server-side printing.
    pub fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }
}

impl Api {
    /// Serves one HTTP request. `cert_ident` is the identity from a verified client
    /// certificate, if the client presented one.
    pub async fn handle(
        self: Arc<Self>,
        cert_ident: Option<Identity>,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let started = std::time::Instant::now();
        let resp = match self.dispatch(cert_ident, parts, body).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(path, status = resp.status().as_u16(), elapsed = ?started.elapsed(), "request");
        resp
    }

    async fn dispatch(
        self: &Arc<Self>,
        cert_ident: Option<Identity>,
        parts: hyper::http::request::Parts,
        body: hyper::body::Incoming,
    ) -> ApiResult<Response<Body>> {
        let path = parts.uri.path().trim_end_matches('/').to_owned();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // Anonymous endpoints.
        match segs.as_slice() {
            ["healthz"] | ["livez"] | ["readyz"] => {
                return Ok(Response::builder()
                    .status(200)
                    .header("content-type", "text/plain")
                    .body(full("ok"))
                    .expect("valid response"));
            }
            ["version"] => return Ok(json(200, &discovery::version())),
            _ => {}
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let ident = self
            .auth
            .authenticate(&header("authorization"), cert_ident)
            .ok_or_else(ApiError::unauthorized)?;
        // Pod logs and exec are relayed from the node (they need the raw request).
        if let [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name,
            sub @ ("log" | "exec"),
        ] = segs.as_slice()
        {
            return match *sub {
                "log" => podlog::serve(self, ident, ns, name, &parts).await,
                _ => podexec::serve(self, ident, ns, name, parts).await,
            };
        }
        let query = Query::parse(parts.uri.query())?;
        let body = body
            .collect()
            .await
            .map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?
            .to_bytes();
        let call = Call {
            method: parts.method.clone(),
            query,
            accept: header("accept"),
            content_type: header("content-type"),
            user_agent: header("user-agent"),
            body,
            ident,
        };
        match segs.as_slice() {
            ["api"] => Ok(json(200, &discovery::core_versions(&self.server_address))),
            ["apis"] => Ok(json(200, &discovery::groups())),
            ["api", "v1"] => Ok(json(200, &discovery::resource_list("", "v1"))),
            ["apis", g] => discovery::group(g).map(|v| json(200, &v)),
            ["apis", g, v] => {
                if registry::GROUPS.contains(&(g, v)) {
                    Ok(json(200, &discovery::resource_list(g, v)))
                } else {
                    Err(ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ))
                }
            }
            ["openapi", "v2"] => Ok(openapi::v2_response()),
            ["openapi", "v3"] => Ok(json(200, &openapi::v3_root())),
            ["openapi", "v3", rest @ ..] => openapi::v3_doc(&rest.join("/")),
            ["api", "v1", rest @ ..] => self.resource("", "v1", rest, call).await,
            ["apis", g, v, rest @ ..] => self.resource(g, v, rest, call).await,
            _ => Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        }
    }

    async fn resource(
        self: &Arc<Self>,
        group: &str,
        version: &str,
        rest: &[&str],
        call: Call,
    ) -> ApiResult<Response<Body>> {
        let target = parse_target(group, version, rest)?;
        protobuf::check_accept(&call.accept)?;
        auth::authorize(self, &call, &target).await?;
        objects::serve(self, &target, call).await
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// Parses the part of a resource path after `/api/v1` or `/apis/{g}/{v}`.
pub fn parse_target(group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let owned = |s: &&str| Some((*s).to_owned());
    let lookup = |plural: &str| registry::find(group, version, plural).ok_or_else(not_found_path);
    match rest {
        // /namespaces/{ns}/{resource}[/{name}[/{sub}]]
        ["namespaces", ns, plural, tail @ ..]
            if !matches!(*plural, "status" | "finalize") || !tail.is_empty() =>
        {
            let res = lookup(plural)?;
            if !res.namespaced {
                return Err(not_found_path());
            }
            let (name, sub) = match tail {
                [] => (None, None),
                [name] => (owned(name), None),
                [name, sub] => (owned(name), owned(sub)),
                _ => return Err(not_found_path()),
            };
            if let Some(s) = &sub
                && !res.has_sub(s)
            {
                return Err(not_found_path());
            }
            Ok(Target {
                res,
                ns: owned(ns),
                name,
                sub,
            })
        }
        [plural, tail @ ..] => {
            let res = lookup(plural)?;
            let (name, sub) = match tail {
                [] => (None, None),
                [name] if !res.namespaced => (owned(name), None),
                [name, sub] if !res.namespaced => (owned(name), owned(sub)),
                _ => return Err(not_found_path()),
            };
            if let Some(s) = &sub
                && !res.has_sub(s)
            {
                return Err(not_found_path());
            }
            Ok(Target {
                res,
                ns: None,
                name,
                sub,
            })
        }
        [] => Err(not_found_path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_targets() {
        let t = parse_target("", "v1", &["namespaces", "default", "pods", "p", "status"]).unwrap();
        assert_eq!(t.res.plural, "pods");
        assert_eq!(t.ns.as_deref(), Some("default"));
        assert_eq!(t.sub.as_deref(), Some("status"));
        let t = parse_target("", "v1", &["namespaces", "kube-system"]).unwrap();
        assert_eq!(t.res.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("kube-system"));
        let t = parse_target("", "v1", &["namespaces", "x", "finalize"]).unwrap();
        assert_eq!(t.sub.as_deref(), Some("finalize"));
        let t = parse_target("", "v1", &["pods"]).unwrap();
        assert!(t.ns.is_none() && t.name.is_none());
        assert!(parse_target("", "v1", &["pods", "x"]).is_err());
        assert!(parse_target("", "v1", &["namespaces", "d", "pods", "p", "nope"]).is_err());
        assert!(parse_target("apps", "v1", &["namespaces", "d", "pods"]).is_err());
    }
}
