//! Mount entries of the spec: fstab-style options parsed into mount(2) flags, data and
//! propagation, and symlink-safe resolution of destinations inside the rootfs.

use crate::error::{Error, Result};
use nix::mount::MsFlags;
use oci_spec::runtime::Mount;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// One mount, ready to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPlan {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Filesystem type ("bind" for bind mounts).
    pub typ: String,
    /// Source: a host path for bind mounts (made absolute against the bundle).
    pub source: Option<PathBuf>,
    /// Flags for the first mount(2) call.
    pub flags: MsFlags,
    /// Propagation changes applied afterwards, in order.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options (`mode=755,size=65536k`).
    pub data: String,
    /// Whether this is a bind mount.
    pub bind: bool,
}

/// Maps a propagation name to its flags.
pub fn propagation(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Parses mount options into (flags to set, propagation, data).
pub fn parse_options(options: &[String]) -> (MsFlags, Vec<MsFlags>, String) {
    let mut flags = MsFlags::empty();
    let mut prop = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            // runc/crun extension we accept and ignore.
            "tmpcopyup" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                if let Some(p) = propagation(other) {
                    prop.push(p);
                } else {
                    data.push(other);
                }
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, prop, data.join(","))
}

impl MountPlan {
    /// Validates one spec mount; `field` is its JSON path, `bundle` resolves relative sources.
    pub fn new(m: &Mount, field: &str, bundle: &Path) -> Result<MountPlan> {
        let destination = m.destination().clone();
        if !destination.is_absolute() {
            return Err(Error::config(
                format!("{field}.destination"),
                format!("{} is not an absolute path", destination.display()),
            ));
        }
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(Error::config(
                format!("{field}.uidMappings"),
                "id-mapped mounts are not supported",
            ));
        }
        let (flags, propagation, data) = parse_options(m.options().as_deref().unwrap_or(&[]));
        let typ = m.typ().clone().unwrap_or_default();
        let bind = flags.contains(MsFlags::MS_BIND) || typ == "bind";
        let mut source = m.source().clone();
        if bind {
            let s = source.ok_or_else(|| {
                Error::config(format!("{field}.source"), "a bind mount needs a source")
            })?;
            let s = if s.is_absolute() { s } else { bundle.join(s) };
            if let Err(e) = std::fs::metadata(&s) {
                return Err(Error::config(
                    format!("{field}.source"),
                    format!("{}: {e}", s.display()),
                ));
            }
            source = Some(s);
        } else if typ.is_empty() {
            return Err(Error::config(
                format!("{field}.type"),
                "is required unless the mount is a bind mount",
            ));
        }
        Ok(MountPlan {
            destination,
            typ,
            source,
            flags: if bind {
                flags | MsFlags::MS_BIND
            } else {
                flags
            },
            propagation,
            data,
            bind,
        })
    }
}

/// Joins `path` (absolute inside the container) onto `root`, resolving symlinks as if
/// `root` were `/`, so that a symlink in the rootfs can never lead outside it. Missing
/// components are kept as they are.
pub fn secure_join(root: &Path, path: &Path) -> PathBuf {
    let mut queue: VecDeque<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut current: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            current.pop();
            continue;
        }
        current.push(c);
        let full: PathBuf = root.join(current.iter().collect::<PathBuf>());
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() && links < 255 => {
                links += 1;
                let target = match std::fs::read_link(&full) {
                    Ok(t) => t,
                    Err(_) => continue,
                };
                current.pop();
                if target.is_absolute() {
                    current.clear();
                }
                for (i, tc) in target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .enumerate()
                {
                    queue.insert(i, tc);
                }
            }
            Ok(_) => {}
            Err(_) => {
                // Does not exist: keep the rest verbatim (minus "..", resolved lexically).
                for rest in queue.drain(..) {
                    if rest == ".." {
                        current.pop();
                    } else {
                        current.push(rest);
                    }
                }
            }
        }
    }
    root.join(current.iter().collect::<PathBuf>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o: Vec<String> = [
            "nosuid", "noexec", "ro", "mode=755", "size=64k", "rslave", "rw",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (f, p, d) = parse_options(&o);
        assert_eq!(
            f,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "rw after ro clears it"
        );
        assert_eq!(p, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(d, "mode=755,size=64k");
    }

    #[test]
    fn bind_needs_existing_source_and_relative_is_bundle_based() {
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(b.path().join("data")).unwrap();
        let m: Mount = serde_json::from_str(
            r#"{"destination":"/data","type":"bind","source":"data","options":["rbind","ro"]}"#,
        )
        .unwrap();
        let p = MountPlan::new(&m, "mounts[0]", b.path()).unwrap();
        assert!(p.bind);
        assert_eq!(p.source.unwrap(), b.path().join("data"));
        assert!(p.flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY));
        let m: Mount =
            serde_json::from_str(r#"{"destination":"/x","type":"bind","source":"/no/such"}"#)
                .unwrap();
        let e = MountPlan::new(&m, "mounts[3]", b.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("mounts[3].source"), "{e}");
        let m: Mount = serde_json::from_str(r#"{"destination":"rel","type":"tmpfs"}"#).unwrap();
        let e = MountPlan::new(&m, "mounts[1]", b.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("mounts[1].destination"), "{e}");
    }

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let r = tempfile::tempdir().unwrap();
        let root = r.path();
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("real/up")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/abs/dir")),
            root.join("real/dir")
        );
        assert_eq!(
            secure_join(root, Path::new("/real/up/passwd")),
            root.join("etc/passwd")
        );
        assert_eq!(secure_join(root, Path::new("/../../x")), root.join("x"));
        assert_eq!(
            secure_join(root, Path::new("/new/a/b")),
            root.join("new/a/b")
        );
    }
}
