//! `GET pods/{name}/log`: container logs relayed from the pod's node over its agent
//! link (the hub opens a stream; the agent reads the log), with kubectl's options
//! (container, follow, previous, timestamps, tailLines, sinceSeconds, sinceTime,
//! limitBytes). Also the checks `pods/exec` shares: authorization of the
//! subresource, the container, and the node's session.

use super::auth::{self, Identity};
use super::query::Query;
use super::status::{ApiError, ApiResult};
use super::{Api, Body, Call, Target, meta, registry};
use crate::hub::session::Session;
use crate::hub::streams::{Incoming, Stream};
use bytes::Bytes;
use flotilla_shared::pod::StreamRequest;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::http::request::Parts;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How long the first log bytes (or an error) are awaited before answering 200.
const FIRST_BYTES: Duration = Duration::from_millis(1500);

/// A pod subresource request, authorized, with its pod and the node's session.
pub struct PodTarget {
    pub pod: Value,
    pub query: Query,
    pub session: Arc<Session>,
}

/// Authorizes `sub` of the pod, reads the pod and finds its node's session.
pub async fn locate(
    api: &Arc<Api>,
    ident: Identity,
    ns: &str,
    name: &str,
    sub: &str,
    parts: &Parts,
) -> ApiResult<PodTarget> {
    let query = Query::parse(parts.uri.query())?;
    let call = Call {
        method: parts.method.clone(),
        query: query.clone(),
        accept: String::new(),
        content_type: String::new(),
        user_agent: String::new(),
        body: Bytes::new(),
        ident,
    };
    let target = Target {
        res: registry::find("", "v1", "pods").expect("pods are served"),
        ns: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        sub: Some(sub.to_owned()),
    };
    auth::authorize(api, &call, &target).await?;
    let key = flotilla_store::Key::new("pods", ns, name);
    let Some(o) = api.store.get(&key)? else {
        return Err(ApiError::not_found("", "pods", name));
    };
    let pod = meta::decode(&o.value, o.revision);
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let hub = crate::hub::get()
        .ok_or_else(|| ApiError::new(503, "ServiceUnavailable", "the agent hub is not running"))?;
    let session = hub.session(node).ok_or_else(|| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!(
                "node {node:?} is not connected to the controller (its agent is down or cannot reach the hub)"
            ),
        )
    })?;
    Ok(PodTarget {
        pod,
        query,
        session,
    })
}

fn names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// The container a request means: the `container` parameter, else the pod's
/// default-container annotation, else its only container (kubelet's messages).
pub fn container(pod: &Value, q: &Query) -> ApiResult<String> {
    let name = meta::name(pod);
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    if let Some(c) = q.raw.get("container").filter(|c| !c.is_empty()) {
        if containers.contains(c) || init.contains(c) {
            return Ok(c.clone());
        }
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        )));
    }
    if let Some(d) =
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str()
        && containers.iter().any(|c| c == d)
    {
        return Ok(d.to_owned());
    }
    match containers.as_slice() {
        [one] => Ok(one.clone()),
        _ => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

fn flag(q: &Query, k: &str) -> bool {
    q.raw.get(k).is_some_and(|v| v == "true" || v == "1")
}

/// An integer parameter with a lower bound, -1/0 style default when absent.
fn int(q: &Query, k: &str, min: i64, absent: i64) -> ApiResult<i64> {
    match q.raw.get(k) {
        None => Ok(absent),
        Some(v) => {
            let n: i64 = v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{k}: invalid value {v:?}")))?;
            if n < min {
                return Err(ApiError::bad_request(format!(
                    "{k}: Invalid value: {n}: must be greater than or equal to {min}"
                )));
            }
            Ok(n)
        }
    }
}

/// The log request a query describes.
pub fn log_request(pod_uid: &str, container: &str, q: &Query) -> ApiResult<StreamRequest> {
    let mut since_seconds = int(q, "sinceSeconds", 1, 0)?;
    if let Some(t) = q.raw.get("sinceTime") {
        if since_seconds != 0 {
            return Err(ApiError::bad_request(
                "at most one of sinceTime or sinceSeconds may be specified",
            ));
        }
        let ts: jiff::Timestamp = t
            .parse()
            .map_err(|_| ApiError::bad_request(format!("sinceTime: invalid time {t:?}")))?;
        since_seconds = (jiff::Timestamp::now().as_second() - ts.as_second()).max(1);
    }
    Ok(StreamRequest::Logs {
        pod_uid: pod_uid.to_owned(),
        container: container.to_owned(),
        follow: flag(q, "follow"),
        previous: flag(q, "previous"),
        timestamps: flag(q, "timestamps"),
        tail_lines: int(q, "tailLines", 0, -1)?,
        since_seconds,
        limit_bytes: int(q, "limitBytes", 1, 0)?,
    })
}

/// Serves `GET pods/{name}/log`.
pub async fn serve(
    api: &Arc<Api>,
    ident: Identity,
    ns: &str,
    name: &str,
    parts: &Parts,
) -> ApiResult<Response<Body>> {
    if parts.method != hyper::Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} pods/log)",
            parts.method
        )));
    }
    let t = locate(api, ident, ns, name, "log", parts).await?;
    let container = container(&t.pod, &t.query)?;
    let uid = t.pod["metadata"]["uid"].as_str().unwrap_or("");
    let request = log_request(uid, &container, &t.query)?;
    let mut stream = Stream::open(&t.session, request).ok_or_else(|| {
        ApiError::new(503, "ServiceUnavailable", "the node's session just closed")
    })?;
    let first = futures_lite::future::or(async { stream.recv().await }, async {
        smol::Timer::after(FIRST_BYTES).await;
        None
    })
    .await;
    let first = match first {
        Some(Incoming::Close { error }) if !error.is_empty() => {
            return Err(ApiError::bad_request(error));
        }
        Some(Incoming::Close { .. }) => return Ok(text(super::full(Bytes::new()))),
        Some(Incoming::Data { data, .. }) => Some(Bytes::from(data)),
        None => None,
    };
    let (tx, rx) = smol::channel::bounded::<Bytes>(8);
    crate::exec::spawn(async move {
        if let Some(b) = first
            && tx.send(b).await.is_err()
        {
            return;
        }
        loop {
            // A quiet `-f` stream still notices a client that went away.
            let item = futures_lite::future::or(stream.recv(), async {
                while !tx.is_closed() {
                    smol::Timer::after(Duration::from_secs(2)).await;
                }
                None
            })
            .await;
            let Some(item) = item else {
                // The client went away or the stream ended: dropping it tells the agent.
                return;
            };
            match item {
                Incoming::Data { data, .. } => {
                    if tx.send(Bytes::from(data)).await.is_err() {
                        // The client went away: dropping the stream tells the agent.
                        return;
                    }
                }
                Incoming::Close { error } => {
                    if !error.is_empty() {
                        tracing::debug!(%error, "log stream ended with an error");
                    }
                    return;
                }
            }
        }
    });
    let body = BodyExt::boxed(StreamBody::new(futures_lite::stream::unfold(
        rx,
        |rx| async move {
            let b = rx.recv().await.ok()?;
            Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
        },
    )));
    Ok(text(body))
}

fn text(body: Body) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(body)
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Query {
        Query::parse(Some(s)).unwrap()
    }

    #[test]
    fn the_container_is_chosen_as_the_kubelet_does() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container(&one, &q("")).unwrap(), "a");
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = container(&two, &q("")).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container(&two, &q("container=i")).unwrap(), "i");
        assert_eq!(
            container(&two, &q("container=x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
    }

    #[test]
    fn log_options_map_to_the_stream_request() {
        let r = log_request(
            "u",
            "c",
            &q("follow=true&tailLines=5&limitBytes=10&timestamps=true"),
        )
        .unwrap();
        assert_eq!(
            r,
            StreamRequest::Logs {
                pod_uid: "u".into(),
                container: "c".into(),
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: 5,
                since_seconds: 0,
                limit_bytes: 10,
            }
        );
        assert!(log_request("u", "c", &q("tailLines=-2")).is_err());
        assert!(log_request("u", "c", &q("limitBytes=0")).is_err());
        let StreamRequest::Logs { since_seconds, .. } =
            log_request("u", "c", &q("sinceTime=2000-01-01T00:00:00Z")).unwrap()
        else {
            unreachable!()
        };
        assert!(since_seconds > 700_000_000);
    }
}
