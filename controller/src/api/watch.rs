//! Watch: a chunked stream of `{"type","object"}` JSON lines from the store's change
//! log, with initial ADDED events, selectors, bookmarks, timeouts and 410 Gone. With a
//! label or field selector, an object that starts matching arrives as ADDED and one
//! that stops matching as DELETED, as Kubernetes' watch cache sends them.

use super::objects::{list_scope, selected};
use super::query::Query;
use super::status::{ApiError, ApiResult};
use super::{Api, Body, Call, Target, meta, table};
use bytes::Bytes;
use flotilla_store::{EventKind, Key, StoreError};
use futures_lite::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use std::collections::HashSet;
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
    let filtering = call.query.label_selector.is_some() || call.query.field_selector.is_some();
    let mut transitions = Transitions::default();
    let start = match requested {
        Some(rv) => {
            if filtering {
                // What the client holds: what matched at `rv`. Objects unchanged
                // since are known from the current list; those changed in between
                // are settled by their first event.
                let page = api.store.list(&store_name, ns.as_deref(), None, None)?;
                transitions.gap_end = page.revision;
                for o in &page.items {
                    if o.revision <= rv
                        && selected(&call.query, &meta::decode(&o.value, o.revision))
                    {
                        transitions.matching.insert(o.key.clone());
                    }
                }
            }
            rv
        }
        None => {
            let page = api.store.list(&store_name, ns.as_deref(), None, None)?;
            for o in &page.items {
                let v = meta::decode(&o.value, o.revision);
                if selected(&call.query, &v) {
                    initial.push(line("ADDED", &render(&v, &o.revision.to_string())));
                    if filtering {
                        transitions.matching.insert(o.key.clone());
                    }
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
                    let sent = if filtering {
                        transitions.event(&q, ev.kind, &ev.object.key, &v, last_rv)
                    } else {
                        Some(kind_name(ev.kind))
                    };
                    let Some(sent) = sent else {
                        continue;
                    };
                    let l = line(sent, &render(&v, &last_rv.to_string()));
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
                // Everything up to the store's progress mark has reached this watch
                // (sent or filtered out), so an idle watch still moves forward.
                let rv = watcher.progress().max(last_rv);
                let b = json!({"kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": rv.to_string()}});
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

/// Which objects a selector watch's client holds, to turn changes into what it must
/// see: ADDED when an object starts matching, DELETED (with the new state) when it
/// stops, nothing while it does not match.
#[derive(Default)]
struct Transitions {
    /// Keys whose last state sent to (or listed for) the client matched.
    matching: HashSet<Key>,
    /// For a watch from a resourceVersion: the revision of the list that seeded
    /// `matching`. Changes up to it may concern objects whose state at the client's
    /// resourceVersion is unknown (their first event settles them).
    gap_end: u64,
    /// Keys already settled by an event up to `gap_end`.
    settled: HashSet<Key>,
}

impl Transitions {
    fn event(
        &mut self,
        q: &Query,
        kind: EventKind,
        key: &Key,
        v: &Value,
        rev: u64,
    ) -> Option<&'static str> {
        let now = selected(q, v);
        let known = if rev <= self.gap_end {
            // An ADDED has no earlier state; otherwise the first event in the gap
            // leaves the earlier state unknown: assume the client holds it when
            // the change was a modification that no longer matches (a spare
            // DELETED is harmless; a missing one leaves a stale object behind).
            let first = self.settled.insert(key.clone());
            kind == EventKind::Added || !first
        } else {
            if !self.settled.is_empty() {
                self.settled = HashSet::new();
            }
            true
        };
        let was = if known {
            self.matching.contains(key)
        } else {
            kind == EventKind::Modified || now
        };
        match kind {
            EventKind::Added | EventKind::Modified => {
                if now {
                    self.matching.insert(key.clone());
                } else {
                    self.matching.remove(key);
                }
                match (was, now) {
                    (true, true) if kind == EventKind::Modified => Some("MODIFIED"),
                    (_, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
            EventKind::Deleted => {
                self.matching.remove(key);
                (was || now).then_some("DELETED")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(app: &str) -> Value {
        json!({"metadata": {"name": "p", "labels": {"app": app}}})
    }

    fn query(selector: &str) -> Query {
        Query::parse(Some(&format!("labelSelector={selector}"))).unwrap()
    }

    #[test]
    fn objects_entering_and_leaving_a_selector_are_added_and_deleted() {
        let q = query("app%3Dweb");
        let k = Key::new("pods", "default", "p");
        let mut t = Transitions::default();
        assert_eq!(t.event(&q, EventKind::Added, &k, &pod("db"), 5), None);
        assert_eq!(
            t.event(&q, EventKind::Modified, &k, &pod("web"), 6),
            Some("ADDED")
        );
        assert_eq!(
            t.event(&q, EventKind::Modified, &k, &pod("web"), 7),
            Some("MODIFIED")
        );
        assert_eq!(
            t.event(&q, EventKind::Modified, &k, &pod("db"), 8),
            Some("DELETED")
        );
        assert_eq!(t.event(&q, EventKind::Modified, &k, &pod("db"), 9), None);
        assert_eq!(t.event(&q, EventKind::Deleted, &k, &pod("db"), 10), None);
    }

    #[test]
    fn changes_before_the_seeding_list_settle_on_their_first_event() {
        let q = query("app%3Dweb");
        let k = Key::new("pods", "default", "p");
        let mut t = Transitions {
            gap_end: 10,
            ..Transitions::default()
        };
        // Unknown earlier state, no longer matching: the client may hold it.
        assert_eq!(
            t.event(&q, EventKind::Modified, &k, &pod("db"), 8),
            Some("DELETED")
        );
        // From then on the state is known.
        assert_eq!(t.event(&q, EventKind::Modified, &k, &pod("db"), 9), None);
        assert_eq!(
            t.event(&q, EventKind::Modified, &k, &pod("web"), 11),
            Some("ADDED")
        );
    }
}
