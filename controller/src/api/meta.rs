//! Object metadata handling shared by the verbs: names (generateName), uids, times,
//! the served resourceVersion, and label/annotation access on JSON objects.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// The current time as Kubernetes writes it (`2006-01-02T15:04:05Z`).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok();
    if !ok {
        // Extremely unlikely; fall back to the clock so names still differ.
        let t = jiff::Timestamp::now().as_nanosecond() as u128;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8;
        }
    }
    buf
}

/// A random version-4 UUID.
pub fn uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The 5-character suffix Kubernetes appends to `generateName`.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// `obj.metadata`, created if missing.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// Inserts `"resourceVersion":"rv"` into the top-level metadata of a stored object.
///
/// Stored objects are serde_json output with sorted keys, so the first
/// `"metadata":{` is the top-level one (every key sorting before it holds a string
/// or an object without metadata); this avoids a parse per served object.
pub fn with_resource_version(stored: &[u8], rv: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + 32);
    push_with_resource_version(&mut out, stored, rv);
    out
}

/// Appends a stored object to `out` with its resourceVersion inserted, as
/// [`with_resource_version`] makes it, without an intermediate copy (lists, watches).
pub fn push_with_resource_version(out: &mut Vec<u8>, stored: &[u8], rv: u64) {
    const NEEDLE: &[u8] = b"\"metadata\":{";
    if let Some(pos) = find(stored, NEEDLE) {
        let at = pos + NEEDLE.len();
        out.extend_from_slice(&stored[..at]);
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(rv.to_string().as_bytes());
        out.push(b'"');
        if stored.get(at) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&stored[at..]);
        return;
    }
    match serde_json::from_slice::<Value>(stored) {
        Ok(mut v) => {
            metadata_mut(&mut v).insert("resourceVersion".into(), rv.to_string().into());
            serde_json::to_writer(&mut *out, &v).expect("JSON values serialize");
        }
        Err(_) => out.extend_from_slice(stored),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A stored object as a JSON value with its resourceVersion set.
pub fn decode(stored: &[u8], rv: u64) -> Value {
    let mut v: Value = serde_json::from_slice(stored).unwrap_or(Value::Null);
    if v.is_object() {
        metadata_mut(&mut v).insert("resourceVersion".into(), rv.to_string().into());
    }
    v
}

/// Serializes an object for the store, without the fields the store owns.
pub fn encode(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    serde_json::to_vec(&obj).expect("JSON values serialize")
}

/// Parses a resourceVersion string.
pub fn parse_rv(s: &str) -> Option<u64> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_version_is_spliced_into_top_level_metadata() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"template": {"metadata": {}}}});
        let out = with_resource_version(&encode(&obj), 42);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "a");
        assert!(
            v["spec"]["template"]["metadata"]
                .get("resourceVersion")
                .is_none()
        );
        let empty = with_resource_version(br#"{"metadata":{}}"#, 7);
        let v: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn uuids_and_suffixes_have_kubernetes_shapes() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(uuid(), u);
        assert_eq!(name_suffix().len(), 5);
    }
}
