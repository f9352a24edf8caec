//! Byte layouts of the redb tables: object records, change-log records, table names.
//!
//! - `objects`: encoded [`Key`] -> `revision u64 LE` ++ value bytes.
//! - `log`: revision -> `kind u8` ++ `unix millis u64 LE` ++ `key len u32 LE` ++ key ++ value
//!   (for a deletion, the value is the object's last state).
//! - `meta`: `"format"` ([`FORMAT`]), `"revision"` (last assigned revision), `"compacted"` (every log record at or
//!   below it has been removed).

use crate::{Event, EventKind, Key, Object, StoreError};
use redb::TableDefinition;

/// Version of these layouts, kept in `meta` under `"format"`.
pub(crate) const FORMAT: u64 = 1;

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

/// Only the revision of an object record.
pub(crate) fn object_revision(record: &[u8]) -> Result<u64, StoreError> {
    decode_object(record).map(|(rev, _)| rev)
}

fn kind_byte(kind: EventKind) -> u8 {
    match kind {
        EventKind::Added => 1,
        EventKind::Modified => 2,
        EventKind::Deleted => 3,
    }
}

pub(crate) fn encode_log(kind: EventKind, millis: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + key.len() + value.len());
    out.push(kind_byte(kind));
    out.extend_from_slice(&millis.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

/// A decoded change-log record, borrowing the stored bytes.
pub(crate) struct LogRecord<'a> {
    pub kind: EventKind,
    pub millis: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

pub(crate) fn decode_log(record: &[u8]) -> Result<LogRecord<'_>, StoreError> {
    let corrupt = || StoreError::Corrupt("change-log record too short".into());
    if record.len() < 13 {
        return Err(corrupt());
    }
    let kind = match record[0] {
        1 => EventKind::Added,
        2 => EventKind::Modified,
        3 => EventKind::Deleted,
        other => {
            return Err(StoreError::Corrupt(format!(
                "change-log record has unknown kind {other}"
            )));
        }
    };
    let millis = u64::from_le_bytes(record[1..9].try_into().unwrap());
    let key_len = u32::from_le_bytes(record[9..13].try_into().unwrap()) as usize;
    let rest = &record[13..];
    if rest.len() < key_len {
        return Err(corrupt());
    }
    let (key, value) = rest.split_at(key_len);
    Ok(LogRecord {
        kind,
        millis,
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

/// The event a decoded change-log record stands for.
pub(crate) fn log_event(revision: u64, record: &LogRecord<'_>) -> Result<Event, StoreError> {
    Ok(Event {
        kind: record.kind,
        object: Object {
            key: Key::decode(record.key)?,
            revision,
            value: bytes::Bytes::copy_from_slice(record.value),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_round_trip() {
        let key = Key::new("pods", "default", "web").encode();
        let rec = encode_log(EventKind::Deleted, 1234, &key, b"{\"a\":1}");
        let d = decode_log(&rec).unwrap();
        assert_eq!(d.kind, EventKind::Deleted);
        assert_eq!(d.millis, 1234);
        assert_eq!(d.key, key.as_slice());
        assert_eq!(d.value, b"{\"a\":1}");
        assert!(decode_log(&rec[..10]).is_err());
    }

    #[test]
    fn object_records_round_trip() {
        let rec = encode_object(77, b"xyz");
        assert_eq!(decode_object(&rec).unwrap(), (77, &b"xyz"[..]));
        assert!(decode_object(&rec[..5]).is_err());
    }
}
