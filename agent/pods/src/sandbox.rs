//! The pod sandbox: network, uts and ipc namespaces shared by the pod's containers,
//! kept alive by bind mounts of their `nsfs` files under `<pod dir>/.ns/` (as
//! `ip netns` does), the pod's /etc/hosts, /etc/hostname and /etc/resolv.conf, and
//! the removal of the pod's cgroup parent.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flotilla_shared::pod::PodSpec;
use nix::sched::CloneFlags;

/// Namespace kinds a sandbox may hold: (file name, clone flag).
const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
];

/// Which namespaces the pod gets of its own.
pub fn wanted(spec: &PodSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !spec.host_network {
        out.push("net");
        out.push("uts");
    }
    if !spec.host_ipc {
        out.push("ipc");
    }
    out
}

/// The bind-mounted namespace file of `kind` for the pod in `pod_dir`.
pub fn ns_path(pod_dir: &Path, kind: &str) -> PathBuf {
    pod_dir.join(".ns").join(kind)
}

/// True when `path` is an nsfs mount (a namespace kept alive).
// The field's width differs between targets (i32 on 32-bit ARM).
#[allow(clippy::unnecessary_cast)]
fn is_ns_mount(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == libc::NSFS_MAGIC as i64)
}

/// Creates the pod's namespaces (those not already there). Idempotent.
pub fn ensure(spec: &PodSpec, pod_dir: &Path) -> Result<()> {
    let kinds: Vec<&'static str> = wanted(spec)
        .into_iter()
        .filter(|k| !is_ns_mount(&ns_path(pod_dir, k)))
        .collect();
    if kinds.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(pod_dir.join(".ns"))?;
    let dir = pod_dir.to_path_buf();
    let hostname = spec.hostname.clone();
    // unshare affects only the calling thread: do it on a thread of its own that ends.
    std::thread::spawn(move || -> Result<()> {
        let mut flags = CloneFlags::empty();
        for (name, flag) in KINDS {
            if kinds.contains(&name) {
                flags |= flag;
            }
        }
        nix::sched::unshare(flags).context("creating the pod's namespaces")?;
        if kinds.contains(&"uts") {
            nix::unistd::sethostname(&hostname)
                .with_context(|| format!("setting hostname {hostname:?}"))?;
        }
        if kinds.contains(&"net") {
            loopback_up().context("bringing up the pod's loopback")?;
        }
        for kind in &kinds {
            let target = ns_path(&dir, kind);
            std::fs::File::create(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            let source = format!("/proc/thread-self/ns/{kind}");
            nix::mount::mount(
                Some(source.as_str()),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {source} at {}", target.display()))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket and ioctl calls with a zeroed, filled-in ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        if r < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e.into());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if r < 0 {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Unmounts and removes the pod's namespace files.
pub fn teardown(pod_dir: &Path) -> Result<()> {
    for (kind, _) in KINDS {
        let p = ns_path(pod_dir, kind);
        if is_ns_mount(&p) {
            nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", p.display()))?;
        }
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}

/// Writes the pod's /etc/hosts, /etc/hostname and /etc/resolv.conf under
/// `<pod dir>/.etc/` (atomically) and returns their paths.
pub fn write_etc(spec: &PodSpec, pod_dir: &Path, pod_ip: &str) -> Result<Vec<(String, PathBuf)>> {
    let dir = pod_dir.join(".etc");
    std::fs::create_dir_all(&dir)?;
    let hostname = if spec.host_network {
        nix::unistd::gethostname()?.to_string_lossy().into_owned()
    } else {
        spec.hostname.clone()
    };
    let hosts = if spec.host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        let mut h = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::1\tip6-mcastprefix\n",
        );
        if !pod_ip.is_empty() {
            h.push_str(&format!("{pod_ip}\t{hostname}\n"));
        }
        h
    };
    let resolv = if spec.dns.use_host {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    } else {
        let mut r = String::new();
        if !spec.dns.searches.is_empty() {
            r.push_str(&format!("search {}\n", spec.dns.searches.join(" ")));
        }
        for ns in &spec.dns.nameservers {
            r.push_str(&format!("nameserver {ns}\n"));
        }
        if !spec.dns.options.is_empty() {
            let opts: Vec<String> = spec
                .dns
                .options
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}:{v}")
                    }
                })
                .collect();
            r.push_str(&format!("options {}\n", opts.join(" ")));
        }
        r
    };
    let mut out = Vec::new();
    for (name, text) in [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv),
    ] {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes(), 0o644)?;
        out.push((format!("/etc/{name}"), path));
    }
    Ok(out)
}

/// Writes `data` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp~");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Mount points of every cgroup hierarchy (v1 and unified).
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        if (fstype == "cgroup" || fstype == "cgroup2")
            && let Some(m) = left.split(' ').nth(4)
        {
            let m = PathBuf::from(m.replace("\\040", " "));
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// Removes the (empty) cgroup directory `path` (relative to each hierarchy's root)
/// in every hierarchy.
pub fn remove_cgroup(path: &str) -> Result<()> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        bail!("refusing to remove the root cgroup");
    }
    for m in cgroup_mounts() {
        let dir = m.join(rel);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
    Ok(())
}

/// SIGKILLs every process in cgroup `path` (every hierarchy) and waits up to 5 s
/// for it to empty.
pub fn kill_cgroup(path: &str) {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut pids = Vec::new();
        for m in cgroup_mounts() {
            let procs =
                std::fs::read_to_string(m.join(rel).join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if pids.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: plain kill of a process inside this container's cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// True when the cgroup directory `path` exists in some hierarchy.
pub fn cgroup_exists(path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    cgroup_mounts().iter().any(|m| m.join(rel).is_dir())
}
