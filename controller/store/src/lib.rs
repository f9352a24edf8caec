//! Flotilla's object store: Kubernetes objects as opaque bytes in one redb file.
//!
//! - One global revision counter: every successful write takes the next revision, which
//!   the API serves as the object's `resourceVersion`. Revisions strictly increase, also
//!   across restarts. A new store starts at revision 1; the first write takes 2.
//! - Optimistic concurrency: updates and deletes may name the revision they expect and
//!   fail with [`StoreError::Conflict`] when it is stale.
//! - Durability: a write returns only after its transaction is fsync'd. Writes that wait
//!   at the same time share one transaction (group commit) on one committer thread.
//! - A change log drives [`Watcher`]s; history outside a retention window is compacted,
//!   and watching from a compacted revision fails with [`StoreError::Gone`].
//!
//! The interface is deliberately narrow — get, list, create/update/delete with an
//! expected revision, watch from a revision — so another backend (etcd) could serve it.

mod codec;
mod committer;
mod compaction;
mod error;
mod key;
mod open;
mod options;
mod slot;
mod store;
mod watch;

pub use error::{Result, StoreError};
pub use key::Key;
pub use options::StoreOptions;
pub use store::{ListPage, ListSummary, ObjectRef, Store, StoreStats};
pub use watch::Watcher;

use bytes::Bytes;

/// A stored object: its key, the revision of its last write (its resourceVersion) and its
/// value (canonical JSON, opaque to the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: Key,
    pub revision: u64,
    pub value: Bytes,
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One change, as a watcher sees it. For `Deleted`, `object.value` is the last state and
/// `object.revision` the revision of the deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub object: Object,
    /// For `Modified`: the object's value just before this change (what a watcher that
    /// filters objects must show when the object stops matching). Always there for
    /// events delivered live; in a replay of the change log, while the replaced state's
    /// own record has not been compacted away. `None` for `Added` and `Deleted`.
    pub prev: Option<Bytes>,
}
