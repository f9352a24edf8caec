//! Namespaces of a container: which to create (unshare) and which to join (setns by
//! path, e.g. a pod sandbox's network namespace).

use crate::error::{Error, Result};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use std::path::PathBuf;

/// Namespaces requested by the spec.
#[derive(Clone, Debug)]
pub struct NamespacePlan {
    /// Namespaces to create.
    pub create: CloneFlags,
    /// Namespaces to join: (kind, path).
    pub join: Vec<(CloneFlags, PathBuf)>,
}

/// Every kind the runtime knows, with its `/proc/<pid>/ns/` name, in the order exec joins them.
pub const KINDS: [(CloneFlags, &str); 6] = [
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
    (CloneFlags::CLONE_NEWNET, "net"),
    (CloneFlags::CLONE_NEWPID, "pid"),
    (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    (CloneFlags::CLONE_NEWNS, "mnt"),
];

impl NamespacePlan {
    /// Validates `linux.namespaces`.
    pub fn new(list: &[LinuxNamespace]) -> Result<NamespacePlan> {
        let mut plan = NamespacePlan {
            create: CloneFlags::empty(),
            join: Vec::new(),
        };
        let mut seen = CloneFlags::empty();
        for (i, ns) in list.iter().enumerate() {
            let field = format!("linux.namespaces[{i}]");
            let flag = match ns.typ() {
                LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
                LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
                LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
                LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
                LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
                LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
                LinuxNamespaceType::User => {
                    return Err(Error::config(
                        format!("{field}.type"),
                        "user namespaces are not supported",
                    ));
                }
                LinuxNamespaceType::Time => {
                    return Err(Error::config(
                        format!("{field}.type"),
                        "time namespaces are not supported",
                    ));
                }
            };
            if seen.contains(flag) {
                return Err(Error::config(
                    format!("{field}.type"),
                    format!("{} namespace listed twice", ns.typ()),
                ));
            }
            seen |= flag;
            match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => {
                    if !p.is_absolute() {
                        return Err(Error::config(
                            format!("{field}.path"),
                            "must be an absolute path",
                        ));
                    }
                    if let Err(e) = std::fs::metadata(p) {
                        return Err(Error::config(
                            format!("{field}.path"),
                            format!("{}: {e}", p.display()),
                        ));
                    }
                    plan.join.push((flag, p.clone()));
                }
                _ => plan.create |= flag,
            }
        }
        if !seen.contains(CloneFlags::CLONE_NEWNS) {
            return Err(Error::config(
                "linux.namespaces",
                "a mount namespace is required (add {\"type\": \"mount\"})",
            ));
        }
        Ok(plan)
    }

    /// Whether the container gets a namespace of this kind (new or joined).
    pub fn has(&self, flag: CloneFlags) -> bool {
        self.create.contains(flag) || self.join.iter().any(|(f, _)| *f == flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(json: &str) -> Result<NamespacePlan> {
        let list: Vec<LinuxNamespace> = serde_json::from_str(json).unwrap();
        NamespacePlan::new(&list)
    }

    #[test]
    fn splits_new_and_joined() {
        let p = ns(
            r#"[{"type":"pid"},{"type":"mount"},{"type":"network","path":"/proc/self/ns/net"}]"#,
        )
        .unwrap();
        assert_eq!(p.create, CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS);
        assert_eq!(p.join.len(), 1);
        assert!(p.has(CloneFlags::CLONE_NEWNET));
    }

    #[test]
    fn rejects_duplicates_missing_paths_and_no_mount_ns() {
        let e = ns(r#"[{"type":"mount"},{"type":"mount"}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux.namespaces[1].type"), "{e}");
        let e = ns(r#"[{"type":"mount"},{"type":"network","path":"/nonexistent/ns"}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux.namespaces[1].path"), "{e}");
        assert!(ns(r#"[{"type":"pid"}]"#).is_err());
    }
}
