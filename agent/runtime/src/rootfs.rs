//! Builds the container's filesystem view inside its new mount namespace: the spec's
//! mounts under the rootfs, device nodes, pivot_root, masked and read-only paths.
//! Runs in the container's init process, before the user program is executed.

use crate::cgroups::CgroupMountSource;
use crate::config::Plan;
use crate::error::{Context, Error, Result};
use crate::mounts::{MountPlan, secure_join};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::LinuxDeviceType;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};

const NONE: Option<&str> = None;

/// The default device nodes every container gets on a fresh /dev (path, major, minor).
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Everything before pivot_root: propagation, the rootfs bind and the spec's mounts.
pub fn prepare(plan: &Plan, cgroup: &CgroupMountSource) -> Result<()> {
    mount(NONE, "/", NONE, plan.rootfs_propagation, NONE)
        .ctx(|| "making / private to the container's mount namespace".into())?;
    let root = &plan.rootfs;
    mount(
        Some(root),
        root,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .ctx(|| format!("bind-mounting rootfs {}", root.display()))?;
    let mut fresh_dev = false;
    for m in &plan.mounts {
        if m.destination == Path::new("/dev") && !m.bind {
            fresh_dev = true;
        }
        if m.typ == "cgroup" || m.typ == "cgroup2" {
            mount_cgroup(root, m, cgroup)?;
        } else {
            mount_one(root, m)?;
        }
    }
    if fresh_dev {
        create_default_devices(root)?;
    }
    for d in &plan.devices {
        let dest = secure_join(root, d.path());
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::config(
                    "linux.devices",
                    format!("{}: type \"a\" is not a device node", d.path().display()),
                ));
            }
        };
        let _ = std::fs::remove_file(&dest);
        let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
        mknod(
            &dest,
            kind,
            mode,
            makedev(d.major() as u64, d.minor() as u64),
        )
        .ctx(|| format!("creating device {}", d.path().display()))?;
        let _ = nix::unistd::chown(
            &dest,
            d.uid().map(nix::unistd::Uid::from_raw),
            d.gid().map(nix::unistd::Gid::from_raw),
        );
    }
    Ok(())
}

fn ensure_target(dest: &Path, is_dir: bool) -> Result<()> {
    if is_dir {
        std::fs::create_dir_all(dest).ctx(|| format!("creating mount point {}", dest.display()))
    } else {
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))?;
        }
        if std::fs::symlink_metadata(dest).is_err() {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o644)
                .open(dest)
                .ctx(|| format!("creating mount point {}", dest.display()))?;
        }
        Ok(())
    }
}

fn mount_one(root: &Path, m: &MountPlan) -> Result<()> {
    let dest = secure_join(root, &m.destination);
    let what = || format!("mounting {} on {}", m.typ, m.destination.display());
    if m.bind {
        let src = m.source.as_deref().unwrap_or(Path::new(""));
        let is_dir = std::fs::metadata(src).map(|m| m.is_dir()).unwrap_or(true);
        ensure_target(&dest, is_dir)?;
        let base = MsFlags::MS_BIND | (m.flags & MsFlags::MS_REC);
        mount(Some(src), &dest, NONE, base, NONE).ctx(what)?;
        let rest = m.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            mount(
                NONE,
                &dest,
                NONE,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                NONE,
            )
            .ctx(|| {
                format!(
                    "remounting bind mount {} with its options",
                    m.destination.display()
                )
            })?;
        }
    } else {
        ensure_target(&dest, true)?;
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        let src = m
            .source
            .as_deref()
            .map(|p| p.as_os_str())
            .unwrap_or(m.typ.as_ref());
        match mount(Some(src), &dest, Some(m.typ.as_str()), m.flags, data) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL)
                if m.flags.contains(MsFlags::MS_RDONLY) && m.typ == "sysfs" =>
            {
                // Some kernels refuse a read-only sysfs in one step: mount, then remount.
                mount(
                    Some(src),
                    &dest,
                    Some("sysfs"),
                    m.flags & !MsFlags::MS_RDONLY,
                    data,
                )
                .ctx(what)?;
                mount(NONE, &dest, NONE, m.flags | MsFlags::MS_REMOUNT, data).ctx(what)?;
            }
            Err(e) => return Err(Error::errno(what(), e)),
        }
    }
    for p in &m.propagation {
        mount(NONE, &dest, NONE, *p, NONE)
            .ctx(|| format!("setting propagation of {}", m.destination.display()))?;
    }
    Ok(())
}

/// A `cgroup` mount: on cgroup v2 the container's own cgroup directory; on v1 a tmpfs
/// with one bind mount per hierarchy, each showing only the container's cgroup.
fn mount_cgroup(root: &Path, m: &MountPlan, cg: &CgroupMountSource) -> Result<()> {
    let dest = secure_join(root, &m.destination);
    ensure_target(&dest, true)?;
    let ro = m.flags.contains(MsFlags::MS_RDONLY);
    let common = m.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let bind_ro = |src: &Path, dst: &Path| -> Result<()> {
        mount(
            Some(src),
            dst,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .ctx(|| format!("binding cgroup {} into the container", src.display()))?;
        let mut f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | common;
        if ro {
            f |= MsFlags::MS_RDONLY;
        }
        mount(NONE, dst, NONE, f, NONE).ctx(|| format!("remounting {}", dst.display()))
    };
    match cg {
        CgroupMountSource::Unified(dir) => bind_ro(dir, &dest)?,
        CgroupMountSource::V1(hierarchies) => {
            mount(
                Some("tmpfs"),
                &dest,
                Some("tmpfs"),
                common,
                Some("mode=755"),
            )
            .ctx(|| format!("mounting tmpfs on {}", m.destination.display()))?;
            for (name, dir) in hierarchies {
                if !dir.exists() {
                    continue;
                }
                let d = dest.join(name);
                std::fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
                bind_ro(dir, &d)?;
            }
            if ro {
                mount(
                    NONE,
                    &dest,
                    NONE,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | common,
                    Some("mode=755"),
                )
                .ctx(|| format!("remounting {} read-only", m.destination.display()))?;
            }
        }
    }
    Ok(())
}

fn create_default_devices(root: &Path) -> Result<()> {
    let dev = root.join("dev");
    let old = nix::sys::stat::umask(Mode::empty());
    let r = (|| {
        for (name, major, minor) in DEFAULT_DEVICES {
            let p = dev.join(name);
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            )
            .ctx(|| format!("creating /dev/{name}"))?;
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            let p = dev.join(link);
            if std::fs::symlink_metadata(&p).is_err() {
                symlink(target, &p).ctx(|| format!("creating /dev/{link}"))?;
            }
        }
        Ok(())
    })();
    nix::sys::stat::umask(old);
    r
}

/// Swaps the root: the rootfs becomes `/` and the old root is detached.
pub fn pivot(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root".into())?;
    // The old root is now stacked under "."; make its mounts private before detaching so
    // that nothing propagates back to the host.
    mount(NONE, ".", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
        .ctx(|| "making the old root a slave".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching the old root".into())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".into())
}

/// After pivot_root: masked paths, read-only paths, sysctls and a read-only root.
pub fn finish(plan: &Plan) -> Result<()> {
    for p in &plan.masked_paths {
        mask(p)?;
    }
    for p in &plan.readonly_paths {
        readonly(p)?;
    }
    for (k, v) in &plan.sysctl {
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, v.as_bytes())
            .map_err(|e| Error::config(format!("linux.sysctl.{k}"), format!("cannot set: {e}")))?;
    }
    if plan.readonly_root {
        mount(
            NONE,
            "/",
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            NONE,
        )
        .ctx(|| "remounting / read-only".into())?;
    }
    Ok(())
}

fn mask(p: &Path) -> Result<()> {
    match std::fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, NONE)
            .ctx(|| format!("masking {}", p.display())),
        Ok(_) => mount(Some("/dev/null"), p, NONE, MsFlags::MS_BIND, NONE)
            .ctx(|| format!("masking {}", p.display())),
    }
}

fn readonly(p: &Path) -> Result<()> {
    match mount(Some(p), p, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE) {
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        r => r.ctx(|| format!("binding {} for read-only", p.display()))?,
    }
    mount(
        NONE,
        p,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        NONE,
    )
    .ctx(|| format!("remounting {} read-only", p.display()))
}
