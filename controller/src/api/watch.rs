//! Watch: a chunked stream of `{"type","object"}` JSON lines from the store's change
//! log, with initial ADDED events, selectors, bookmarks, timeouts and 410 Gone.

use super::objects::{list_scope, selected};
use super::status::{ApiError, ApiResult};
use super::{Api, Body, Call, Target, meta, table};
use bytes::Bytes;
use flotilla_store::{EventKind, StoreError};
use futures_lite::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
const CHECK_EVERY: Duration = Duration::from_secs(5);

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json");
    v.push(b'\n');
    Bytes::from(v)
}

fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::Added => "ADDED",
        EventKind::Modified => "MODIFIED",
        EventKind::Deleted => "DELETED",
    }
}

/// Starts a watch and returns the streaming response.
pub fn serve(api: &Arc<Api>, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let q = call.query.clone();
    let as_table = call.wants_table();
    let res = t.res;
    let ns = list_scope(t).map(str::to_owned);
    let store_name = res.store_name();
    let requested = match q.resource_version.as_deref() {
        None | Some("0") => None,
        Some(s) => Some(
            meta::parse_rv(s)
                .ok_or_else(|| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))?,
        ),
    };
    let render = move |v: &Value, rv: &str| -> Value {
        if as_table {
            let mut q2 = q.clone();
            q2.raw.insert("includeObject".into(), "Object".into());
            table::table(res, std::slice::from_ref(v), rv, &q2, None)
        } else {
            v.clone()
        }
    };
    let (tx, rx) = smol::channel::bounded::<Bytes>(256);
    let mut initial = Vec::new();
    let start = match requested {
        Some(rv) => rv,
        None => {
            let page = api.store.list(&store_name, ns.as_deref(), None, None)?;
            for o in &page.items {
                let v = meta::decode(&o.value, o.revision);
                if selected(&call.query, &v) {
                    initial.push(line("ADDED", &render(&v, &o.revision.to_string())));
                }
            }
            page.revision
        }
    };
    let q = call.query.clone();
    let watcher = api.store.watch(&store_name, ns.as_deref(), Some(start));
    let timeout = q.timeout_seconds.map(Duration::from_secs);
    let bookmarks = q.allow_bookmarks;
    let api_version = res.api_version();
    let kind = res.kind;
    crate::exec::spawn(async move {
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                let err = match e {
                    StoreError::Gone { oldest } => {
                        ApiError::gone(format!("too old resource version: {start} ({oldest})"))
                    }
                    other => ApiError::from(other),
                };
                let _ = tx.send(line("ERROR", &err.to_status())).await;
                return;
            }
        };
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let began = Instant::now();
        let mut last_rv = start;
        let mut last_bookmark = Instant::now();
        loop {
            if timeout.is_some_and(|t| began.elapsed() >= t) {
                return;
            }
            let wait = async {
                smol::Timer::after(CHECK_EVERY).await;
                None
            };
            let next = futures_lite::future::or(async { Some(watcher.next().await) }, wait).await;
            match next {
                Some(Some(ev)) => {
                    last_rv = ev.object.revision;
                    let v = meta::decode(&ev.object.value, ev.object.revision);
                    if !selected(&q, &v) {
                        continue;
                    }
                    let l = line(kind_name(ev.kind), &render(&v, &last_rv.to_string()));
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                Some(None) => {
                    // The store cut this watcher off (too slow) or shut down.
                    if let Some(StoreError::Gone { oldest }) = watcher.error() {
                        let err = ApiError::gone(format!(
                            "too old resource version: {last_rv} ({oldest})"
                        ));
                        let _ = tx.send(line("ERROR", &err.to_status())).await;
                    }
                    return;
                }
                None => {
                    if tx.is_closed() {
                        return;
                    }
                }
            }
            if bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY {
                last_bookmark = Instant::now();
                let b = json!({"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": last_rv.to_string()}});
                if tx.send(line("BOOKMARK", &b)).await.is_err() {
                    return;
                }
            }
        }
    });
    let body = BodyExt::boxed(StreamBody::new(
        rx.map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    ));
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body)
        .expect("valid response"))
}
