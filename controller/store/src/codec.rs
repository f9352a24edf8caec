//! Byte layouts of the redb tables: object records, change-log records, table names.
//!
//! - `objects`: encoded [`Key`] -> `revision u64 LE` ++ value bytes.
//! - `log`: revision -> `kind u8` ++ `unix millis u64 LE` ++ `key len u32 LE`
//!   [++ `previous revision u64 LE`] ++ key ++ value. For a deletion the value is the
//!   object's last state. A modification (kind 4) names the revision of the state it
//!   replaced, so a watcher replaying the log can show what an object was before;
//!   format 1 wrote modifications as kind 2, without it (still read).
//! - `meta`: `"format"` ([`FORMAT`]), `"revision"` (last assigned revision), `"compacted"` (every log record at or
//!   below it has been removed).

use crate::{Event, EventKind, Key, Object, StoreError};
use bytes::Bytes;
use redb::{ReadableTable, TableDefinition};

/// Version of these layouts, kept in `meta` under `"format"`.
pub(crate) const FORMAT: u64 = 2;
/// The older format this build still opens (and then marks as [`FORMAT`]): its records
/// are a subset of the current ones.
pub(crate) const FORMAT_READABLE: u64 = 1;

pub(crate) const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compacted";

pub(crate) fn encode_object(revision: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_object(record: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if record.len() < 8 {
        return Err(StoreError::Corrupt(
            "object record shorter than 8 bytes".into(),
        ));
    }
    let (rev, value) = record.split_at(8);
    Ok((u64::from_le_bytes(rev.try_into().unwrap()), value))
}

const KIND_ADDED: u8 = 1;
/// A modification without the previous revision (format 1).
const KIND_MODIFIED_V1: u8 = 2;
const KIND_DELETED: u8 = 3;
/// A modification followed by the revision of the state it replaced.
const KIND_MODIFIED: u8 = 4;

/// A change-log record. `prev` (the revision of the replaced state) is kept for
/// modifications only.
pub(crate) fn encode_log(
    kind: EventKind,
    millis: u64,
    key: &[u8],
    prev: u64,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + key.len() + value.len());
    out.push(match kind {
        EventKind::Added => KIND_ADDED,
        EventKind::Modified => KIND_MODIFIED,
        EventKind::Deleted => KIND_DELETED,
    });
    out.extend_from_slice(&millis.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    if kind == EventKind::Modified {
        out.extend_from_slice(&prev.to_le_bytes());
    }
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

/// A decoded change-log record, borrowing the stored bytes.
pub(crate) struct LogRecord<'a> {
    pub kind: EventKind,
    pub millis: u64,
    /// For a modification: the revision of the state it replaced (unknown in format 1).
    pub prev: Option<u64>,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

pub(crate) fn decode_log(record: &[u8]) -> Result<LogRecord<'_>, StoreError> {
    let corrupt = || StoreError::Corrupt("change-log record too short".into());
    if record.len() < 13 {
        return Err(corrupt());
    }
    let kind = match record[0] {
        KIND_ADDED => EventKind::Added,
        KIND_MODIFIED_V1 | KIND_MODIFIED => EventKind::Modified,
        KIND_DELETED => EventKind::Deleted,
        other => {
            return Err(StoreError::Corrupt(format!(
                "change-log record has unknown kind {other}"
            )));
        }
    };
    let millis = u64::from_le_bytes(record[1..9].try_into().unwrap());
    let key_len = u32::from_le_bytes(record[9..13].try_into().unwrap()) as usize;
    let mut rest = &record[13..];
    let mut prev = None;
    if record[0] == KIND_MODIFIED {
        if rest.len() < 8 {
            return Err(corrupt());
        }
        let (p, r) = rest.split_at(8);
        prev = Some(u64::from_le_bytes(p.try_into().unwrap()));
        rest = r;
    }
    if rest.len() < key_len {
        return Err(corrupt());
    }
    let (key, value) = rest.split_at(key_len);
    Ok(LogRecord {
        kind,
        millis,
        prev,
        key,
        value,
    })
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The event a decoded change-log record stands for. A modification's previous state
/// is read from `log` while its record is still there (not compacted).
pub(crate) fn log_event(
    log: &impl ReadableTable<u64, &'static [u8]>,
    revision: u64,
    record: &LogRecord<'_>,
) -> Result<Event, StoreError> {
    let prev = match record.prev {
        Some(p) => match log.get(p)? {
            Some(g) => Some(Bytes::copy_from_slice(decode_log(g.value())?.value)),
            None => None,
        },
        None => None,
    };
    Ok(Event {
        kind: record.kind,
        object: Object {
            key: Key::decode(record.key)?,
            revision,
            value: Bytes::copy_from_slice(record.value),
        },
        prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_round_trip() {
        let key = Key::new("pods", "default", "web").encode();
        let rec = encode_log(EventKind::Deleted, 1234, &key, 0, b"{\"a\":1}");
        let d = decode_log(&rec).unwrap();
        assert_eq!(d.kind, EventKind::Deleted);
        assert_eq!(d.millis, 1234);
        assert_eq!(d.prev, None);
        assert_eq!(d.key, key.as_slice());
        assert_eq!(d.value, b"{\"a\":1}");
        assert!(decode_log(&rec[..10]).is_err());

        let rec = encode_log(EventKind::Modified, 99, &key, 41, b"{}");
        let d = decode_log(&rec).unwrap();
        assert_eq!(d.kind, EventKind::Modified);
        assert_eq!(d.prev, Some(41));
        assert_eq!((d.key, d.value), (key.as_slice(), &b"{}"[..]));
        assert!(decode_log(&rec[..16]).is_err());
    }

    #[test]
    fn format_1_modifications_still_decode() {
        let key = Key::new("pods", "default", "web").encode();
        let mut rec = vec![KIND_MODIFIED_V1];
        rec.extend_from_slice(&7u64.to_le_bytes());
        rec.extend_from_slice(&(key.len() as u32).to_le_bytes());
        rec.extend_from_slice(&key);
        rec.extend_from_slice(b"{}");
        let d = decode_log(&rec).unwrap();
        assert_eq!((d.kind, d.millis, d.prev), (EventKind::Modified, 7, None));
        assert_eq!((d.key, d.value), (key.as_slice(), &b"{}"[..]));
    }

    #[test]
    fn object_records_round_trip() {
        let rec = encode_object(77, b"xyz");
        assert_eq!(decode_object(&rec).unwrap(), (77, &b"xyz"[..]));
        assert!(decode_object(&rec[..5]).is_err());
    }
}
