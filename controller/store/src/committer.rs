//! The write path: one thread drains the queue of pending writes, applies as many as are
//! waiting in one redb transaction (group commit, fsync'd with `Durability::Immediate`),
//! then publishes the events to watchers and answers every writer.
//!
//! Each successful write takes the next global revision; a write whose precondition fails
//! takes none. The change log therefore holds exactly the revisions
//! `compacted + 1 ..= revision`. Compaction of old history runs inside the same
//! transactions, and on a timer when the store is idle.

use crate::codec::{self, LOG, META, META_COMPACTED, META_REVISION, OBJECTS};
use crate::compaction::compact;
use crate::slot::DbSlot;
use crate::watch::Registry;
use crate::{Event, EventKind, Key, Object, StoreError, StoreOptions};
use bytes::Bytes;
use redb::{Durability, ReadableDatabase, ReadableTable, Table};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A commit slower than this is logged as a warning.
const SLOW_COMMIT: Duration = Duration::from_millis(500);

pub(crate) enum Op {
    Create {
        key: Key,
        value: Vec<u8>,
    },
    Update {
        key: Key,
        value: Vec<u8>,
        expected: Option<u64>,
    },
    Delete {
        key: Key,
        expected: Option<u64>,
    },
}

impl Op {
    fn value_len(&self) -> usize {
        match self {
            Op::Create { value, .. } | Op::Update { value, .. } => value.len(),
            Op::Delete { .. } => 0,
        }
    }
}

pub(crate) struct Pending {
    pub op: Op,
    pub reply: async_channel::Sender<Result<Object, StoreError>>,
}

/// Counters shared with `Store::stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub writes: AtomicU64,
    pub compacted: AtomicU64,
}

pub(crate) struct Committer {
    pub db: Arc<DbSlot>,
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub options: StoreOptions,
    pub revision: u64,
    pub compacted: u64,
    /// A commit failed on I/O: redb refuses writes until the database is reopened.
    pub poisoned: bool,
    /// The I/O error behind `poisoned`, or of the last attempt to recover from it.
    pub io_error: Option<StoreError>,
    /// When to try reopening next while poisoned.
    pub retry_at: Instant,
}

impl Committer {
    pub(crate) fn run(mut self, rx: Receiver<Pending>) {
        loop {
            let first = match rx.recv_timeout(self.options.compaction_interval) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.compact_only() {
                        tracing::warn!(error = %e, "store compaction failed");
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut bytes = first.op.value_len();
            let mut batch = vec![first];
            while batch.len() < self.options.max_batch && bytes < self.options.max_batch_bytes {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.op.value_len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        self.registry.close_all();
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
        if self.poisoned
            && let Err(e) = self.try_recover()
        {
            tracing::error!(error = %e, "store still failing after an I/O error");
            for reply in replies {
                let _ = reply.try_send(Err(e.clone()));
            }
            return;
        }
        let now = codec::now_millis();
        let mut results = Vec::with_capacity(replies.len());
        let mut events = Vec::new();
        let started = Instant::now();
        let outcome = (|| -> Result<(u64, u64), StoreError> {
            let mut txn = self.db.get()?.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.set_quick_repair(self.options.quick_repair);
            let (revision, compacted) = {
                let mut objects = txn.open_table(OBJECTS)?;
                let mut log = txn.open_table(LOG)?;
                let mut meta = txn.open_table(META)?;
                let mut revision = self.revision;
                for op in ops {
                    match apply(&mut objects, &mut log, revision + 1, now, op)? {
                        Ok(event) => {
                            revision += 1;
                            results.push(Ok(event.object.clone()));
                            events.push(Arc::new(event));
                        }
                        Err(e) => results.push(Err(e)),
                    }
                }
                meta.insert(META_REVISION, revision)?;
                let compacted = compact(
                    &mut log,
                    &mut meta,
                    self.compacted,
                    revision,
                    now,
                    &self.options,
                )?;
                (revision, compacted)
            };
            if revision == self.revision && compacted == self.compacted {
                // Every write failed its precondition: nothing to make durable.
                txn.abort()?;
            } else {
                txn.commit()?;
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
            }
            Ok((revision, compacted))
        })();
        let took = started.elapsed();
        if took > SLOW_COMMIT {
            tracing::warn!(
                millis = took.as_millis() as u64,
                writes = replies.len(),
                "slow store commit: the disk is slow or busy"
            );
        } else {
            tracing::debug!(
                micros = took.as_micros() as u64,
                writes = replies.len(),
                "store commit"
            );
        }
        match outcome {
            Ok((revision, compacted)) => {
                self.revision = revision;
                self.compacted = compacted;
                self.counters.compacted.store(compacted, Ordering::Relaxed);
                self.counters
                    .writes
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                self.registry.publish(&events, revision);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.try_send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = replies.len(), "store commit failed");
                if is_io_failure(&e) {
                    self.poisoned = true;
                    self.io_error = Some(e.clone());
                }
                for reply in replies {
                    let _ = reply.try_send(Err(e.clone()));
                }
            }
        }
    }

    /// Recovers at most once a second; meanwhile writes fail fast (reads go on).
    fn try_recover(&mut self) -> Result<(), StoreError> {
        if Instant::now() < self.retry_at {
            return Err(self
                .io_error
                .clone()
                .unwrap_or_else(|| StoreError::Db(Arc::new(redb::Error::PreviousIo))));
        }
        self.retry_at = Instant::now() + Duration::from_secs(1);
        let result = self.recover();
        if let Err(e) = &result {
            self.io_error = Some(e.clone());
        }
        result
    }

    /// Reopens the database after an I/O error and catches up with what is on disk: a
    /// commit reported as failed may have reached it after all (its fsync failed, say),
    /// and watchers must then see it.
    fn recover(&mut self) -> Result<(), StoreError> {
        let db = self.db.reopen()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |name| -> Result<u64, StoreError> {
            Ok(meta.get(name)?.map(|g| g.value()).unwrap_or(0))
        };
        let (revision, compacted) = (get(META_REVISION)?, get(META_COMPACTED)?);
        if revision > self.revision {
            let log = txn.open_table(LOG)?;
            let mut events = Vec::new();
            for entry in log.range(self.revision + 1..=revision)? {
                let (rev, record) = entry?;
                let event =
                    codec::log_event(&log, rev.value(), &codec::decode_log(record.value())?)?;
                events.push(Arc::new(event));
            }
            self.counters
                .writes
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.registry.publish(&events, revision);
            self.revision = revision;
        } else if revision < self.revision {
            tracing::error!(
                on_disk = revision,
                acknowledged = self.revision,
                "acknowledged writes are missing after reopening the store"
            );
        }
        self.compacted = compacted;
        self.counters.compacted.store(compacted, Ordering::Relaxed);
        self.poisoned = false;
        self.io_error = None;
        tracing::warn!(revision, "reopened the store after an I/O error");
        Ok(())
    }

    /// Removes expired history when no write is pending.
    fn compact_only(&mut self) -> Result<(), StoreError> {
        if self.poisoned {
            self.try_recover()?;
        }
        let now = codec::now_millis();
        let db = self.db.get()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.options.quick_repair);
        let compacted = {
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            compact(
                &mut log,
                &mut meta,
                self.compacted,
                self.revision,
                now,
                &self.options,
            )?
        };
        if compacted == self.compacted {
            txn.abort()?;
            return Ok(());
        }
        if let Err(e) = txn.commit() {
            let e = StoreError::from(e);
            if is_io_failure(&e) {
                self.poisoned = true;
                self.io_error = Some(e.clone());
            }
            return Err(e);
        }
        self.compacted = compacted;
        self.counters.compacted.store(compacted, Ordering::Relaxed);
        Ok(())
    }
}

/// Whether `e` leaves redb refusing writes until the database is reopened.
fn is_io_failure(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(e) if matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo))
}

/// Applies one write at `revision`. The outer error aborts the whole batch (storage
/// failure); the inner one is this write's own outcome (precondition failed).
fn apply(
    objects: &mut Table<&[u8], &[u8]>,
    log: &mut Table<u64, &[u8]>,
    revision: u64,
    now: u64,
    op: Op,
) -> Result<Result<Event, StoreError>, StoreError> {
    let (kind, key, value, prev) = match op {
        Op::Create { key, value } => {
            let enc = key.encode();
            if objects.get(enc.as_slice())?.is_some() {
                return Ok(Err(StoreError::AlreadyExists));
            }
            objects.insert(
                enc.as_slice(),
                codec::encode_object(revision, &value).as_slice(),
            )?;
            log.insert(
                revision,
                codec::encode_log(EventKind::Added, now, &enc, 0, &value).as_slice(),
            )?;
            (EventKind::Added, key, Bytes::from(value), None)
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let enc = key.encode();
            let (current, prev) = match objects.get(enc.as_slice())? {
                None => return Ok(Err(StoreError::NotFound)),
                Some(rec) => {
                    let (current, prev) = codec::decode_object(rec.value())?;
                    (current, Bytes::copy_from_slice(prev))
                }
            };
            if let Some(expected) = expected
                && expected != current
            {
                return Ok(Err(StoreError::Conflict { current }));
            }
            objects.insert(
                enc.as_slice(),
                codec::encode_object(revision, &value).as_slice(),
            )?;
            log.insert(
                revision,
                codec::encode_log(EventKind::Modified, now, &enc, current, &value).as_slice(),
            )?;
            (EventKind::Modified, key, Bytes::from(value), Some(prev))
        }
        Op::Delete { key, expected } => {
            let enc = key.encode();
            let last = match objects.get(enc.as_slice())? {
                None => return Ok(Err(StoreError::NotFound)),
                Some(rec) => {
                    let (current, value) = codec::decode_object(rec.value())?;
                    if let Some(expected) = expected
                        && expected != current
                    {
                        return Ok(Err(StoreError::Conflict { current }));
                    }
                    Bytes::copy_from_slice(value)
                }
            };
            objects.remove(enc.as_slice())?;
            log.insert(
                revision,
                codec::encode_log(EventKind::Deleted, now, &enc, 0, &last).as_slice(),
            )?;
            (EventKind::Deleted, key, last, None)
        }
    };
    Ok(Ok(Event {
        kind,
        object: Object {
            key,
            revision,
            value,
        },
        prev,
    }))
}
