//! I/O faults: a write that cannot be made durable fails with a clear error, changes
//! nothing anyone can see, and the store recovers once the disk does.

use flotilla_store::{Key, Store, StoreError, StoreOptions};
use redb::StorageBackend;
use redb::backends::FileBackend;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A store file whose writes and syncs can be made to fail with ENOSPC.
#[derive(Debug)]
struct FlakyDisk {
    inner: FileBackend,
    full: Arc<AtomicBool>,
}

impl FlakyDisk {
    fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FlakyDisk {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
}

#[test]
fn a_full_disk_fails_writes_cleanly() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    let full = Arc::new(AtomicBool::new(false));
    let (disk_full, probe_full) = (full.clone(), full.clone());
    let store = Store::open_backend_with(
        move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            Ok(FlakyDisk {
                inner: FileBackend::new(file).map_err(io::Error::other)?,
                full: disk_full.clone(),
            })
        },
        move || {
            if probe_full.load(Ordering::SeqCst) {
                Err(io::Error::from_raw_os_error(28))
            } else {
                Ok(())
            }
        },
        StoreOptions::default(),
    )
    .unwrap();
    let k = Key::new("pods", "a", "kept");
    let r = store.create_blocking(k.clone(), b"v1".to_vec()).unwrap();
    let mut w = store.watch("pods", None, None).unwrap();

    full.store(true, Ordering::SeqCst);
    let err = store
        .create_blocking(Key::new("pods", "a", "lost"), b"x".to_vec())
        .unwrap_err();
    assert!(matches!(err, StoreError::Db(_)), "{err:?}");
    assert!(err.to_string().contains("No space left"), "{err}");
    // The next write tries to reopen the store, but the disk is still full.
    let err = store
        .update_blocking(k.clone(), b"v2".to_vec(), Some(r))
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    // Within the second after that attempt, writes fail fast, naming the cause.
    let err = store
        .update_blocking(k.clone(), b"v2".to_vec(), Some(r))
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");

    // Nothing of the failed writes is visible.
    assert_eq!(store.revision(), r);
    assert_eq!(store.get(&Key::new("pods", "a", "lost")).unwrap(), None);
    assert_eq!(&store.get(&k).unwrap().unwrap().value[..], b"v1");
    assert_eq!(w.progress(), r);

    // Space comes back: the store reopens its file (within a second) and writes work
    // again, with the next revision; reads and the watch went on throughout.
    full.store(false, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r2 = store
        .update_blocking(k.clone(), b"v3".to_vec(), Some(r))
        .unwrap();
    assert_eq!(r2, r + 1);
    smol::block_on(async {
        let e = w.next().await.unwrap();
        assert_eq!((e.object.revision, &e.object.value[..]), (r2, &b"v3"[..]));
    });
}

#[test]
fn in_memory_store_has_the_same_semantics() {
    let store = Store::open_in_memory(StoreOptions::default()).unwrap();
    let k = Key::new("pods", "a", "x");
    let r = store.create_blocking(k.clone(), b"1".to_vec()).unwrap();
    assert!(matches!(
        store.update_blocking(k.clone(), b"2".to_vec(), Some(r - 1)),
        Err(StoreError::Conflict { current }) if current == r
    ));
    assert_eq!(
        store
            .list("pods", Some("a"), None, None)
            .unwrap()
            .items
            .len(),
        1
    );
}
