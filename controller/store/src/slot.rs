//! The database handle that readers, watchers and the committer share — and that the
//! committer replaces after an I/O error, since redb refuses every write until the file
//! is opened again.

use crate::StoreError;
use redb::Database;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How to get a fresh handle after an I/O error.
pub(crate) struct Reopen {
    /// Whether the storage looks writable again. Cheap, and no harm if wrong: it only
    /// keeps the failed handle (which still serves reads) from being dropped in vain.
    pub probe: Box<dyn Fn() -> std::io::Result<()> + Send + Sync>,
    /// Opens the database again.
    pub open: Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>,
}

pub(crate) struct DbSlot {
    db: RwLock<Result<Arc<Database>, StoreError>>,
    reopen: Reopen,
}

impl DbSlot {
    pub(crate) fn new(db: Database, reopen: Reopen) -> DbSlot {
        DbSlot {
            db: RwLock::new(Ok(Arc::new(db))),
            reopen,
        }
    }

    /// The current handle (or why there is none: a reopen failed).
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.db.read().unwrap().clone()
    }

    /// If the storage looks writable again: closes the current handle — waiting for
    /// readers to let go of it — and opens the database again. New readers wait
    /// meanwhile. The caller must hold no handle.
    pub(crate) fn reopen(&self) -> Result<Arc<Database>, StoreError> {
        (self.reopen.probe)().map_err(|e| StoreError::Db(Arc::new(e.into())))?;
        let mut slot = self.db.write().unwrap();
        if let Ok(current) = std::mem::replace(&mut *slot, Err(StoreError::Closed)) {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut current = current;
            loop {
                match Arc::try_unwrap(current) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        current = still_shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still_shared) => {
                        *slot = Ok(still_shared);
                        return Err(StoreError::Corrupt(
                            "cannot reopen the store after an I/O error: a reader holds it".into(),
                        ));
                    }
                }
            }
        }
        let reopened = (self.reopen.open)().map(Arc::new);
        *slot = reopened.clone();
        reopened
    }
}
