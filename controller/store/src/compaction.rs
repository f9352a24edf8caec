//! Compaction of the change log: records outside the retention window (by count and
//! by age) are removed, a bounded number per transaction, and the compaction mark — every
//! record at or below it is gone — is persisted with them.

use crate::codec::{self, META_COMPACTED};
use crate::{StoreError, StoreOptions};
use redb::{ReadableTable, Table};

/// Most log records one compaction step removes, so a commit stays short.
const COMPACT_STEP: usize = 4096;

/// Drops log records outside the retention window (older than `history_revisions`
/// revisions or than `history_age`), at most [`COMPACT_STEP`] per call, and persists the
/// new compaction mark. Returns the mark.
pub(crate) fn compact(
    log: &mut Table<u64, &[u8]>,
    meta: &mut Table<&str, u64>,
    mut compacted: u64,
    revision: u64,
    now: u64,
    options: &StoreOptions,
) -> Result<u64, StoreError> {
    let count_floor = revision.saturating_sub(options.history_revisions);
    let age_floor = now.saturating_sub(options.history_age.as_millis() as u64);
    let start = compacted;
    for _ in 0..COMPACT_STEP {
        let expired = match log.first()? {
            None => break,
            Some((rev, record)) => {
                let rev = rev.value();
                rev <= count_floor || codec::decode_log(record.value())?.millis < age_floor
            }
        };
        if !expired {
            break;
        }
        if let Some((rev, _)) = log.pop_first()? {
            compacted = rev.value();
        }
    }
    if compacted != start {
        meta.insert(META_COMPACTED, compacted)?;
    }
    Ok(compacted)
}
