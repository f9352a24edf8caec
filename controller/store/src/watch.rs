//! Watches: a registry of live watchers fed by the committer, and the [`Watcher`] a
//! client reads — first a replay of the change log from its start revision, then the
//! live events, in revision order with no gap and no duplicate.
//!
//! Every watcher has a bounded queue. A watcher that falls more than the queue's length
//! behind is cut off: it yields what it already holds and then `None`. The client then
//! watches again from the last revision it saw (or, if that is `Gone`, lists again).
//! The queue grows as events wait in it rather than being allocated at its full length
//! up front: an idle controller has a dozen watchers, each allowed 10,000 events.

use crate::codec::{self, LOG, META, META_COMPACTED};
use crate::slot::DbSlot;
use crate::{Event, Key, StoreError};
use futures_lite::Stream;
use redb::{ReadTransaction, ReadableDatabase};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

/// How many change-log records a replaying watcher reads at a time.
const REPLAY_CHUNK: usize = 256;

struct Slot {
    prefix: Vec<u8>,
    /// Unbounded channel, held to `capacity` pending events by `publish` (the only
    /// sender, under the registry lock).
    tx: async_channel::Sender<Arc<Event>>,
    capacity: usize,
}

/// Live watchers and the revision whose events they have all been given.
pub(crate) struct Registry {
    slots: Mutex<Vec<Slot>>,
    /// Last revision committed and handed to the watchers (what `Store::revision` says).
    published: AtomicU64,
}

impl Registry {
    pub(crate) fn new(revision: u64) -> Registry {
        Registry {
            slots: Mutex::new(Vec::new()),
            published: AtomicU64::new(revision),
        }
    }

    pub(crate) fn revision(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Hands freshly committed events to every matching watcher, then advances the
    /// published revision to `revision` — both under one lock, so a watcher registering
    /// concurrently sees either all of a batch in its queue or none of it.
    pub(crate) fn publish(&self, events: &[Arc<Event>], revision: u64) {
        let mut slots = self.slots.lock().unwrap();
        if !events.is_empty() {
            slots.retain(|slot| {
                for ev in events {
                    if !key_matches(&ev.object.key, &slot.prefix) {
                        continue;
                    }
                    if slot.tx.len() >= slot.capacity || slot.tx.try_send(ev.clone()).is_err() {
                        // Full: the watcher lags too far; cut it off (it drains what it
                        // holds, then ends). Closed: the watcher is gone.
                        slot.tx.close();
                        return false;
                    }
                }
                true
            });
        }
        self.published.store(revision, Ordering::Release);
    }

    /// Ends every watcher (the store is shutting down).
    pub(crate) fn close_all(&self) {
        for slot in self.slots.lock().unwrap().drain(..) {
            slot.tx.close();
        }
    }

    /// Registers a live queue for `prefix`; returns it with the published revision at
    /// the moment of registration (events above it will arrive on the queue).
    fn register(
        &self,
        prefix: Vec<u8>,
        capacity: usize,
    ) -> (async_channel::Receiver<Arc<Event>>, u64) {
        let (tx, rx) = async_channel::unbounded();
        let mut slots = self.slots.lock().unwrap();
        // Forget watchers dropped since the last write (publish forgets them too).
        slots.retain(|slot| !slot.tx.is_closed());
        slots.push(Slot {
            prefix,
            tx,
            capacity: capacity.max(1),
        });
        (rx, self.published.load(Ordering::Acquire))
    }
}

fn key_matches(key: &Key, prefix: &[u8]) -> bool {
    // Compare without allocating: prefix is `resource NUL [namespace NUL]`.
    let res = key.resource.as_bytes();
    if prefix.len() <= res.len() || &prefix[..res.len()] != res || prefix[res.len()] != 0 {
        return false;
    }
    let rest = &prefix[res.len() + 1..];
    if rest.is_empty() {
        return true;
    }
    let ns = key.namespace.as_bytes();
    rest.len() == ns.len() + 1 && &rest[..ns.len()] == ns && rest[ns.len()] == 0
}

fn compaction_mark(txn: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(META)?
        .get(META_COMPACTED)?
        .map(|g| g.value())
        .unwrap_or(0))
}

/// The part of the history a new watcher must read from the change log.
/// Each chunk is read from a fresh snapshot, so a slow reader pins no old pages; the
/// database is held weakly, so a watcher does not keep a closed store open.
struct Replay {
    db: Weak<DbSlot>,
    /// Next revision to read.
    next: u64,
    /// Last revision to read (inclusive): the published revision at registration.
    end: u64,
    buf: VecDeque<Event>,
}

/// A stream of [`Event`]s for one resource (and optionally one namespace), in revision
/// order. Read it with [`Watcher::next`] or as a [`Stream`].
///
/// It ends (`None`) when the store shuts down, when this watcher fell too far behind
/// (more events pending than the store's `watch_queue`), or when its replay failed (see
/// [`Watcher::error`]). The client should then watch again from the last revision it
/// received, or list again if that yields [`StoreError::Gone`].
///
/// `next` is cancel-safe: dropping its future (e.g. racing it against a timer) loses no
/// event.
pub struct Watcher {
    registry: Arc<Registry>,
    prefix: Vec<u8>,
    from: u64,
    /// Revision of the last event returned (`from` before the first).
    last: u64,
    replay: Option<Replay>,
    live: Pin<Box<async_channel::Receiver<Arc<Event>>>>,
    failed: Option<StoreError>,
}

impl Watcher {
    pub(crate) fn start(
        registry: &Arc<Registry>,
        db: &Arc<DbSlot>,
        prefix: Vec<u8>,
        from: Option<u64>,
        capacity: usize,
    ) -> Result<Watcher, StoreError> {
        let (live, published) = registry.register(prefix.clone(), capacity);
        let from = match from {
            None | Some(0) => published,
            Some(f) => f,
        };
        let mut replay = None;
        if from < published {
            // A snapshot taken after registration holds every revision up to `published`.
            let compacted = compaction_mark(&db.get()?.begin_read()?)?;
            if from < compacted {
                return Err(StoreError::Gone { oldest: compacted });
            }
            replay = Some(Replay {
                db: Arc::downgrade(db),
                next: from + 1,
                end: published,
                buf: VecDeque::new(),
            });
        }
        Ok(Watcher {
            registry: registry.clone(),
            prefix,
            from,
            last: from,
            replay,
            live: Box::pin(live),
            failed: None,
        })
    }

    /// The next event, or `None` when the watch has ended (see the type's docs).
    pub async fn next(&mut self) -> Option<Event> {
        futures_lite::StreamExt::next(self).await
    }

    /// A revision up to which this watcher has returned every matching event: at least
    /// the last event's revision, and the store's current revision when nothing is
    /// pending. Safe to resume from and to send as a bookmark — unlike
    /// [`Store::revision`](crate::Store::revision), which may run ahead of events still
    /// queued here.
    pub fn progress(&self) -> u64 {
        if self.replay.is_some() || self.failed.is_some() {
            return self.last;
        }
        // Under the registry lock no batch is half-published: an empty, open queue means
        // every event up to the published revision has been returned.
        let _slots = self.registry.slots.lock().unwrap();
        if self.live.is_empty() && !self.live.is_closed() {
            self.last.max(self.registry.revision())
        } else {
            self.last
        }
    }

    /// Why the watch ended early, if it ended on an error during replay (for example
    /// [`StoreError::Gone`] when compaction overtook a slow replay).
    pub fn error(&self) -> Option<&StoreError> {
        self.failed.as_ref()
    }

    /// Fills the replay buffer with the next chunk of matching log records.
    fn fill(&mut self) -> Result<(), StoreError> {
        let Some(replay) = self.replay.as_mut() else {
            return Ok(());
        };
        while replay.buf.is_empty() && replay.next <= replay.end {
            let db = replay.db.upgrade().ok_or(StoreError::Closed)?.get()?;
            let txn = db.begin_read()?;
            let compacted = compaction_mark(&txn)?;
            if compacted >= replay.next {
                // Compaction overtook this replay.
                return Err(StoreError::Gone { oldest: compacted });
            }
            let log = txn.open_table(LOG)?;
            let mut read = 0;
            for entry in log.range(replay.next..=replay.end)? {
                let (rev, record) = entry?;
                let rev = rev.value();
                replay.next = rev + 1;
                let rec = codec::decode_log(record.value())?;
                if crate::key::matches(rec.key, &self.prefix) {
                    replay.buf.push_back(codec::log_event(&log, rev, &rec)?);
                }
                read += 1;
                if read == REPLAY_CHUNK {
                    break;
                }
            }
            if read == 0 {
                // Nothing left in range.
                replay.next = replay.end + 1;
            }
        }
        Ok(())
    }
}

impl Stream for Watcher {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if this.failed.is_some() {
            return Poll::Ready(None);
        }
        if this.replay.is_some() {
            if let Err(e) = this.fill() {
                tracing::warn!(error = %e, "watch replay failed");
                this.failed = Some(e);
                this.replay = None;
                return Poll::Ready(None);
            }
            let replay = this.replay.as_mut().unwrap();
            if let Some(ev) = replay.buf.pop_front() {
                this.last = ev.object.revision;
                return Poll::Ready(Some(ev));
            }
            // Replay done: release the snapshot.
            this.replay = None;
        }
        loop {
            match this.live.as_mut().poll_next(cx) {
                Poll::Ready(Some(ev)) => {
                    if ev.object.revision <= this.from {
                        continue; // the watch starts in the future
                    }
                    this.last = ev.object.revision;
                    return Poll::Ready(Some(Arc::unwrap_or_clone(ev)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("from", &self.from)
            .field("replaying", &self.replay.is_some())
            .finish()
    }
}

// Watchers move between smol tasks and threads.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<Watcher>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matching_without_allocation() {
        let k = Key::new("pods", "default", "a");
        assert!(key_matches(&k, &crate::key::prefix("pods", None)));
        assert!(key_matches(
            &k,
            &crate::key::prefix("pods", Some("default"))
        ));
        assert!(!key_matches(
            &k,
            &crate::key::prefix("pods", Some("kube-system"))
        ));
        assert!(!key_matches(&k, &crate::key::prefix("pod", None)));
        assert!(!key_matches(&k, &crate::key::prefix("podsx", None)));
        assert!(!key_matches(
            &k,
            &crate::key::prefix("pods", Some("defaul"))
        ));
        let c = Key::cluster("nodes", "n1");
        assert!(key_matches(&c, &crate::key::prefix("nodes", Some(""))));
    }
}
