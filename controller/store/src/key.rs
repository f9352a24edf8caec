//! Object keys — (resource, namespace, name) — and their ordered byte encoding in redb.
//!
//! A key is stored as `resource NUL namespace NUL name`. NUL sorts below every other
//! byte, so byte order equals the order of the (resource, namespace, name) tuple, and
//! "every object of a resource" or "of a resource in one namespace" is one contiguous
//! range of the table.

use crate::StoreError;
use std::fmt;

/// Identity of a stored object: resource (e.g. `pods`, `apps/deployments`), namespace
/// (`""` for cluster-scoped objects) and name. Ordered by (resource, namespace, name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    /// A namespaced key.
    pub fn new(
        resource: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Key {
        Key {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A cluster-scoped key (empty namespace).
    pub fn cluster(resource: impl Into<String>, name: impl Into<String>) -> Key {
        Key::new(resource, "", name)
    }

    /// Rejects keys the encoding cannot hold: empty resource or name, or a NUL byte.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_resource(&self.resource)?;
        validate_part("namespace", &self.namespace)?;
        if self.name.is_empty() {
            return Err(StoreError::InvalidKey(format!(
                "empty object name in {}",
                self
            )));
        }
        validate_part("name", &self.name)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.resource.len() + self.namespace.len() + self.name.len() + 2);
        out.extend_from_slice(self.resource.as_bytes());
        out.push(0);
        out.extend_from_slice(self.namespace.as_bytes());
        out.push(0);
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Key, StoreError> {
        let mut parts = bytes.splitn(3, |b| *b == 0);
        let mut next = || {
            parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .map(str::to_owned)
                .ok_or_else(|| StoreError::Corrupt(format!("bad object key {bytes:?}")))
        };
        Ok(Key {
            resource: next()?,
            namespace: next()?,
            name: next()?,
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.resource, self.name)
        } else {
            write!(f, "{} {}/{}", self.resource, self.namespace, self.name)
        }
    }
}

pub(crate) fn validate_resource(resource: &str) -> Result<(), StoreError> {
    if resource.is_empty() {
        return Err(StoreError::InvalidKey("empty resource name".into()));
    }
    validate_part("resource", resource)
}

pub(crate) fn validate_part(what: &str, value: &str) -> Result<(), StoreError> {
    if value.as_bytes().contains(&0) {
        return Err(StoreError::InvalidKey(format!(
            "{what} {value:?} contains a NUL byte"
        )));
    }
    Ok(())
}

/// The encoded-key prefix shared by every object of `resource` (in `namespace`, if given).
pub(crate) fn prefix(resource: &str, namespace: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(resource.len() + 2 + namespace.map_or(0, str::len));
    out.extend_from_slice(resource.as_bytes());
    out.push(0);
    if let Some(ns) = namespace {
        out.extend_from_slice(ns.as_bytes());
        out.push(0);
    }
    out
}

/// The exclusive upper bound of the range of keys starting with `prefix` (which ends in NUL).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        debug_assert_eq!(*last, 0);
        *last = 1;
    }
    end
}

/// Whether an encoded key belongs to the resource/namespace selected by `prefix`.
pub(crate) fn matches(encoded: &[u8], prefix: &[u8]) -> bool {
    encoded.starts_with(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_orders_like_the_tuple() {
        let mut keys = vec![
            Key::new("pods", "default", "b"),
            Key::new("pods", "default", "a"),
            Key::new("pods", "", "z"),
            Key::new("pod", "zz", "a"),
            Key::new("pods", "defaults", "a"),
            Key::new("podsx", "", "a"),
            Key::new("apps/deployments", "kube-system", "coredns"),
        ];
        let mut by_bytes = keys.clone();
        keys.sort();
        by_bytes.sort_by_key(|k| k.encode());
        assert_eq!(keys, by_bytes);
        for k in &keys {
            assert_eq!(&Key::decode(&k.encode()).unwrap(), k);
        }
    }

    #[test]
    fn prefix_ranges_select_resource_and_namespace() {
        let p = prefix("pods", Some("default"));
        let end = prefix_end(&p);
        let inside = Key::new("pods", "default", "x").encode();
        let other_ns = Key::new("pods", "defaults", "x").encode();
        let other_res = Key::new("podsx", "default", "x").encode();
        assert!(inside.as_slice() >= p.as_slice() && inside < end);
        assert!(other_ns >= end);
        assert!(!matches(&other_res, &prefix("pods", None)));
    }

    #[test]
    fn bad_keys_are_rejected_with_a_reason() {
        let err = Key::new("pods", "default", "").validate().unwrap_err();
        assert!(err.to_string().contains("empty object name"), "{err}");
        let err = Key::new("", "default", "a").validate().unwrap_err();
        assert!(err.to_string().contains("empty resource"), "{err}");
        let err = Key::new("pods", "de\0fault", "a").validate().unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}
