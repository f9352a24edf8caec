//! [`Store`]: reads (get, list) from redb snapshots, the async and blocking write calls
//! that hand work to the committer thread, and watches. Opening is in `open`.

use crate::codec::{self, META, META_REVISION, OBJECTS};
use crate::committer::{Counters, Op, Pending};
use crate::key::{self, Key};
use crate::slot::DbSlot;
use crate::watch::{Registry, Watcher};
use crate::{Object, Result, StoreError, StoreOptions};
use bytes::Bytes;
use redb::ReadableDatabase;
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

/// One page of a list, read from a single snapshot.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub items: Vec<Object>,
    /// The store revision of the snapshot the page was read from.
    pub revision: u64,
    /// More objects follow the last item (continue with `after` = its key).
    pub more: bool,
}

/// What [`Store::list_each`] read.
#[derive(Clone, Debug, Default)]
pub struct ListSummary {
    /// The store revision of the snapshot.
    pub revision: u64,
    /// Objects handed to the callback.
    pub count: usize,
    /// More objects follow `last`.
    pub more: bool,
    /// The key of the last object read (the continue token for the next page).
    pub last: Option<Key>,
}

/// An object borrowed from a read snapshot (see [`Store::list_each`]).
#[derive(Clone, Copy, Debug)]
pub struct ObjectRef<'a> {
    pub key: &'a Key,
    pub revision: u64,
    pub value: &'a [u8],
}

impl ObjectRef<'_> {
    /// An owned copy.
    pub fn to_object(&self) -> Object {
        Object {
            key: self.key.clone(),
            revision: self.revision,
            value: Bytes::copy_from_slice(self.value),
        }
    }
}

/// Counters for tests, metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub revision: u64,
    /// Every change-log record at or below this revision has been removed.
    pub compacted: u64,
    /// Write transactions committed since open.
    pub commits: u64,
    /// Successful writes since open.
    pub writes: u64,
}

/// Handle to an open store. Cheap to clone; the store closes when the last clone drops
/// (watchers then end).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Arc<DbSlot>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) options: StoreOptions,
    pub(crate) tx: Option<mpsc::Sender<Pending>>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// The current global revision: the last one committed and published to watchers.
    pub fn revision(&self) -> u64 {
        self.inner.registry.revision()
    }

    /// Counters: revision, compaction mark, commits and writes since open.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            revision: self.revision(),
            compacted: c.compacted.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
        }
    }

    /// The object at `key`, if any.
    pub fn get(&self, key: &Key) -> Result<Option<Object>> {
        key.validate()?;
        let txn = self.inner.db.get()?.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        let Some(record) = objects.get(key.encode().as_slice())? else {
            return Ok(None);
        };
        let (revision, value) = codec::decode_object(record.value())?;
        Ok(Some(Object {
            key: key.clone(),
            revision,
            value: Bytes::copy_from_slice(value),
        }))
    }

    /// Objects of `resource` in key order, in `namespace` or all namespaces (`None`),
    /// starting after the key `after` (a continue token: the last key of the previous
    /// page), at most `limit` of them (`None` or `Some(0)`: all). The page is one
    /// consistent snapshot at `revision`.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: Option<usize>,
    ) -> Result<ListPage> {
        let mut items = Vec::new();
        let summary = self.scan(resource, namespace, after, limit, |key, revision, value| {
            items.push(Object {
                key,
                revision,
                value: Bytes::copy_from_slice(value),
            });
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(ListPage {
            items,
            revision: summary.revision,
            more: summary.more,
        })
    }

    /// [`Store::list`] without collecting: hands each object to `f` as it is read, its
    /// value borrowed from the snapshot, so a large list can be encoded straight into a
    /// response without holding every object in memory twice. An error from `f` stops
    /// the scan and is returned.
    pub fn list_each(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: Option<usize>,
        mut f: impl FnMut(ObjectRef<'_>) -> Result<()>,
    ) -> Result<ListSummary> {
        self.scan(resource, namespace, after, limit, |key, revision, value| {
            f(ObjectRef {
                key: &key,
                revision,
                value,
            })
            .map(ControlFlow::Continue)
        })
    }

    /// [`Store::list_each`] that `f` may stop early: on `ControlFlow::Break` the object
    /// it was given is not counted, the summary says `more`, and `last` is the object
    /// before it (so a filtered page can end at its limit and continue from there).
    pub fn list_until(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: Option<usize>,
        mut f: impl FnMut(ObjectRef<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<ListSummary> {
        self.scan(resource, namespace, after, limit, |key, revision, value| {
            f(ObjectRef {
                key: &key,
                revision,
                value,
            })
        })
    }

    /// The one range read behind `list`, `list_each` and `list_until`: hands each
    /// object's key, revision and borrowed value to `f`, until it says stop.
    fn scan(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: Option<usize>,
        mut f: impl FnMut(Key, u64, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<ListSummary> {
        key::validate_resource(resource)?;
        if let Some(ns) = namespace {
            key::validate_part("namespace", ns)?;
        }
        let prefix = key::prefix(resource, namespace);
        let end = key::prefix_end(&prefix);
        let after = match after {
            None => None,
            Some(k) => {
                k.validate()?;
                let enc = k.encode();
                if !key::matches(&enc, &prefix) {
                    return Err(StoreError::InvalidKey(format!(
                        "continue key {k} is not in the listed resource/namespace"
                    )));
                }
                Some(enc)
            }
        };
        let start = match &after {
            Some(enc) => Bound::Excluded(enc.as_slice()),
            None => Bound::Included(prefix.as_slice()),
        };
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);

        let txn = self.inner.db.get()?.begin_read()?;
        let revision = txn
            .open_table(META)?
            .get(META_REVISION)?
            .map(|g| g.value())
            .unwrap_or(0);
        let objects = txn.open_table(OBJECTS)?;
        let mut summary = ListSummary {
            revision,
            count: 0,
            more: false,
            last: None,
        };
        let mut last = None;
        for entry in objects.range::<&[u8]>((start, Bound::Excluded(end.as_slice())))? {
            if summary.count == limit {
                summary.more = true;
                break;
            }
            let (k, record) = entry?;
            let (rev, value) = codec::decode_object(record.value())?;
            if f(Key::decode(k.value())?, rev, value)?.is_break() {
                summary.more = true;
                break;
            }
            summary.count += 1;
            last = Some(k);
        }
        summary.last = last.map(|k| Key::decode(k.value())).transpose()?;
        Ok(summary)
    }

    /// Creates the object; fails with `AlreadyExists`. Returns its revision once durable.
    pub async fn create(&self, key: Key, value: Vec<u8>) -> Result<u64> {
        key.validate()?;
        Ok(self.submit(Op::Create { key, value }).await?.revision)
    }

    /// Replaces the object's value, if its revision is `expected` (when given). Fails with
    /// `NotFound` or `Conflict`. Returns the new revision once durable.
    pub async fn update(&self, key: Key, value: Vec<u8>, expected: Option<u64>) -> Result<u64> {
        key.validate()?;
        Ok(self
            .submit(Op::Update {
                key,
                value,
                expected,
            })
            .await?
            .revision)
    }

    /// Deletes the object, if its revision is `expected` (when given). Fails with
    /// `NotFound` or `Conflict`. Returns its last state with `revision` set to the
    /// deletion's revision, once durable.
    pub async fn delete(&self, key: &Key, expected: Option<u64>) -> Result<Object> {
        key.validate()?;
        self.submit(Op::Delete {
            key: key.clone(),
            expected,
        })
        .await
    }

    /// [`Store::create`], blocking the calling thread.
    pub fn create_blocking(&self, key: Key, value: Vec<u8>) -> Result<u64> {
        futures_lite::future::block_on(self.create(key, value))
    }

    /// [`Store::update`], blocking the calling thread.
    pub fn update_blocking(&self, key: Key, value: Vec<u8>, expected: Option<u64>) -> Result<u64> {
        futures_lite::future::block_on(self.update(key, value, expected))
    }

    /// [`Store::delete`], blocking the calling thread.
    pub fn delete_blocking(&self, key: &Key, expected: Option<u64>) -> Result<Object> {
        futures_lite::future::block_on(self.delete(key, expected))
    }

    /// Watches `resource` (in `namespace`, or all namespaces) for events with a revision
    /// above `from`. `None` or `Some(0)`: only events from now on. To follow a list
    /// without a gap, watch from the list's `revision` (never 0: a new store starts at 1). Fails with `Gone` if
    /// history after `from` has been compacted. See [`Watcher`] for when it ends.
    pub fn watch(
        &self,
        resource: &str,
        namespace: Option<&str>,
        from: Option<u64>,
    ) -> Result<Watcher> {
        key::validate_resource(resource)?;
        if let Some(ns) = namespace {
            key::validate_part("namespace", ns)?;
        }
        Watcher::start(
            &self.inner.registry,
            &self.inner.db,
            key::prefix(resource, namespace),
            from,
            self.inner.options.watch_queue,
        )
    }

    async fn submit(&self, op: Op) -> Result<Object> {
        let (reply, answer) = async_channel::bounded(1);
        self.inner
            .tx
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Pending { op, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.recv().await.map_err(|_| StoreError::Closed)?
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revision", &self.revision())
            .finish()
    }
}

// The store is shared by every task and thread of the controller.
const _: fn() = || {
    fn is_shared<T: Clone + Send + Sync + 'static>() {}
    is_shared::<Store>();
};
