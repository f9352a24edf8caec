//! Unique names for what tests create on the host (network namespaces, cgroups), and
//! the sweep of leftovers from test processes that died without cleaning up.
//!
//! Names are `flotilla-test-<pid>-<seq>-<label>`: unique per process and call, and
//! recognisable, so a leftover whose owning process is gone can be removed safely.

use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every host object the harness creates.
pub const PREFIX: &str = "flotilla-test-";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh unique name carrying `label` (reduced to `[A-Za-z0-9_-]`, at most 24 chars).
pub fn unique(label: &str) -> String {
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{seq}-{label}", std::process::id())
}

/// True when `name` was made by [`unique`] in a process that no longer exists.
pub fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sanitised() {
        let a = unique("node a/1");
        let b = unique("node a/1");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{PREFIX}{}-", std::process::id())));
        assert!(a.ends_with("node_a_1"), "{a}");
    }

    #[test]
    fn own_names_are_not_stale_but_dead_owners_are() {
        assert!(!is_stale(&unique("x")));
        assert!(!is_stale("something-else"));
        // PID numbers beyond pid_max never exist.
        assert!(is_stale(&format!("{PREFIX}4294967295-0-x")));
    }
}
