//! Container root filesystems: a snapshot `snapshots/<id>` holds a container's own
//! `upper` and `work` dirs, and the root filesystem is an overlay of the image's
//! unpacked layers (top first) plus that upper dir, mounted where the runtime wants it.
//! Where overlayfs is unavailable the layers are copied into `snapshots/<id>/rootfs`
//! (whiteouts and opaque dirs applied) and bind-mounted instead.
//!
//! The kernel takes mount options in one page, so the layers' full paths fit only for
//! images of a few dozen layers; deeper images name each layer by a short
//! `/proc/self/fd/N` path of an open directory instead, and only images deeper than
//! even that allows (or than overlayfs stacks, 500) fall back to a copy.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::store::ImageStore;
use crate::unpack::OPAQUE_XATTR;

/// How a snapshot's root filesystem is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// overlayfs over the shared layers.
    Overlay,
    /// A private copy of the layers, bind-mounted.
    Copy,
}

/// A mounted container root filesystem.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Container id.
    pub id: String,
    /// Where it is mounted.
    pub target: PathBuf,
    /// Overlay or copy.
    pub mode: Mode,
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("invalid container id {id:?}: use 1-128 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// The directory of snapshot `id`.
pub fn snapshot_dir(store: &ImageStore, id: &str) -> PathBuf {
    store.data_dir().join("snapshots").join(id)
}

/// Creates snapshot `id` of `image` and mounts its root filesystem at `target` (which
/// must exist). `force_copy` skips overlayfs.
pub fn mount(
    store: &ImageStore,
    image: &str,
    id: &str,
    target: &Path,
    force_copy: bool,
) -> Result<Snapshot> {
    check_id(id)?;
    // Held until the snapshot records its image, so prune cannot remove it meanwhile.
    let _lock = store.lock_shared()?;
    let rec = store.resolve(image)?;
    let dir = snapshot_dir(store, id);
    if dir.exists() {
        bail!("snapshot {id} already exists (unmount it first)");
    }
    if !target.is_dir() {
        bail!("mount target {} is not a directory", target.display());
    }
    let layers: Vec<PathBuf> = rec
        .diff_ids
        .iter()
        .rev()
        .map(|d| store.layer_dir(d))
        .collect();
    if let Some(missing) = layers.iter().find(|l| !l.is_dir()) {
        bail!(
            "layer {} of {} is not unpacked; pull or import the image again",
            missing.display(),
            rec.name
        );
    }
    fs::create_dir_all(dir.join("upper")).context("creating snapshot")?;
    fs::create_dir_all(dir.join("work"))?;
    let result = (|| {
        fs::write(dir.join("image"), rec.manifest.to_string())?;
        let mode = if force_copy {
            Mode::Copy
        } else {
            match mount_overlay(&layers, &dir, target) {
                Ok(()) => Mode::Overlay,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENODEV) | Some(libc::EINVAL) | Some(libc::EPERM)
                    ) || e.kind() == io::ErrorKind::InvalidInput =>
                {
                    Mode::Copy
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("mounting overlay at {}", target.display())));
                }
            }
        };
        if mode == Mode::Copy {
            let rootfs = dir.join("rootfs");
            fs::create_dir(&rootfs)?;
            for layer in layers.iter().rev() {
                apply_layer_copy(layer, &rootfs)
                    .with_context(|| format!("copying layer {}", layer.display()))?;
            }
            rustix::mount::mount_bind(&rootfs, target)
                .with_context(|| format!("bind-mounting rootfs at {}", target.display()))?;
        }
        fs::write(dir.join("target"), target.as_os_str().as_encoded_bytes())?;
        fs::write(
            dir.join("mode"),
            if mode == Mode::Overlay {
                "overlay"
            } else {
                "copy"
            },
        )?;
        Ok(mode)
    })();
    match result {
        Ok(mode) => Ok(Snapshot {
            id: id.to_string(),
            target: target.to_path_buf(),
            mode,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// The kernel copies mount options into one page; keep below it.
const MAX_MOUNT_DATA: usize = 4000;

/// The most lower layers overlayfs stacks (`OVL_MAX_STACK`).
const MAX_OVERLAY_LAYERS: usize = 500;

fn mount_overlay(layers: &[PathBuf], dir: &Path, target: &Path) -> io::Result<()> {
    if layers.len() > MAX_OVERLAY_LAYERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} layers exceed overlayfs' {MAX_OVERLAY_LAYERS}",
                layers.len()
            ),
        ));
    }
    let upper_work = format!(
        "upperdir={},workdir={}",
        escape(&dir.join("upper")),
        escape(&dir.join("work"))
    );
    let by_path: Vec<String> = layers.iter().map(|l| escape(l)).collect();
    let data = format!("lowerdir={},{upper_work}", by_path.join(":"));
    if data.len() < MAX_MOUNT_DATA {
        return mount_with(&data, target);
    }
    // Too long: name each layer by an open descriptor, held until the mount is done.
    let fds = layers
        .iter()
        .map(|l| {
            rustix::fs::open(
                l,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(io::Error::from)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let by_fd: Vec<String> = fds
        .iter()
        .map(|fd| format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)))
        .collect();
    let data = format!("lowerdir={},{upper_work}", by_fd.join(":"));
    if data.len() >= MAX_MOUNT_DATA {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} layers are too many for one overlay mount", layers.len()),
        ));
    }
    mount_with(&data, target)
}

fn mount_with(data: &str, target: &Path) -> io::Result<()> {
    let data =
        std::ffi::CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(io::Error::from)
}

/// Overlay options separate with ',' and ':'; escape them (and '\').
fn escape(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Unmounts snapshot `id` and deletes it (its upper dir with it).
pub fn unmount(store: &ImageStore, id: &str) -> Result<()> {
    check_id(id)?;
    let dir = snapshot_dir(store, id);
    if !dir.exists() {
        bail!("no snapshot {id}");
    }
    if let Ok(t) = fs::read(dir.join("target")) {
        let target = PathBuf::from(std::ffi::OsString::from_vec(t));
        match rustix::mount::unmount(&target, UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", target.display())),
        }
    }
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
}

use std::os::unix::ffi::OsStringExt;

/// Applies one overlay-form layer dir onto `dest` as overlayfs would show it:
/// whiteouts delete, opaque dirs hide what was below, everything else is copied.
pub fn apply_layer_copy(layer: &Path, dest: &Path) -> Result<()> {
    copy_dir(layer, dest)?;
    Ok(())
}

fn copy_dir(src: &Path, dest: &Path) -> Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        let existing = fs::symlink_metadata(&to).ok();
        if ft.is_char_device() && meta.rdev() == 0 {
            remove_any(&to, existing.as_ref())?;
            continue;
        }
        if ft.is_dir() {
            let opaque = is_opaque(&from);
            match &existing {
                Some(m) if m.is_dir() && opaque => {
                    remove_any(&to, existing.as_ref())?;
                    fs::create_dir(&to)?;
                }
                Some(m) if m.is_dir() => {}
                _ => {
                    remove_any(&to, existing.as_ref())?;
                    fs::create_dir(&to)?;
                }
            }
            copy_dir(&from, &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
            continue;
        }
        remove_any(&to, existing.as_ref())?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
        } else {
            let kind = if ft.is_char_device() {
                rustix::fs::FileType::CharacterDevice
            } else if ft.is_block_device() {
                rustix::fs::FileType::BlockDevice
            } else if ft.is_fifo() {
                rustix::fs::FileType::Fifo
            } else {
                continue;
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &to,
                kind,
                rustix::fs::Mode::from_raw_mode(meta.mode() & 0o7777),
                meta.rdev(),
            )?;
        }
        let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
        if ft.is_file() {
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut buf), Ok(1) if buf[0] == b'y')
}

fn remove_any(path: &Path, meta: Option<&fs::Metadata>) -> Result<()> {
    match meta {
        None => Ok(()),
        Some(m) if m.is_dir() => Ok(fs::remove_dir_all(path)?),
        Some(_) => Ok(fs::remove_file(path)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::tests::TarMaker;
    use crate::unpack::unpack_layer;

    fn layer(root: &Path, name: &str, tar: Vec<u8>) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir(&dir).unwrap();
        unpack_layer(&tar[..], &dir, None).unwrap();
        dir
    }

    #[test]
    fn copy_applies_whiteouts_and_opaque_dirs() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: overlay whiteouts need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            TarMaker::new()
                .file("etc/motd", b"hello")
                .file("etc/keep", b"kept")
                .file("var/cache/a", b"a")
                .symlink("lib", "usr/lib")
                .finish(),
        );
        let top = layer(
            tmp.path(),
            "top",
            TarMaker::new()
                .file("etc/.wh.motd", b"")
                .file("var/cache/.wh..wh..opq", b"")
                .file("var/cache/b", b"b")
                .dir("lib/")
                .file("lib/real", b"dir now")
                .finish(),
        );
        let dest = tmp.path().join("rootfs");
        fs::create_dir(&dest).unwrap();
        apply_layer_copy(&base, &dest).unwrap();
        apply_layer_copy(&top, &dest).unwrap();
        assert!(!dest.join("etc/motd").exists());
        assert_eq!(fs::read(dest.join("etc/keep")).unwrap(), b"kept");
        assert!(!dest.join("var/cache/a").exists());
        assert_eq!(fs::read(dest.join("var/cache/b")).unwrap(), b"b");
        // A directory replaces the symlink instead of writing through it.
        assert!(fs::symlink_metadata(dest.join("lib")).unwrap().is_dir());
        assert_eq!(fs::read(dest.join("lib/real")).unwrap(), b"dir now");
    }

    #[test]
    fn container_ids_are_checked() {
        for bad in ["", ".", "..", "a/b", "x y", &"a".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        check_id("pod-1_c.2").unwrap();
    }
}
