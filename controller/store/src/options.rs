//! [`StoreOptions`]: the store's tuning knobs and their defaults.

use std::time::Duration;

/// Tuning of a [`Store`]. The defaults suit a small controller.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of redb page cache (bounds the store's share of RSS). Default 8 MiB: redb
    /// fills whatever it is given (the controller holding 10,000 pods measured 22, 27,
    /// 36 and 52 MiB RSS with 4, 8, 16 and 32 MiB), and reads past it come from the
    /// kernel's page cache, so a list of 10,000 pods took no longer with 8 than with 32.
    pub cache_size: usize,
    /// Change-log records older than this many revisions are compacted.
    pub history_revisions: u64,
    /// Change-log records older than this are compacted.
    pub history_age: Duration,
    /// How often an idle store checks for history to compact.
    pub compaction_interval: Duration,
    /// Most writes in one group commit.
    pub max_batch: usize,
    /// Most value bytes in one group commit (a batch holds at least one write).
    pub max_batch_bytes: usize,
    /// Save redb's allocator state with every commit (2-phase commit), so reopening after
    /// a crash is quick instead of a walk over the whole file (Flotilla is crash-only:
    /// restarts must be fast). Costs some commit speed; see the store-recovery example.
    pub quick_repair: bool,
    /// Compact the redb file when opening it, if pages that old writes freed make up more
    /// than a quarter of it. Off by default: redb reuses freed pages as it writes, and the
    /// check walks the whole file (≈0.3 s per 80 MiB on a fast disk).
    pub compact_file_on_open: bool,
    /// Events a watcher may have pending before it is cut off.
    pub watch_queue: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_size: 8 << 20,
            history_revisions: 20_000,
            history_age: Duration::from_secs(5 * 60),
            compaction_interval: Duration::from_secs(10),
            max_batch: 1024,
            max_batch_bytes: 16 << 20,
            compact_file_on_open: false,
            quick_repair: true,
            watch_queue: 10_000,
        }
    }
}
