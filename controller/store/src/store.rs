//! [`Store`]: opening the database, reads (get, list) from redb snapshots, and the async
//! and blocking write calls that hand work to the committer thread.

use crate::codec::{self, FORMAT, LOG, META, META_COMPACTED, META_FORMAT, META_REVISION, OBJECTS};
use crate::committer::{Committer, Counters, Op, Pending};
use crate::key::{self, Key};
use crate::slot::{DbSlot, Reopen};
use crate::watch::{Registry, Watcher};
use crate::{Object, Result, StoreError};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

/// Tuning of a [`Store`]. The defaults suit a small controller.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of redb page cache (bounds the store's share of RSS).
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
            cache_size: 16 << 20,
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
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DbSlot>,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    options: StoreOptions,
    tx: Option<mpsc::Sender<Pending>>,
    thread: Option<JoinHandle<()>>,
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
    /// Opens the store at `path`, creating the file if absent.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store> {
        Store::open_inner(path, options).map_err(|e| match e {
            StoreError::Db(source) => StoreError::Open {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    fn open_inner(path: &Path, options: StoreOptions) -> Result<Store> {
        let existed = path.exists();
        let mut db = Database::builder()
            .set_cache_size(options.cache_size)
            .create(path)?;
        if !existed {
            sync_parent_dir(path)?;
        }
        if options.compact_file_on_open {
            compact_file(&mut db, path)?;
        }
        let (reopen_path, probe_path) = (path.to_owned(), path.to_owned());
        let cache_size = options.cache_size;
        let reopen = Reopen {
            probe: Box::new(move || probe_space(&probe_path)),
            open: Box::new(move || {
                Database::builder()
                    .set_cache_size(cache_size)
                    .create(&reopen_path)
                    .map_err(|e| StoreError::Open {
                        path: reopen_path.clone(),
                        source: Arc::new(e.into()),
                    })
            }),
        };
        Store::start(db, reopen, options, &path.display().to_string())
    }

    /// A store in memory, for tests of code built on the store: same semantics, nothing
    /// kept after the last clone drops.
    pub fn open_in_memory(options: StoreOptions) -> Result<Store> {
        let db = Database::builder()
            .set_cache_size(options.cache_size)
            .create_with_backend(redb::backends::InMemoryBackend::new())?;
        let reopen = Reopen {
            probe: Box::new(|| {
                Err(std::io::Error::other(
                    "an in-memory store cannot be reopened after an I/O error",
                ))
            }),
            open: Box::new(|| unreachable!("the probe refuses")),
        };
        Store::start(db, reopen, options, "the in-memory store")
    }

    /// A store on redb storage backends made by `make`: called once to open, and again to
    /// reopen after an I/O error, once `probe` says the storage looks writable again (as
    /// [`Store::open`] does with its file). For special storage and fault-injection tests.
    pub fn open_backend_with<B: redb::StorageBackend>(
        make: impl Fn() -> std::io::Result<B> + Send + Sync + 'static,
        probe: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
        options: StoreOptions,
    ) -> Result<Store> {
        let cache_size = options.cache_size;
        let open = move || -> Result<Database> {
            let backend = make().map_err(|e| StoreError::Db(Arc::new(e.into())))?;
            Ok(Database::builder()
                .set_cache_size(cache_size)
                .create_with_backend(backend)?)
        };
        let db = open()?;
        let reopen = Reopen {
            probe: Box::new(probe),
            open: Box::new(open),
        };
        Store::start(db, reopen, options, "the store")
    }

    /// Checks the format, initializes a new store, and starts the committer thread.
    fn start(db: Database, reopen: Reopen, options: StoreOptions, name: &str) -> Result<Store> {
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.set_quick_repair(options.quick_repair);
        let (revision, compacted) = {
            txn.open_table(OBJECTS)?;
            txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            let get = |meta: &redb::Table<&str, u64>, name| -> Result<u64> {
                Ok(meta.get(name)?.map(|g| g.value()).unwrap_or(0))
            };
            match get(&meta, META_FORMAT)? {
                0 => {
                    meta.insert(META_FORMAT, FORMAT)?;
                }
                FORMAT => {}
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "{name} has store format {other}; this build reads format {FORMAT}"
                    )));
                }
            }
            let (revision, compacted) = (get(&meta, META_REVISION)?, get(&meta, META_COMPACTED)?);
            if revision == 0 {
                // A new store starts at revision 1 (with nothing to replay), so no list ever
                // reports revision 0, which `watch` takes to mean "from now".
                meta.insert(META_REVISION, 1)?;
                meta.insert(META_COMPACTED, 1)?;
                (1, 1)
            } else {
                (revision, compacted)
            }
        };
        txn.commit()?;
        let db = Arc::new(DbSlot::new(db, reopen));
        let registry = Arc::new(Registry::new(revision));
        let counters = Arc::new(Counters::default());
        counters.compacted.store(compacted, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let committer = Committer {
            db: db.clone(),
            registry: registry.clone(),
            counters: counters.clone(),
            options: options.clone(),
            revision,
            compacted,
            poisoned: false,
            io_error: None,
            retry_at: std::time::Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StoreError::Db(Arc::new(e.into())))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                registry,
                counters,
                options,
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

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
            Ok(())
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
        })
    }

    /// The one range read behind `list` and `list_each`: hands each object's key, revision
    /// and borrowed value to `f`.
    fn scan(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: Option<usize>,
        mut f: impl FnMut(Key, u64, &[u8]) -> Result<()>,
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
            f(Key::decode(k.value())?, rev, value)?;
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

/// Gives back the pages freed by old writes and compacted history, when they are more
/// than a quarter of the file (and at least 1 MiB): compaction rewrites the file, which
/// is worth its time and flash wear only then.
fn compact_file(db: &mut Database, path: &Path) -> Result<()> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| StoreError::Db(Arc::new(e.into())))?
        .len();
    let used = {
        let txn = db.begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        stats.allocated_pages() * stats.page_size() as u64
    };
    let free = file_len.saturating_sub(used);
    if free < (1 << 20).max(file_len / 4) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    while db.compact().map_err(redb::Error::from)? {}
    tracing::info!(
        file_len,
        free,
        millis = started.elapsed().as_millis() as u64,
        "compacted the store file"
    );
    Ok(())
}

/// Whether the store's file system takes writes again: writes and syncs 256 KiB next to
/// the store file, then removes it.
fn probe_space(store: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut name = store.as_os_str().to_owned();
    name.push(".probe");
    let probe = std::path::PathBuf::from(name);
    let result = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 256 << 10])?;
        f.sync_data()
    });
    let _ = std::fs::remove_file(&probe);
    result
}

/// Makes a newly created file's directory entry durable.
fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Db(Arc::new(e.into())))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revision", &self.revision())
            .finish()
    }
}
