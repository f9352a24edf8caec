//! The list verb, streamed: one redb snapshot is read on a blocking thread (so a big
//! list never stalls the executor's other requests) and written to the client in
//! chunks as it is read, so memory stays flat however many objects match.
//!
//! Plain lists splice each object's resourceVersion into its stored canonical JSON
//! without parsing it. Label and field selectors decode only the fields they test.
//! Tables (`kubectl get`) decode one object at a time and write its row. Limit and
//! continue behave as Kubernetes': a page ends after `limit` matching objects, and its
//! `continue` token resumes after the last object the page read.

use super::query::Query;
use super::registry::Resource;
use super::status::{ApiError, ApiResult};
use super::{Api, Body, Call, Target, meta, table};
use bytes::Bytes;
use flotilla_store::{Key, ObjectRef, Store, StoreError};
use futures_lite::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use std::ops::ControlFlow;
use std::sync::Arc;

/// Bytes gathered before a chunk goes to the client.
const CHUNK: usize = 64 << 10;
/// Chunks queued for the client before the reader waits (bounds a list's memory).
const CHUNKS_QUEUED: usize = 4;
/// A list that wrote more than this hands malloc's free pages back afterwards.
const BIG_LIST: usize = 8 << 20;

/// A continue token: the namespace and name of the last object a page read.
pub fn encode_continue(k: &Key) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\0{}", k.namespace, k.name))
}

/// The key a continue token resumes after.
pub fn decode_continue(res: &Resource, token: &str) -> ApiResult<Key> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (ns, name) = s.split_once('\0').ok_or_else(bad)?;
    Ok(Key::new(res.store_name(), ns, name))
}

/// Whether an object passes the request's label and field selectors.
pub fn selected(q: &Query, obj: &Value) -> bool {
    q.label_selector
        .as_ref()
        .is_none_or(|s| s.matches(&obj["metadata"]["labels"]))
        && q.field_selector.as_ref().is_none_or(|f| f.matches(obj))
}

/// The list namespace: `Some(ns)` for a namespaced list, `None` for all namespaces.
pub fn list_scope(t: &Target) -> Option<&str> {
    if t.res.namespaced {
        t.ns.as_deref()
    } else {
        None
    }
}

/// The list's `metadata`: the snapshot's revision and, when more objects follow, the
/// continue token.
fn list_meta(rv: u64, more: bool, last: Option<&Key>) -> Value {
    let mut m = json!({"resourceVersion": rv.to_string()});
    if more && let Some(k) = last {
        m["continue"] = json!(encode_continue(k));
    }
    m
}

/// How the items are written.
enum Shape {
    /// The objects themselves (`PodList`).
    Objects,
    /// A `meta.k8s.io/v1` Table; the rows carry `include` of each object.
    Table { include: String },
}

/// Everything the reading thread needs.
struct Plan {
    store: Store,
    res: &'static Resource,
    ns: Option<String>,
    after: Option<Key>,
    query: Query,
    shape: Shape,
    /// The fields the selectors read, when there are selectors.
    picks: Option<Paths>,
}

impl Plan {
    /// The plan of a list of `res` in `ns` (`None`: all namespaces) answering `q`,
    /// as a Table if `as_table`.
    fn new(
        store: Store,
        res: &'static Resource,
        ns: Option<&str>,
        q: &Query,
        as_table: bool,
    ) -> ApiResult<Plan> {
        let after = q
            .continue_token
            .as_deref()
            .map(|c| decode_continue(res, c))
            .transpose()?;
        let shape = if as_table {
            Shape::Table {
                include: table::include(q).to_owned(),
            }
        } else {
            Shape::Objects
        };
        Ok(Plan {
            store,
            res,
            ns: ns.map(str::to_owned),
            after,
            query: q.clone(),
            shape,
            picks: Paths::for_selectors(q),
        })
    }
}

/// Serves a list: starts the read and answers once its first chunk (or its error) is
/// there, so an error before any object still gets a proper Status.
pub async fn list(api: &Arc<Api>, t: &Target, call: &Call) -> ApiResult<Response<Body>> {
    let plan = Plan::new(
        api.store.clone(),
        t.res,
        list_scope(t),
        &call.query,
        call.wants_table(),
    )?;
    let (tx, rx) = smol::channel::bounded::<ApiResult<Bytes>>(CHUNKS_QUEUED);
    smol::unblock(move || {
        let mut out = Out {
            buf: Vec::with_capacity(CHUNK + (CHUNK >> 2)),
            tx,
            sent: 0,
        };
        if let Err(e) = write_list(&plan, &mut out) {
            // The client went away (nothing to tell) or the read failed.
            if !out.tx.is_closed() {
                let _ = out.tx.send_blocking(Err(ApiError::from(e)));
            }
        }
        if out.sent > BIG_LIST {
            crate::exec::release_free_memory();
        }
    })
    .detach();
    let first = match rx.recv().await {
        Ok(Ok(chunk)) => chunk,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::internal("the list ended without an answer")),
    };
    let rest = rx.map(|r| {
        r.map(Frame::data).map_err(|e| {
            tracing::warn!(error = %e.message, "list failed after its first chunk was sent");
            std::io::Error::other(e.message)
        })
    });
    let chunks = futures_lite::stream::once(Ok(Frame::data(first))).chain(rest);
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .expect("valid response"))
}

/// The response being written: full chunks go to the client as they fill.
struct Out {
    buf: Vec<u8>,
    tx: smol::channel::Sender<ApiResult<Bytes>>,
    /// Bytes handed to the client so far.
    sent: usize,
}

impl Out {
    fn send(&mut self) -> Result<(), StoreError> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + (CHUNK >> 2)));
        let len = chunk.len();
        self.tx
            .send_blocking(Ok(Bytes::from(chunk)))
            .map_err(|_| StoreError::Closed)?;
        self.sent += len;
        Ok(())
    }

    fn maybe_send(&mut self) -> Result<(), StoreError> {
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(())
    }
}

/// Reads the snapshot and writes the whole response into `out`.
fn write_list(plan: &Plan, out: &mut Out) -> Result<(), StoreError> {
    let res = plan.res;
    let q = &plan.query;
    match &plan.shape {
        Shape::Objects => {
            out.buf.extend_from_slice(b"{\"apiVersion\":\"");
            out.buf.extend_from_slice(res.api_version().as_bytes());
            out.buf.extend_from_slice(b"\",\"kind\":\"");
            out.buf.extend_from_slice(res.kind.as_bytes());
            out.buf.extend_from_slice(b"List\",\"items\":[");
        }
        Shape::Table { .. } => {
            out.buf.extend_from_slice(
                b"{\"apiVersion\":\"meta.k8s.io/v1\",\"kind\":\"Table\",\"columnDefinitions\":",
            );
            serde_json::to_writer(&mut out.buf, &table::column_definitions(res))
                .expect("JSON values serialize");
            out.buf.extend_from_slice(b",\"rows\":[");
        }
    }
    let limit = q.limit;
    let filtering = plan.picks.is_some();
    let mut written = 0usize;
    let summary = plan.store.list_until(
        &res.store_name(),
        plan.ns.as_deref(),
        plan.after.as_ref(),
        // Without selectors the store counts the page; with them, matches count.
        if filtering { None } else { limit },
        |o: ObjectRef<'_>| {
            let mut full = None;
            if let Some(picks) = &plan.picks {
                let ok = if matches!(plan.shape, Shape::Table { .. }) {
                    let v = meta::decode(o.value, o.revision);
                    let ok = selected(q, &v);
                    full = Some(v);
                    ok
                } else {
                    selected(q, &picks.pick(o.value))
                };
                if !ok {
                    return Ok(ControlFlow::Continue(()));
                }
                if limit.is_some_and(|l| written == l) {
                    return Ok(ControlFlow::Break(()));
                }
            }
            if written > 0 {
                out.buf.push(b',');
            }
            match &plan.shape {
                Shape::Objects => {
                    meta::push_with_resource_version(&mut out.buf, o.value, o.revision)
                }
                Shape::Table { include } => {
                    let v = full.unwrap_or_else(|| meta::decode(o.value, o.revision));
                    serde_json::to_writer(&mut out.buf, &table::row(res, &v, include))
                        .expect("JSON values serialize");
                }
            }
            written += 1;
            out.maybe_send()?;
            Ok(ControlFlow::Continue(()))
        },
    )?;
    out.buf.extend_from_slice(b"],\"metadata\":");
    serde_json::to_writer(
        &mut out.buf,
        &list_meta(summary.revision, summary.more, summary.last.as_ref()),
    )
    .expect("JSON values serialize");
    out.buf.push(b'}');
    out.send()
}

/// A tree of the object paths the selectors read (`metadata.labels`, each field
/// selector's path): decoding keeps these and skips everything else.
#[derive(Default, Debug)]
struct Paths {
    /// This node is read whole.
    whole: bool,
    children: Vec<(String, Paths)>,
}

impl Paths {
    /// The paths `q`'s selectors read; `None` without selectors.
    fn for_selectors(q: &Query) -> Option<Paths> {
        if q.label_selector.is_none() && q.field_selector.is_none() {
            return None;
        }
        let mut root = Paths::default();
        if q.label_selector.is_some() {
            root.add(&["metadata", "labels"]);
        }
        for (path, _, _) in q.field_selector.iter().flat_map(|f| &f.0) {
            root.add(&path.split('.').collect::<Vec<_>>());
        }
        Some(root)
    }

    fn add(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            self.whole = true;
            return;
        };
        let i = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                self.children.push(((*first).to_owned(), Paths::default()));
                self.children.len() - 1
            }
        };
        self.children[i].1.add(rest);
    }

    /// The stored object reduced to these paths (Null if it does not parse), which the
    /// selectors judge exactly as they judge the whole object.
    fn pick(&self, stored: &[u8]) -> Value {
        let mut de = serde_json::Deserializer::from_slice(stored);
        self.deserialize(&mut de).unwrap_or(Value::Null)
    }
}

impl<'de> DeserializeSeed<'de> for &Paths {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.whole {
            serde::Deserialize::deserialize(d)
        } else {
            d.deserialize_any(self)
        }
    }
}

/// Matches a map key against the wanted children without allocating.
struct Child<'a>(&'a Paths);

impl<'de> DeserializeSeed<'de> for Child<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Child<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.children.iter().position(|(k, _)| k == key))
    }
}

impl<'de> Visitor<'de> for &Paths {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(found) = map.next_key_seed(Child(self))? {
            match found {
                Some(i) => {
                    let (name, sub) = &self.children[i];
                    let v = map.next_value_seed(sub)?;
                    out.insert(name.clone(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    // A path through something that is not an object reads as absent, as it does in
    // the whole object.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(s: &str) -> Query {
        Query::parse(Some(s)).unwrap()
    }

    #[test]
    fn selectors_judge_picked_fields_as_they_judge_whole_objects() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "namespace": "d", "labels": {"app": "web", "tier": "fe"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
                "status": {"phase": "Running"}}),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "b", "namespace": "d", "labels": {"app": "db"}},
                "spec": {"containers": []}, "status": {"phase": "Pending"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c\"q", "namespace": "d"}}),
            json!({"metadata": "not an object", "spec": [1, 2], "status": 3}),
        ];
        let queries = [
            "labelSelector=app%3Dweb",
            "labelSelector=app%21%3Dweb",
            "labelSelector=tier",
            "labelSelector=%21tier",
            "labelSelector=app+in+%28web%2Cdb%29",
            "fieldSelector=spec.nodeName%3Dn1",
            "fieldSelector=spec.nodeName%3D",
            "fieldSelector=status.phase%21%3DRunning",
            "fieldSelector=metadata.name%3Dc%22q",
            "fieldSelector=metadata.namespace%3Dd&labelSelector=app",
            "fieldSelector=spec.containers%3D%5B%5D",
        ];
        for qs in queries {
            let q = query(qs);
            let paths = Paths::for_selectors(&q).unwrap();
            for o in &objects {
                let stored = serde_json::to_vec(o).unwrap();
                assert_eq!(
                    selected(&q, &paths.pick(&stored)),
                    selected(&q, o),
                    "{qs} on {o}"
                );
            }
        }
        assert!(Paths::for_selectors(&query("limit=5")).is_none());
    }

    #[test]
    fn picking_keeps_only_the_selected_paths() {
        let q = query("labelSelector=app&fieldSelector=spec.nodeName%3Dn1");
        let paths = Paths::for_selectors(&q).unwrap();
        let stored = br#"{"metadata":{"name":"a","labels":{"app":"x"}},"spec":{"nodeName":"n1","containers":[{"name":"c"}]}}"#;
        assert_eq!(
            paths.pick(stored),
            json!({"metadata": {"labels": {"app": "x"}}, "spec": {"nodeName": "n1"}})
        );
        assert_eq!(paths.pick(b"not json"), Value::Null);
    }

    #[test]
    fn objects_get_their_resource_version_without_a_parse() {
        let mut out = Vec::new();
        meta::push_with_resource_version(
            &mut out,
            br#"{"kind":"Pod","metadata":{"name":"a"}}"#,
            42,
        );
        out.push(b',');
        meta::push_with_resource_version(&mut out, br#"{"metadata":{}}"#, 7);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"kind":"Pod","metadata":{"resourceVersion":"42","name":"a"}},{"metadata":{"resourceVersion":"7"}}"#
        );
        let mut out = Vec::new();
        meta::push_with_resource_version(&mut out, br#"{"kind":"Pod"}"#, 3);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "3");
    }

    fn pods() -> &'static Resource {
        super::super::registry::find("", "v1", "pods").unwrap()
    }

    /// A store holding pods p000..p{n-1} in namespace d (labels parity=even|odd, about
    /// 1 KiB each) and one pod in namespace e.
    fn store_with_pods(n: usize) -> Store {
        let store = Store::open_in_memory(Default::default()).unwrap();
        let pod = |ns: &str, name: &str, parity: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"parity": parity},
                    "creationTimestamp": "2025-01-01T00:00:00Z"},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "command": ["sh", "-c", "x".repeat(900)]}]},
                "status": {"phase": "Pending"}})
        };
        for i in 0..n {
            let name = format!("p{i:03}");
            let parity = if i % 2 == 0 { "even" } else { "odd" };
            let v = serde_json::to_vec(&pod("d", &name, parity)).unwrap();
            store
                .create_blocking(Key::new("pods", "d", name), v)
                .unwrap();
        }
        let v = serde_json::to_vec(&pod("e", "other", "even")).unwrap();
        store
            .create_blocking(Key::new("pods", "e", "other"), v)
            .unwrap();
        store
    }

    /// Runs a list of namespace d as the handler does; returns the parsed response
    /// and how many chunks it came in.
    fn run(store: &Store, qs: &str, as_table: bool) -> (Value, usize) {
        let q = query(qs);
        let plan = Plan::new(store.clone(), pods(), Some("d"), &q, as_table).unwrap();
        let (tx, rx) = smol::channel::bounded::<ApiResult<Bytes>>(CHUNKS_QUEUED);
        let client = std::thread::spawn(move || {
            let (mut body, mut chunks) = (Vec::new(), 0);
            while let Ok(chunk) = rx.recv_blocking() {
                body.extend_from_slice(&chunk.unwrap());
                chunks += 1;
            }
            (body, chunks)
        });
        let mut out = Out {
            buf: Vec::new(),
            tx,
            sent: 0,
        };
        write_list(&plan, &mut out).unwrap();
        drop(out);
        let (body, chunks) = client.join().unwrap();
        (serde_json::from_slice(&body).unwrap(), chunks)
    }

    fn names(v: &Value, field: &str) -> Vec<String> {
        v[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let o = if field == "rows" { &o["object"] } else { o };
                o["metadata"]["name"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Follows continue tokens from `qs` to the end; returns every name and the pages.
    fn pages(store: &Store, qs: &str, as_table: bool) -> (Vec<String>, usize) {
        let field = if as_table { "rows" } else { "items" };
        let (mut all, mut n, mut token) = (Vec::new(), 0, String::new());
        loop {
            let (v, _) = run(store, &format!("{qs}{token}"), as_table);
            all.extend(names(&v, field));
            n += 1;
            match v["metadata"]["continue"].as_str() {
                Some(c) => token = format!("&continue={c}"),
                None => return (all, n),
            }
        }
    }

    #[test]
    fn a_big_list_streams_in_chunks_and_holds_every_object_with_its_version() {
        let store = store_with_pods(300);
        let (v, chunks) = run(&store, "", false);
        assert!(chunks > 3, "300 KiB of pods came in {chunks} chunk(s)");
        assert_eq!(
            (v["kind"].as_str(), v["apiVersion"].as_str()),
            (Some("PodList"), Some("v1"))
        );
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 300, "only namespace d, every pod of it");
        assert_eq!(items[0]["metadata"]["name"], "p000");
        // Pod n was the store's write n+1 (a new store is at revision 1).
        assert_eq!(items[7]["metadata"]["resourceVersion"], "9");
        assert_eq!(
            v["metadata"]["resourceVersion"],
            store.revision().to_string()
        );
        assert!(v["metadata"].get("continue").is_none());
    }

    #[test]
    fn pages_with_and_without_selectors_cover_every_match_once() {
        let store = store_with_pods(150);
        let every: Vec<String> = (0..150).map(|i| format!("p{i:03}")).collect();
        let even: Vec<String> = (0..150).step_by(2).map(|i| format!("p{i:03}")).collect();
        assert_eq!(pages(&store, "limit=40", false), (every.clone(), 4));
        // 75 even pods in pages of 40: the filter counts matches, not objects read.
        assert_eq!(
            pages(&store, "limit=40&labelSelector=parity%3Deven", false),
            (even.clone(), 2)
        );
        assert_eq!(
            pages(&store, "limit=25&labelSelector=parity%3Deven", true),
            (even, 3)
        );
        assert_eq!(
            pages(
                &store,
                "limit=75&fieldSelector=metadata.namespace%3Dd",
                false
            ),
            (every, 2)
        );
        let (v, _) = run(&store, "fieldSelector=metadata.name%3Dp007", false);
        assert_eq!(names(&v, "items"), ["p007"]);
        let (v, _) = run(&store, "labelSelector=parity%3Dnone", false);
        assert_eq!(v["items"], json!([]));
    }

    #[test]
    fn tables_have_kubectl_columns_and_the_requested_row_objects() {
        let store = store_with_pods(3);
        let (v, _) = run(&store, "", true);
        assert_eq!(v["kind"], "Table");
        assert_eq!(v["columnDefinitions"][0]["name"], "Name");
        assert_eq!(v["rows"][1]["cells"][0], "p001");
        assert_eq!(v["rows"][1]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(v["rows"][1]["object"]["metadata"]["resourceVersion"], "3");
        let (v, _) = run(&store, "includeObject=Object", true);
        assert_eq!(v["rows"][2]["object"]["spec"]["containers"][0]["name"], "c");
    }

    #[test]
    fn a_client_that_goes_away_stops_the_read() {
        let store = store_with_pods(300);
        let plan = Plan::new(store, pods(), Some("d"), &query(""), false).unwrap();
        let (tx, rx) = smol::channel::bounded(1);
        drop(rx);
        let mut out = Out {
            buf: Vec::new(),
            tx,
            sent: 0,
        };
        assert!(matches!(
            write_list(&plan, &mut out),
            Err(StoreError::Closed)
        ));
        assert_eq!(out.sent, 0);
    }

    #[test]
    fn continue_tokens_round_trip_and_bad_ones_are_named() {
        let res = pods();
        let k = Key::new(res.store_name(), "default", "web-1");
        assert_eq!(decode_continue(res, &encode_continue(&k)).unwrap(), k);
        let e = decode_continue(res, "!!").unwrap_err();
        assert!(
            e.message.contains("invalid continue token"),
            "{}",
            e.message
        );
    }
}
