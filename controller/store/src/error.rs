//! The store's error type: the outcomes the API maps to HTTP statuses, and I/O failures.

use std::sync::Arc;

/// What a store operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (HTTP 404).
    #[error("object not found")]
    NotFound,
    /// A create found an object with that key (HTTP 409 AlreadyExists).
    #[error("object already exists")]
    AlreadyExists,
    /// The expected revision is stale (HTTP 409 Conflict).
    #[error("the object has been modified: its current resourceVersion is {current}")]
    Conflict { current: u64 },
    /// The requested history has been compacted (HTTP 410 Gone). `oldest` is the oldest
    /// revision a watch may still start from.
    #[error("too old resource version: history before {oldest} has been compacted")]
    Gone { oldest: u64 },
    /// The key (or resource/namespace selector) cannot be stored.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The store has been shut down.
    #[error("the store is closed")]
    Closed,
    /// A record on disk does not decode.
    #[error("corrupt store record: {0}")]
    Corrupt(String),
    /// The store file could not be opened or created.
    #[error("cannot open store {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        source: Arc<redb::Error>,
    },
    /// The database failed (I/O error, full disk, file in use, ...).
    #[error("database error: {0}")]
    Db(Arc<redb::Error>),
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Arc::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
