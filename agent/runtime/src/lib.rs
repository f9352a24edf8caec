//! flotilla-runtime: Flotilla's OCI container runtime, a library of the agent.
//!
//! A container is created from an OCI runtime-spec `config.json` (see [`config`]):
//! the caller forks the container's init straight into its new pid namespace (so the
//! caller can `wait` for it); the init enters its cgroup (by itself on v1, born in it on
//! v2), joins and creates the other namespaces, builds the root filesystem, pivots into
//! it and waits for `start`, then drops privileges, installs seccomp and executes the
//! program. Hooks run at their lifecycle points ([`hooks`]). [`container`] holds the API (create, start,
//! state, kill, wait, exec, usage, delete); [`cli`] is a runc-compatible front end.

pub mod capabilities;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod container;
pub mod error;
pub mod hooks;
mod init;
pub mod mounts;
pub mod namespaces;
pub mod process;
mod rootfs;
pub mod seccomp;
pub mod state;
mod sync;
pub mod trace;
pub mod tty;

pub use cgroups::Usage;
pub use config::{ProcessPlan, load_spec, process_plan};
pub use container::{Container, CreateOptions, DEFAULT_ROOT, ExecProcess, ExitStatus, Runtime};
pub use error::{Error, Result};
pub use state::{OciState, Status};
