//! Types shared by `flotilla-controller` and `flotilla-agent`.
//!
//! This crate holds data and pure functions only — no I/O policy:
//! - [`wire`]: the agent-link protocol (versioned hello, postcard frames, length prefix);
//! - [`frame_io`]: reading and writing those frames on any async byte stream;
//! - [`pod`]: the pod and node model sent over the link (resolved pod specs, reports);
//! - [`quantity`]: Kubernetes resource quantities (`100m`, `1Gi`) as integers.

pub mod frame_io;
pub mod pod;
pub mod quantity;
pub mod wire;

/// The Flotilla release this build belongs to.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
