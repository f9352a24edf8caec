//! The container's cgroup, through libcgroups (v1, v2 and hybrid hosts): create and join,
//! apply `linux.resources`, read usage, count OOM kills, remove.
//!
//! On v1 hierarchies a process joins by writing `0` into `tasks` itself ([`join_self`]):
//! moving the calling thread skips the kernel's global threadgroup lock, whose write side
//! waits for an RCU grace period (several milliseconds) each time a runtime writes another
//! process's pid into `cgroup.procs`. The libcgroups manager (which parses the mount table
//! once per controller) is built only when first needed, after the fork.
//!
//! Device rules (`linux.resources.devices`) are enforced on v1 and hybrid hosts (the
//! devices controller). On pure v2 hosts they would need an eBPF program, which
//! libcgroups only builds with libbpf (a C library this runtime does without): there the
//! usual "deny all, allow these" list is accepted (the container only gets the device
//! nodes the runtime creates), and a rule denying specific devices is rejected, since it
//! could not be enforced.

use crate::error::{Error, Result};
use libcgroups::common::{
    AnyCgroupManager, CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt,
};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Resource usage of a container, for the agent to report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Total CPU time used, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, in bytes.
    pub memory_usage_bytes: u64,
    /// Memory limit in bytes (0 or a huge number when unlimited).
    pub memory_limit_bytes: u64,
    /// Number of tasks.
    pub pids: u64,
    /// How many times the OOM killer fired in this cgroup.
    pub oom_kills: u64,
}

/// What a `cgroup` mount inside the container shows.
#[derive(Clone, Debug)]
pub enum CgroupMountSource {
    /// Pure cgroup v2: the container's cgroup directory.
    Unified(PathBuf),
    /// v1 or hybrid: (hierarchy name, container's directory in it).
    V1(Vec<(String, PathBuf)>),
}

/// How the container's first process enters its cgroup.
#[derive(Clone, Debug)]
pub enum JoinPlan {
    /// v1 or hybrid: the process creates and joins these directories itself
    /// (directory, whether it is the cpuset hierarchy's mount point → directory).
    V1(Vec<V1Dir>),
    /// Pure v2: the parent moves the process (libcgroups creates the cgroup).
    ByParent,
    /// Pure v2: the process was cloned into the cgroup ([`Cgroup::create_unified`]).
    AtBirth,
}

/// One v1 hierarchy's directory for the container.
#[derive(Clone, Debug)]
pub struct V1Dir {
    /// The hierarchy's mount point.
    pub mount: PathBuf,
    /// The container's directory in it.
    pub dir: PathBuf,
    /// Whether this hierarchy carries the cpuset controller.
    pub cpuset: bool,
}

/// A container's cgroup.
pub struct Cgroup {
    path: PathBuf,
    manager: std::cell::OnceCell<AnyCgroupManager>,
    unified: bool,
    /// Each v1 hierarchy with controllers.
    v1_mounts: Vec<V1Mount>,
}

/// A v1 hierarchy: mount point name, mount point, controllers.
#[derive(Clone, Debug)]
struct V1Mount {
    name: String,
    mount: PathBuf,
    controllers: Vec<String>,
}

fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

const V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "pids",
    "perf_event",
    "memory",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// Lists v1 hierarchies that carry at least one controller libcgroups manages.
fn v1_mounts() -> Vec<V1Mount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        if r.next() != Some("cgroup") {
            continue;
        }
        let super_opts = r.nth(1).unwrap_or("");
        let controllers: Vec<String> = super_opts
            .split(',')
            .filter(|o| V1_CONTROLLERS.contains(o))
            .map(str::to_string)
            .collect();
        if controllers.is_empty() {
            continue;
        }
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(mp.replace("\\040", " "));
        if let Some(name) = mp.file_name().and_then(|n| n.to_str()) {
            out.push(V1Mount {
                name: name.to_string(),
                mount: mp.clone(),
                controllers,
            });
        }
    }
    out
}

impl Cgroup {
    /// Opens (does not create yet) the cgroup at `path`, relative to the hierarchy roots.
    pub fn open(path: &Path) -> Result<Cgroup> {
        let setup = libcgroups::common::get_cgroup_setup().map_err(|e| err(path, e))?;
        let unified = matches!(setup, CgroupSetup::Unified);
        let abs = Path::new("/").join(path);
        Ok(Cgroup {
            path: abs,
            manager: std::cell::OnceCell::new(),
            unified,
            v1_mounts: if unified { Vec::new() } else { v1_mounts() },
        })
    }

    /// The libcgroups manager, built on first use.
    fn manager(&self) -> Result<&AnyCgroupManager> {
        if let Some(m) = self.manager.get() {
            return Ok(m);
        }
        let m = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| err(&self.path, e))?;
        Ok(self.manager.get_or_init(|| m))
    }

    /// Builds the libcgroups manager now (it reads the mount table once per controller),
    /// so that later operations do not wait for it.
    pub fn prepare(&self) -> Result<()> {
        self.manager().map(|_| ())
    }

    /// The container's directory in the unified hierarchy.
    pub fn unified_dir(&self) -> PathBuf {
        Path::new("/sys/fs/cgroup").join(self.rel())
    }

    /// Pure v2: creates the cgroup directory, enabling the available controllers in every
    /// ancestor as libcgroups does, and opens it for clone3's CLONE_INTO_CGROUP.
    pub fn create_unified(&self) -> Result<std::os::fd::OwnedFd> {
        let root = Path::new("/sys/fs/cgroup");
        let available = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| err(&self.path, format!("reading cgroup.controllers: {e}")))?;
        let enable = |dir: &Path| {
            for c in available.split_whitespace() {
                // Best effort, as in libcgroups: a limit needing it fails when applied.
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
            }
        };
        let mut dir = root.to_path_buf();
        for c in self.rel().components() {
            enable(&dir);
            dir.push(c);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(&self.path, format!("creating {}: {e}", dir.display()))),
            }
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)
            .map_err(|e| err(&self.path, format!("opening {}: {e}", dir.display())))?;
        Ok(f.into())
    }

    /// How a new process enters this cgroup: by itself ([`join_self`]) on v1.
    pub fn join_plan(&self) -> JoinPlan {
        if self.unified {
            return JoinPlan::ByParent;
        }
        JoinPlan::V1(
            self.v1_mounts
                .iter()
                .map(|m| V1Dir {
                    mount: m.mount.clone(),
                    dir: m.mount.join(self.rel()),
                    cpuset: m.controllers.iter().any(|c| c == "cpuset"),
                })
                .collect(),
        )
    }

    /// The cgroups path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rel(&self) -> &Path {
        self.path.strip_prefix("/").unwrap_or(&self.path)
    }

    /// Creates the cgroup if needed and moves `pid` into it.
    pub fn join(&self, pid: i32) -> Result<()> {
        self.manager()?
            .add_task(nix_for_libcgroups::unistd::Pid::from_raw(pid))
            .map_err(|e| err(&self.path, format!("adding process {pid}: {e}")))
    }

    /// Applies resource limits.
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
        if self.unified {
            check_v2_devices(resources.devices().as_deref().unwrap_or(&[]))?;
        }
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: resources
                .memory()
                .as_ref()
                .and_then(|m| m.disable_oom_killer())
                .unwrap_or(false),
            oom_score_adj: None,
            freezer_state: None,
        };
        self.manager()?
            .apply(&opt)
            .map_err(|e| err(&self.path, format!("applying linux.resources: {e}")))
    }

    /// Kills what is left and removes the cgroup directories.
    pub fn remove(&self) -> Result<()> {
        self.manager()?
            .remove()
            .map_err(|e| err(&self.path, format!("removing: {e}")))
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = if self.unified {
            Path::new("/sys/fs/cgroup").join(self.rel())
        } else {
            match self.v1_dir("pids").or_else(|| self.v1_dir("memory")) {
                Some(d) => d,
                None => return Err(err(&self.path, "no pids or memory hierarchy")),
            }
        };
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .map_err(|e| err(&self.path, format!("reading cgroup.procs: {e}")))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        self.v1_mounts
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))
            .map(|m| m.mount.join(self.rel()))
    }

    /// Directory holding `controller`'s files for this cgroup.
    pub fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        if self.unified {
            Some(Path::new("/sys/fs/cgroup").join(self.rel()))
        } else {
            self.v1_dir(controller)
        }
    }

    /// How many processes the kernel OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.unified {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let Some(dir) = self.controller_dir("memory") else {
            return 0;
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Current usage.
    pub fn usage(&self) -> Result<Usage> {
        let s = self
            .manager()?
            .stats()
            .map_err(|e| err(&self.path, format!("reading stats: {e}")))?;
        Ok(Usage {
            cpu_usage_ns: s.cpu.usage.usage_total,
            memory_usage_bytes: s.memory.memory.usage,
            memory_limit_bytes: s.memory.memory.limit,
            pids: s.pids.current,
            oom_kills: self.oom_kills(),
        })
    }

    /// What to show at a `cgroup` mount inside the container.
    pub fn mount_source(&self) -> CgroupMountSource {
        if self.unified {
            CgroupMountSource::Unified(Path::new("/sys/fs/cgroup").join(self.rel()))
        } else {
            CgroupMountSource::V1(
                self.v1_mounts
                    .iter()
                    .map(|m| (m.name.clone(), m.mount.join(self.rel())))
                    .collect(),
            )
        }
    }
}

/// On pure v2 (no device filter): accepts allow rules and catch-all denies, rejects a
/// deny of specific devices, naming the rule.
pub fn check_v2_devices(rules: &[LinuxDeviceCgroup]) -> Result<()> {
    for (i, r) in rules.iter().enumerate() {
        let catch_all = matches!(r.typ(), None | Some(LinuxDeviceType::A))
            && r.major().is_none_or(|m| m < 0)
            && r.minor().is_none_or(|m| m < 0);
        if !r.allow() && !catch_all {
            return Err(Error::config(
                format!("linux.resources.devices[{i}]"),
                "denying specific devices is not supported on a pure cgroup v2 host \
                 (no eBPF device filter without libbpf); deny all and allow what is needed",
            ));
        }
    }
    Ok(())
}

/// Moves the calling thread into the container's v1 directories by writing `0` into
/// each `tasks`; with `create`, first creates them (cpuset seeded from its parents, as the
/// kernel refuses tasks in an empty cpuset). Runs in a freshly forked, single-threaded
/// child, so moving the thread moves the process.
pub fn join_self(dirs: &[V1Dir], create: bool) -> std::io::Result<()> {
    for d in dirs {
        let what = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cgroup {}: {e}", d.dir.display()))
        };
        if create {
            std::fs::create_dir_all(&d.dir).map_err(what)?;
        }
        if create && d.cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                seed_cpuset(&d.mount, &d.dir, file).map_err(what)?;
            }
        }
        std::fs::write(d.dir.join("tasks"), b"0").map_err(what)?;
    }
    Ok(())
}

/// Copies `file` down from each parent to each empty level between `mount` and `dir`.
fn seed_cpuset(mount: &Path, dir: &Path, file: &str) -> std::io::Result<()> {
    let rel = dir.strip_prefix(mount).unwrap_or(Path::new(""));
    let mut cur = mount.to_path_buf();
    let mut value = std::fs::read_to_string(cur.join(file))?;
    for c in rel.components() {
        cur.push(c);
        let mine = std::fs::read_to_string(cur.join(file))?;
        if mine.trim().is_empty() {
            std::fs::write(cur.join(file), value.trim())?;
        } else {
            value = mine;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn v2_accepts_deny_all_with_allows_and_rejects_specific_denies() {
        let ok = rules(
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
                {"allow":false,"type":"a","major":-1,"minor":-1,"access":"m"}]"#,
        );
        check_v2_devices(&ok).unwrap();
        let bad = rules(
            r#"[{"allow":true,"access":"rwm"},{"allow":false,"type":"c","major":1,"minor":3,"access":"rwm"}]"#,
        );
        let e = check_v2_devices(&bad).unwrap_err().to_string();
        assert!(e.contains("linux.resources.devices[1]"), "{e}");
        let bad = rules(r#"[{"allow":false,"type":"b","access":"rwm"}]"#);
        assert!(
            check_v2_devices(&bad).is_err(),
            "all block devices is specific"
        );
    }

    #[test]
    fn cpuset_is_seeded_from_the_nearest_parent() {
        let m = tempfile::tempdir().unwrap();
        let leaf = m.path().join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(m.path().join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(m.path().join("a/cpuset.cpus"), "1\n").unwrap();
        std::fs::write(leaf.join("cpuset.cpus"), "\n").unwrap();
        seed_cpuset(m.path(), &leaf, "cpuset.cpus").unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cpuset.cpus")).unwrap(),
            "1"
        );
    }
}
