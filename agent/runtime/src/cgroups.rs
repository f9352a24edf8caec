//! The container's cgroup, through libcgroups (v1, v2 and hybrid hosts): create and join,
//! apply `linux.resources`, read usage, count OOM kills, remove.

use crate::error::{Error, Result};
use libcgroups::common::{
    AnyCgroupManager, CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt,
};
use oci_spec::runtime::LinuxResources;
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

/// A container's cgroup.
pub struct Cgroup {
    path: PathBuf,
    manager: AnyCgroupManager,
    unified: bool,
    /// (mount point name, mount point) of each v1 hierarchy with controllers.
    v1_mounts: Vec<(String, PathBuf)>,
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
fn v1_mounts() -> Vec<(String, PathBuf)> {
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
        if !super_opts.split(',').any(|o| V1_CONTROLLERS.contains(&o)) {
            continue;
        }
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(mp.replace("\\040", " "));
        if let Some(name) = mp.file_name().and_then(|n| n.to_str()) {
            out.push((name.to_string(), mp.clone()));
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
        let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: abs.clone(),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| err(path, e))?;
        Ok(Cgroup {
            path: abs,
            manager,
            unified,
            v1_mounts: if unified { Vec::new() } else { v1_mounts() },
        })
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
        self.manager
            .add_task(nix_for_libcgroups::unistd::Pid::from_raw(pid))
            .map_err(|e| err(&self.path, format!("adding process {pid}: {e}")))
    }

    /// Applies resource limits.
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
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
        self.manager
            .apply(&opt)
            .map_err(|e| err(&self.path, format!("applying linux.resources: {e}")))
    }

    /// Kills what is left and removes the cgroup directories.
    pub fn remove(&self) -> Result<()> {
        self.manager
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
            .find(|(name, _)| name.split(',').any(|c| c == controller))
            .map(|(_, mp)| mp.join(self.rel()))
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
            .manager
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
                    .map(|(n, mp)| (n.clone(), mp.join(self.rel())))
                    .collect(),
            )
        }
    }
}
