//! A per-test cgroup parent: one directory `flotilla-test-<pid>-<n>-<name>` under
//! every cgroup v1 hierarchy and under the unified (v2) hierarchy, as mounted. The
//! runtime under test creates its cgroups below it; on drop the whole subtree is
//! emptied and removed, also when the test panics.
//!
//! Only processes inside this test's own cgroup subtree are ever killed: nothing else
//! can be there, since the cgroup was made by this test for what it starts.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::naming;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory` or `/sys/fs/cgroup`.
    pub mount: PathBuf,
    /// v1 controllers (or `name=…` for named hierarchies); empty for the unified one.
    pub controllers: Vec<String>,
    /// True for the unified (cgroup2) hierarchy.
    pub unified: bool,
}

/// The cgroup hierarchies mounted in this mount namespace, from /proc/self/mountinfo.
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    Ok(parse_mountinfo(&info))
}

fn parse_mountinfo(info: &str) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rest: Vec<&str> = right.split(' ').collect();
        let (Some(mount), Some(fstype)) = (fields.get(4), rest.first()) else {
            continue;
        };
        let mount = PathBuf::from(mount.replace("\\040", " "));
        let hierarchy = match *fstype {
            "cgroup2" => Hierarchy {
                mount,
                controllers: Vec::new(),
                unified: true,
            },
            "cgroup" => {
                let options = rest.get(2).copied().unwrap_or("");
                let controllers = options
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("release_agent"))
                    .filter(|o| !o.contains('=') || o.starts_with("name="))
                    .filter(|o| {
                        !matches!(*o, "noprefix" | "clone_children" | "xattr" | "nsdelegate")
                    })
                    .map(str::to_string)
                    .collect();
                Hierarchy {
                    mount,
                    controllers,
                    unified: false,
                }
            }
            _ => continue,
        };
        // The same hierarchy may be mounted twice; keep the first mount.
        if !found
            .iter()
            .any(|h| h.controllers == hierarchy.controllers && h.unified == hierarchy.unified)
        {
            found.push(hierarchy);
        }
    }
    found
}

/// A per-test cgroup parent in every mounted hierarchy; removed on drop.
pub struct TestCgroup {
    name: String,
    dirs: Vec<(Hierarchy, PathBuf)>,
}

impl TestCgroup {
    /// Creates the parent cgroup in every hierarchy. In v1 cpuset it copies the
    /// root's cpus/mems and sets `cgroup.clone_children`, so children are usable at
    /// once; in v2 it enables every available controller for its children.
    /// Panics when a cgroup cannot be created (nothing is left behind then).
    pub fn new(name: &str) -> TestCgroup {
        Self::try_new(name).unwrap_or_else(|e| panic!("cannot create test cgroup {name:?}: {e:#}"))
    }

    fn try_new(label: &str) -> Result<TestCgroup> {
        static SWEEP: Once = Once::new();
        let all = hierarchies()?;
        if all.is_empty() {
            bail!("no cgroup hierarchy is mounted");
        }
        SWEEP.call_once(sweep_stale);
        let mut cg = TestCgroup {
            name: naming::unique(label),
            dirs: Vec::new(),
        };
        for h in all {
            let dir = h.mount.join(&cg.name);
            fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            cg.dirs.push((h.clone(), dir.clone()));
            if h.controllers.iter().any(|c| c == "cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = fs::read_to_string(h.mount.join(file))?;
                    write(&dir.join(file), value.trim())?;
                }
                write(&dir.join("cgroup.clone_children"), "1")?;
            }
            if h.unified {
                let available = fs::read_to_string(dir.join("cgroup.controllers"))?;
                for c in available.split_whitespace() {
                    // Some controllers may refuse (e.g. a threaded subtree); children
                    // simply will not have those.
                    let _ = write(&dir.join("cgroup.subtree_control"), &format!("+{c}"));
                }
            }
        }
        Ok(cg)
    }

    /// The cgroup's name, the same in every hierarchy.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cgroup path relative to each hierarchy's root (`/flotilla-test-…`), as a
    /// runtime's cgroups path parent.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// The directory in the v1 hierarchy holding `controller` (e.g. `"memory"`).
    pub fn v1(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(h, _)| h.controllers.iter().any(|c| c == controller))
            .map(|(_, d)| d.as_path())
    }

    /// The directory in the unified (v2) hierarchy, if one is mounted.
    pub fn unified(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(h, _)| h.unified)
            .map(|(_, d)| d.as_path())
    }

    /// All directories of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }

    /// Creates the child cgroup `name` below this one in every hierarchy (as a runtime
    /// would for a container) and returns its directories. Processes belong in such
    /// children, not in the parent itself: cgroup v2 forbids processes in a cgroup
    /// that delegates controllers to its children.
    pub fn child(&self, name: &str) -> Result<Vec<PathBuf>> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("invalid child cgroup name {name:?}");
        }
        let mut made = Vec::new();
        for (_, dir) in &self.dirs {
            let child = dir.join(name);
            fs::create_dir_all(&child)
                .with_context(|| format!("cannot create {}", child.display()))?;
            made.push(child);
        }
        Ok(made)
    }

    /// Moves process `pid` into the child cgroup `name` (created if missing) in every
    /// hierarchy.
    pub fn add_process(&self, name: &str, pid: u32) -> Result<()> {
        for child in self.child(name)? {
            write(&child.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The PIDs in this cgroup's subtree, in any hierarchy (sorted, no duplicates).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .flat_map(|(_, d)| subtree(d))
            .flat_map(|d| procs(&d))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let dirs: Vec<&Path> = self.dirs.iter().map(|(_, d)| d.as_path()).collect();
        if let Err(e) = remove_trees(&dirs, true) {
            eprintln!(
                "warning: test cgroup {} not fully removed: {e:#}",
                self.name
            );
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

/// `dir` and every cgroup below it, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(subtree(&entry.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Empties (SIGKILL to what is inside, when `kill`) and removes the subtrees of
/// `dirs` — one cgroup in several hierarchies, handled together: a task frozen by the
/// freezer hierarchy must be thawed before a kill sent for another hierarchy lands.
fn remove_trees(dirs: &[&Path], kill: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cgroups: Vec<PathBuf> = dirs
            .iter()
            .filter(|d| d.exists())
            .flat_map(|d| subtree(d))
            .collect();
        if cgroups.is_empty() {
            return Ok(());
        }
        if kill {
            // Frozen tasks take SIGKILL only once thawed; thaw parents first.
            for cg in cgroups.iter().rev() {
                thaw(cg);
            }
            for cg in &cgroups {
                kill_all(cg);
            }
        }
        let mut left = Vec::new();
        for cg in cgroups {
            if fs::remove_dir(&cg).is_err() && cg.exists() {
                left.push(cg);
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if !kill || Instant::now() >= deadline {
            bail!(
                "cannot remove {} (still holds {:?})",
                left[0].display(),
                procs(&left[0])
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs every process in `cg` (cgroup.kill where the kernel has it).
fn kill_all(cg: &Path) {
    let pids = procs(cg);
    if pids.is_empty() {
        return;
    }
    if cg.join("cgroup.kill").exists() && fs::write(cg.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Thaws `cg` if a test froze it (v1 freezer.state, v2 cgroup.freeze).
fn thaw(cg: &Path) {
    let v1 = cg.join("freezer.state");
    if fs::read_to_string(&v1).is_ok_and(|s| s.trim() != "THAWED") {
        let _ = fs::write(&v1, "THAWED");
    }
    let v2 = cg.join("cgroup.freeze");
    if fs::read_to_string(&v2).is_ok_and(|s| s.trim() == "1") {
        let _ = fs::write(&v2, "0");
    }
}

/// Thaws the cgroups holding process `pid` that belong to a test (named by the
/// harness, any hierarchy), so a frozen test process can die. Others are left alone.
pub fn thaw_test_cgroups_of(pid: u32) {
    let Ok(table) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return;
    };
    let all = hierarchies().unwrap_or_default();
    for line in table.lines() {
        // "4:freezer:/flotilla-test-1-0-x/pod" (v1) or "0::/flotilla-test-1-0-x/pod" (v2)
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if !path.contains(&format!("/{}", naming::PREFIX)) {
            continue;
        }
        let listed: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
        let hierarchy = all.iter().find(|h| {
            if listed.is_empty() {
                h.unified
            } else {
                !h.unified && h.controllers.iter().all(|c| listed.contains(&c.as_str()))
            }
        });
        if let Some(h) = hierarchy {
            let dir = h.mount.join(path.trim_start_matches('/'));
            // Thaw from the test cgroup down to the process's own cgroup.
            let mut chain: Vec<&Path> = dir
                .ancestors()
                .take_while(|d| d.starts_with(&h.mount))
                .collect();
            chain.reverse();
            for cg in chain {
                thaw(cg);
            }
        }
    }
}

/// Removes test cgroups left, empty, by test processes that no longer exist (e.g.
/// killed before their drops ran). Runs once per test process on the first
/// [`TestCgroup::new`]. A leftover that still holds processes is kept: this run did
/// not start them, so it does not kill them.
pub fn sweep_stale() {
    for h in hierarchies().unwrap_or_default() {
        let Ok(entries) = fs::read_dir(&h.mount) else {
            continue;
        };
        for entry in entries.flatten() {
            if naming::is_stale(&entry.file_name().to_string_lossy()) {
                let _ = remove_trees(&[&entry.path()], false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_and_unified_mounts() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:38 / /mnt/again rw,relatime - cgroup2 cgroup2 rw
";
        let h = parse_mountinfo(info);
        assert_eq!(h.len(), 4, "{h:?}");
        assert_eq!(h[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(h[0].mount, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(h[2].controllers, ["name=systemd"]);
        assert!(h[3].unified);
        assert_eq!(h[3].mount, Path::new("/sys/fs/cgroup/unified"));
    }
}
