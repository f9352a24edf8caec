//! Watch: a chunked stream of `{"type","object"}` JSON lines from the store's change
//! log, with initial ADDED events, selectors, bookmarks, timeouts and 410 Gone. The
//! initial events are read from one snapshot on a blocking thread and sent as they are
//! read, so watching 10,000 objects holds no copy of them all. With a
//! label or field selector, an object that starts matching arrives as ADDED and one
//! that stops matching as DELETED, as Kubernetes' watch cache sends them: the DELETED
//! carries the object's last state that matched, with the event's resourceVersion.

use super::objects::{list_scope, selected};
use super::query::Query;
use super::status::{ApiError, ApiResult};
use super::{Api, Body, Call, Target, meta, table};
use bytes::Bytes;
use flotilla_store::{EventKind, Key, Store, StoreError};
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

/// An event line straight from a stored object: its bytes with the resourceVersion
/// spliced in, never decoded (plain watches, the common case).
fn line_from_stored(kind: &str, stored: &[u8], rv: u64) -> Bytes {
    let mut v = Vec::with_capacity(stored.len() + 64);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(kind.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    meta::push_with_resource_version(&mut v, stored, rv);
    v.extend_from_slice(b"}\n");
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
    let filtering = call.query.label_selector.is_some() || call.query.field_selector.is_some();
    let mut transitions = Transitions::default();
    let q = call.query.clone();
    // Without a resourceVersion the watch registers now, before the snapshot of its
    // initial events is taken; the events up to the snapshot's revision are in it and
    // are skipped below.
    let watcher = api.store.watch(&store_name, ns.as_deref(), requested);
    let timeout = q.timeout_seconds.map(Duration::from_secs);
    let bookmarks = q.allow_bookmarks;
    let api_version = res.api_version();
    let kind = res.kind;
    let store = api.store.clone();
    crate::exec::spawn(async move {
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                let err = match e {
                    StoreError::Gone { oldest } => ApiError::gone(format!(
                        "too old resource version: {} ({oldest})",
                        requested.unwrap_or_default()
                    )),
                    other => ApiError::from(other),
                };
                let _ = tx.send(line("ERROR", &err.to_status())).await;
                return;
            }
        };
        let seed = Seed {
            store,
            resource: store_name,
            namespace: ns,
            query: q.clone(),
        };
        let seeded = match requested {
            Some(rv) if filtering => {
                // What the client holds: what matched at `rv`. Objects unchanged
                // since are known from the current list; those changed in between
                // are settled by their first event.
                smol::unblock(move || seed.matching_at(rv))
                    .await
                    .map(|(gap_end, matching)| {
                        transitions.gap_end = gap_end;
                        transitions.matching = matching;
                        rv
                    })
            }
            Some(rv) => Ok(rv),
            None => {
                let (tx, render) = (tx.clone(), render.clone());
                smol::unblock(move || seed.initial(filtering, &render, &tx))
                    .await
                    .map(|(revision, matching)| {
                        transitions.matching = matching;
                        revision
                    })
            }
        };
        let start = match seeded {
            Ok(start) => start,
            Err(_) if tx.is_closed() => return,
            Err(e) => {
                let _ = tx.send(line("ERROR", &ApiError::from(e).to_status())).await;
                return;
            }
        };
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
                Some(Some(ev)) if ev.object.revision <= start => {
                    // Already in the initial events' snapshot.
                }
                Some(Some(ev)) if !filtering && !as_table => {
                    last_rv = ev.object.revision;
                    let l = line_from_stored(kind_name(ev.kind), &ev.object.value, last_rv);
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                Some(Some(ev)) => {
                    last_rv = ev.object.revision;
                    let mut v = meta::decode(&ev.object.value, ev.object.revision);
                    let sent = if filtering {
                        let change = Change {
                            kind: ev.kind,
                            key: &ev.object.key,
                            object: &v,
                            prev: ev.prev.as_deref(),
                            revision: last_rv,
                        };
                        transitions.event(&q, change).map(|(sent, left)| {
                            if let Some(left) = left {
                                v = left;
                            }
                            sent
                        })
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

/// What a watch reads its starting state from.
struct Seed {
    store: Store,
    resource: String,
    namespace: Option<String>,
    query: Query,
}

impl Seed {
    /// Sends an ADDED event for every selected object of one snapshot, as it is read
    /// (blocking while the client is slow). Returns the snapshot's revision and, for a
    /// filtering watch, the keys sent.
    fn initial(
        &self,
        filtering: bool,
        render: &impl Fn(&Value, &str) -> Value,
        tx: &smol::channel::Sender<Bytes>,
    ) -> Result<(u64, HashSet<Key>), StoreError> {
        let mut matching = HashSet::new();
        let summary =
            self.store
                .list_each(&self.resource, self.namespace.as_deref(), None, None, |o| {
                    let v = meta::decode(o.value, o.revision);
                    if selected(&self.query, &v) {
                        let l = line("ADDED", &render(&v, &o.revision.to_string()));
                        // The client went away: stop reading.
                        tx.send_blocking(l).map_err(|_| StoreError::Closed)?;
                        if filtering {
                            matching.insert(o.key.clone());
                        }
                    }
                    Ok(())
                })?;
        Ok((summary.revision, matching))
    }

    /// The keys of the objects that matched at `rv` and have not changed since, with
    /// the revision of the snapshot they were read from.
    fn matching_at(&self, rv: u64) -> Result<(u64, HashSet<Key>), StoreError> {
        let mut matching = HashSet::new();
        let summary =
            self.store
                .list_each(&self.resource, self.namespace.as_deref(), None, None, |o| {
                    if o.revision <= rv && selected(&self.query, &meta::decode(o.value, o.revision))
                    {
                        matching.insert(o.key.clone());
                    }
                    Ok(())
                })?;
        Ok((summary.revision, matching))
    }
}

/// One change from the store, as a selector watch looks at it.
struct Change<'a> {
    kind: EventKind,
    key: &'a Key,
    /// The new state (for a deletion, the last one), decoded at `revision`.
    object: &'a Value,
    /// For a modification: the stored state it replaced, when the store knows it.
    prev: Option<&'a [u8]>,
    revision: u64,
}

/// Which objects a selector watch's client holds, to turn changes into what it must
/// see: ADDED when an object starts matching, DELETED when it stops (carrying the state
/// the client last saw match, as Kubernetes does), nothing while it does not match.
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
    /// What to send for `c`: the event type, and for an object leaving the selection
    /// the object to send instead of the new state (its previous state at the event's
    /// revision), when the store knows it.
    fn event(&mut self, q: &Query, c: Change<'_>) -> Option<(&'static str, Option<Value>)> {
        let Change {
            kind,
            key,
            object: v,
            prev,
            revision: rev,
        } = c;
        let now = selected(q, v);
        // The replaced state, decoded only when it is needed.
        let mut before = None;
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
        } else if let Some(p) = prev {
            // The state the client held at its resourceVersion is the one replaced.
            let b = meta::decode(p, rev);
            let matched = selected(q, &b);
            before = Some(b);
            matched
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
                    (true, true) if kind == EventKind::Modified => Some(("MODIFIED", None)),
                    (_, true) => Some(("ADDED", None)),
                    (true, false) => {
                        let left = before.or_else(|| prev.map(|p| meta::decode(p, rev)));
                        Some(("DELETED", left))
                    }
                    (false, false) => None,
                }
            }
            EventKind::Deleted => {
                self.matching.remove(key);
                (was || now).then_some(("DELETED", None))
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

    /// Feeds one change (`prev`: the stored state it replaced, if known) and returns
    /// the event type sent with the `app` label and resourceVersion of the object sent
    /// instead of the new state, if any.
    fn feed(
        t: &mut Transitions,
        q: &Query,
        kind: EventKind,
        now: &str,
        prev: Option<&str>,
        rev: u64,
    ) -> Option<(&'static str, Option<(String, String)>)> {
        let key = Key::new("pods", "default", "p");
        let object = meta::decode(&serde_json::to_vec(&pod(now)).unwrap(), rev);
        let prev = prev.map(|p| serde_json::to_vec(&pod(p)).unwrap());
        let change = Change {
            kind,
            key: &key,
            object: &object,
            prev: prev.as_deref(),
            revision: rev,
        };
        t.event(q, change).map(|(sent, left)| {
            let left = left.map(|l| {
                let m = &l["metadata"];
                (
                    m["labels"]["app"].as_str().unwrap().to_owned(),
                    m["resourceVersion"].as_str().unwrap().to_owned(),
                )
            });
            (sent, left)
        })
    }

    #[test]
    fn plain_event_lines_from_stored_bytes_equal_decoded_ones() {
        let stored = serde_json::to_vec(&pod("web")).unwrap();
        let fast = line_from_stored("MODIFIED", &stored, 42);
        let slow = line("MODIFIED", &meta::decode(&stored, 42));
        assert!(fast.ends_with(b"\n"));
        let fast: Value = serde_json::from_slice(&fast).unwrap();
        let slow: Value = serde_json::from_slice(&slow).unwrap();
        assert_eq!(fast, slow);
        assert_eq!(fast["object"]["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn objects_entering_and_leaving_a_selector_are_added_and_deleted() {
        let q = query("app%3Dweb");
        let mut t = Transitions::default();
        use EventKind::*;
        assert_eq!(feed(&mut t, &q, Added, "db", None, 5), None);
        assert_eq!(
            feed(&mut t, &q, Modified, "web", Some("db"), 6),
            Some(("ADDED", None))
        );
        assert_eq!(
            feed(&mut t, &q, Modified, "web", Some("web"), 7),
            Some(("MODIFIED", None))
        );
        // Leaving: the last state that matched, at the event's resourceVersion.
        assert_eq!(
            feed(&mut t, &q, Modified, "db", Some("web"), 8),
            Some(("DELETED", Some(("web".into(), "8".into()))))
        );
        assert_eq!(feed(&mut t, &q, Modified, "db", Some("db"), 9), None);
        assert_eq!(feed(&mut t, &q, Deleted, "db", None, 10), None);
    }

    #[test]
    fn without_the_previous_state_leaving_sends_the_new_one() {
        let q = query("app%3Dweb");
        let mut t = Transitions::default();
        use EventKind::*;
        assert_eq!(
            feed(&mut t, &q, Added, "web", None, 5),
            Some(("ADDED", None))
        );
        assert_eq!(
            feed(&mut t, &q, Modified, "db", None, 6),
            Some(("DELETED", None))
        );
    }

    #[test]
    fn changes_before_the_seeding_list_are_settled_by_the_replaced_state() {
        let q = query("app%3Dweb");
        use EventKind::*;
        let gap = || Transitions {
            gap_end: 10,
            ..Transitions::default()
        };
        // The replaced state did not match: the client never held the object.
        let mut t = gap();
        assert_eq!(feed(&mut t, &q, Modified, "db", Some("db"), 8), None);
        // It matched: the client holds it and must drop it.
        let mut t = gap();
        assert_eq!(
            feed(&mut t, &q, Modified, "db", Some("web"), 8),
            Some(("DELETED", Some(("web".into(), "8".into()))))
        );
        // From then on the state is known.
        assert_eq!(feed(&mut t, &q, Modified, "db", Some("db"), 9), None);
        assert_eq!(
            feed(&mut t, &q, Modified, "web", Some("db"), 11),
            Some(("ADDED", None))
        );
    }

    #[test]
    fn changes_before_the_seeding_list_settle_on_their_first_event_when_unknown() {
        let q = query("app%3Dweb");
        let mut t = Transitions {
            gap_end: 10,
            ..Transitions::default()
        };
        use EventKind::*;
        // Unknown earlier state, no longer matching: the client may hold it.
        assert_eq!(
            feed(&mut t, &q, Modified, "db", None, 8),
            Some(("DELETED", None))
        );
        // From then on the state is known.
        assert_eq!(feed(&mut t, &q, Modified, "db", None, 9), None);
        assert_eq!(
            feed(&mut t, &q, Modified, "web", None, 11),
            Some(("ADDED", None))
        );
    }
}
