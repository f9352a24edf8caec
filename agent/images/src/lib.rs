//! Flotilla's OCI image store: content-addressed blobs, image references, registry
//! pulls, air-gapped archive import, safe layer unpacking and overlay root filesystems.
//!
//! Layout under the agent's data dir (default `/var/lib/flotilla/agent`):
//! `content/blobs/sha256/<hex>` verified blobs, `content/ingest/` partial downloads,
//! `images.json` image names, `layers/sha256/<diff id hex>` unpacked layers (overlay
//! lower dirs), `snapshots/<id>/{upper,work}` container snapshots, `images/` the
//! air-gap folder imported at agent start.

pub mod auth;
pub mod cli;
pub mod client;
pub mod content;
pub mod digest;
pub mod import;
pub mod install;
pub mod manifest;
mod parallel;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registries;
pub mod snapshot;
pub mod store;
pub mod unpack;
