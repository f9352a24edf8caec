//! Progress events of pulls and imports: the library reports them through a callback,
//! the CLI prints them, and the agent can forward them as pod events.

use crate::digest::Digest;

/// Something that happened while fetching or unpacking an image.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The reference resolved to a manifest with these layers (total compressed bytes).
    Resolved {
        /// Image name.
        name: String,
        /// Manifest digest.
        manifest: Digest,
        /// Number of layers.
        layers: usize,
        /// Total compressed bytes of the layers.
        total_bytes: u64,
    },
    /// A blob is already in the store.
    Cached {
        /// Blob digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A download resumes a partial blob from `offset` with a Range request.
    Resumed {
        /// Blob digest.
        digest: Digest,
        /// Bytes already present.
        offset: u64,
    },
    /// Bytes of a blob received so far.
    Downloading {
        /// Blob digest.
        digest: Digest,
        /// Bytes present.
        done: u64,
        /// Blob size.
        total: u64,
    },
    /// A blob is complete and verified.
    Downloaded {
        /// Blob digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A request failed and is retried after a pause.
    Retrying {
        /// What was being fetched.
        what: String,
        /// Attempt number about to start (2 = first retry).
        attempt: u32,
        /// Why the previous attempt failed.
        error: String,
    },
    /// A layer was unpacked (or already was).
    Unpacked {
        /// Layer diff id.
        diff_id: Digest,
        /// Whether it had to be unpacked now.
        fresh: bool,
    },
    /// The image is stored under this name.
    Stored {
        /// Image name.
        name: String,
        /// Manifest digest.
        manifest: Digest,
    },
}

/// The callback pulls and imports report to.
pub type Progress<'a> = &'a (dyn Fn(&Event) + Sync);

/// A callback that ignores everything.
pub fn silent(_: &Event) {}
