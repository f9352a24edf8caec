//! Opening a store: on a file (created if absent, its directory entry made durable,
//! optionally compacted), in memory, or on any redb backend; then checking the format,
//! initializing a new store and starting the committer thread.

use crate::codec::{
    FORMAT, FORMAT_READABLE, LOG, META, META_COMPACTED, META_FORMAT, META_REVISION, OBJECTS,
};
use crate::committer::{Committer, Counters};
use crate::slot::{DbSlot, Reopen};
use crate::store::Inner;
use crate::watch::Registry;
use crate::{Result, Store, StoreError, StoreOptions};
use redb::{Database, ReadableTable};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

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
                0 | FORMAT_READABLE => {
                    // New, or older records this build still reads; from now on it
                    // writes the current format, which older builds then refuse.
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
