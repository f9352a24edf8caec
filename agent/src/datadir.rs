//! One agent per data dir: `flotilla-agent run` holds an exclusive lock on
//! `<data-dir>/agent.lock` for as long as it runs, so a second agent started on the
//! same directory (a manual run next to the systemd service) stops at once with a
//! clear error instead of touching the image store or the pod state under the first.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::path::Path;

/// The lock file's name inside the data dir.
const LOCK_FILE: &str = "agent.lock";

/// The held lock; released when dropped or when the process ends (also by SIGKILL).
/// The descriptor is close-on-exec, so the shims the agent starts never hold it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data dir's lock, or fails naming the directory when another agent
/// holds it.
pub fn lock(data_dir: &Path) -> Result<DataDirLock> {
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => bail!(
            "another flotilla-agent is already running with the data dir {} (it holds {}); \
             stop it first, or give this one its own --data-dir",
            data_dir.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_on_the_same_data_dir_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("another flotilla-agent is already running with the data dir"),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        drop(first);
        lock(dir.path()).expect("free again once the first has gone");
    }
}
