//! Error type of the runtime: every failure names what was wrong and where.

use std::path::PathBuf;

/// Result alias used across the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by container operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle's config.json is invalid or asks for something unsupported.
    #[error("invalid config: {field}: {reason}")]
    Config {
        /// JSON path of the offending field, e.g. `process.args`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A container with this id already exists.
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    /// No container with this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The container id is not acceptable.
    #[error(
        "invalid container id {0:?}: use 1-1024 characters from [A-Za-z0-9_.+-], not starting with '.'"
    )]
    InvalidId(String),
    /// The operation does not fit the container's current status.
    #[error("container {id:?} is {status}: {what}")]
    WrongState {
        /// Container id.
        id: String,
        /// Its status now.
        status: String,
        /// What was attempted and why it cannot be done.
        what: String,
    },
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Setting up the container process failed inside the new namespaces.
    #[error("container init failed: {0}")]
    Init(String),
    /// A cgroup operation failed.
    #[error("cgroup {path}: {reason}")]
    Cgroup {
        /// The cgroups path of the container.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Bad command-line input.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// Builds a config error for `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Builds an I/O error with context.
    pub fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Builds an I/O error from an errno value.
    pub fn errno(context: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Io {
            context: context.into(),
            source: std::io::Error::from_raw_os_error(errno as i32),
        }
    }
}

/// Adds context to results of `std::io` and `nix` calls.
pub trait Context<T> {
    /// Wraps the error with a message computed lazily.
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::errno(f(), e))
    }
}
