//! Pod volumes on the node: emptyDir (a directory, or a tmpfs with its size limit),
//! hostPath (with `type` checks), and Files volumes (ConfigMap, Secret, downward API)
//! written atomically like the kubelet's atomic writer: a fresh `..<revision>` dir, a
//! `..data` symlink swapped by rename, and top-level symlinks through `..data`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use flotilla_shared::pod::{PodSpec, Volume, VolumeFile, VolumeMount, VolumeSource};

/// The directory of the pod's volume `name`.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join(".volumes").join(name)
}

/// Checks a relative path: not empty, not absolute, no `..`.
fn check_relative(p: &str, what: &str) -> Result<()> {
    let path = Path::new(p);
    if p.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("{what} {p:?} must be a relative path without '..'");
    }
    Ok(())
}

/// Prepares every volume of the pod (idempotent; Files volumes are rewritten when the
/// revision changed). Returns the host path of each volume.
pub fn ensure(spec: &PodSpec, pod_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for v in &spec.volumes {
        let path = ensure_one(v, pod_dir, spec.revision)
            .with_context(|| format!("volume {:?}", v.name))?;
        if let Some(gid) = spec.security.fs_group.and_then(|g| u32::try_from(g).ok())
            && !matches!(v.source, VolumeSource::HostPath { .. })
        {
            apply_fs_group(&path, gid).with_context(|| format!("volume {:?}: fsGroup", v.name))?;
        }
        out.push((v.name.clone(), path));
    }
    Ok(out)
}

fn ensure_one(v: &Volume, pod_dir: &Path, revision: u64) -> Result<PathBuf> {
    check_relative(&v.name, "volume name")?;
    let dir = volume_dir(pod_dir, &v.name);
    match &v.source {
        VolumeSource::EmptyDir {
            memory,
            size_limit_bytes,
        } => {
            std::fs::create_dir_all(&dir)?;
            if *memory && !is_mount_point(&dir) {
                let mut data = String::from("mode=1777");
                if *size_limit_bytes > 0 {
                    data.push_str(&format!(",size={size_limit_bytes}"));
                }
                nix::mount::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(data.as_str()),
                )
                .with_context(|| format!("mounting tmpfs at {}", dir.display()))?;
            } else {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            }
            Ok(dir)
        }
        VolumeSource::HostPath { path, kind } => {
            let p = PathBuf::from(path);
            if !p.is_absolute() {
                bail!("hostPath {path:?} is not absolute");
            }
            check_host_path(&p, kind)?;
            Ok(p)
        }
        VolumeSource::Files {
            files,
            default_mode,
        } => {
            write_files(&dir, files, *default_mode, revision)?;
            Ok(dir)
        }
    }
}

/// Gives the volume's files to group `gid` (as the kubelet does for `fsGroup`):
/// directories get the setgid bit so new files inherit the group.
fn apply_fs_group(root: &Path, gid: u32) -> Result<()> {
    let gid = Some(nix::unistd::Gid::from_raw(gid));
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        nix::unistd::chown(&p, None, gid).with_context(|| format!("chown {}", p.display()))?;
        if meta.is_dir() {
            let mode = meta.permissions().mode() | 0o2000;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

fn check_host_path(p: &Path, kind: &str) -> Result<()> {
    let meta = std::fs::metadata(p);
    let shown = p.display();
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(p).with_context(|| format!("creating {shown}"))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
            } else if !p.is_dir() {
                bail!("hostPath type check failed: {shown} is not a directory");
            }
            Ok(())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("creating {shown}"))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))?;
            } else if !p.is_file() {
                bail!("hostPath type check failed: {shown} is not a file");
            }
            Ok(())
        }
        other => {
            let m = meta.with_context(|| format!("hostPath type check failed: {shown}"))?;
            let ft = m.file_type();
            let ok = match other {
                "Directory" => ft.is_dir(),
                "File" => ft.is_file(),
                "Socket" => ft.is_socket(),
                "CharDevice" => ft.is_char_device(),
                "BlockDevice" => ft.is_block_device(),
                _ => bail!("unknown hostPath type {other:?}"),
            };
            if !ok {
                bail!("hostPath type check failed: {shown} is not a {other}");
            }
            Ok(())
        }
    }
}

/// Writes a Files volume; nothing changes when `..data` already points at `revision`.
fn write_files(dir: &Path, files: &[VolumeFile], default_mode: u32, revision: u64) -> Result<()> {
    for f in files {
        check_relative(&f.path, "file path")?;
        if f.path.starts_with("..") {
            bail!("file path {:?} must not start with '..'", f.path);
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let rev_name = format!("..{revision}");
    let data_link = dir.join("..data");
    if std::fs::read_link(&data_link).is_ok_and(|t| t == Path::new(&rev_name)) {
        return Ok(());
    }
    let rev_dir = dir.join(&rev_name);
    let _ = std::fs::remove_dir_all(&rev_dir);
    std::fs::create_dir(&rev_dir)?;
    std::fs::set_permissions(&rev_dir, std::fs::Permissions::from_mode(0o755))?;
    for f in files {
        let target = rev_dir.join(&f.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mode = if f.mode == 0 { default_mode } else { f.mode } & 0o7777;
        std::fs::write(&target, &f.data).with_context(|| format!("writing {}", f.path))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    }
    // Swap ..data atomically.
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&rev_name, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // Top-level names point through ..data.
    let mut tops: Vec<String> = files
        .iter()
        .filter_map(|f| {
            Path::new(&f.path)
                .components()
                .find(|c| matches!(c, Component::Normal(_)))
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    tops.sort();
    tops.dedup();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    // Drop what the new revision no longer has.
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "..data" || name == rev_name {
            continue;
        }
        if name.starts_with("..") {
            let _ = std::fs::remove_dir_all(e.path());
        } else if !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Host source, destination and read-only flag of a container's volume mount.
pub fn mount_source(
    m: &VolumeMount,
    volumes: &[(String, PathBuf)],
) -> Result<(PathBuf, String, bool)> {
    let Some((_, base)) = volumes.iter().find(|(n, _)| *n == m.name) else {
        bail!("volumeMount {:?} names no volume of the pod", m.name);
    };
    if !m.mount_path.starts_with('/') {
        bail!("mountPath {:?} is not absolute", m.mount_path);
    }
    let mut source = base.clone();
    if !m.sub_path.is_empty() {
        check_relative(&m.sub_path, "subPath")?;
        source = base.join(&m.sub_path);
        if !source.exists() {
            std::fs::create_dir_all(&source)
                .with_context(|| format!("creating subPath {}", source.display()))?;
        }
        // Resolve symlinks (Files volumes) but stay inside the volume.
        let real = source.canonicalize()?;
        let real_base = base.canonicalize()?;
        if !real.starts_with(&real_base) {
            bail!("subPath {:?} leaves its volume", m.sub_path);
        }
        source = real;
    }
    Ok((source, m.mount_path.clone(), m.read_only))
}

/// Unmounts tmpfs emptyDirs and removes the pod's volumes.
pub fn teardown(pod_dir: &Path) -> Result<()> {
    let root = pod_dir.join(".volumes");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if is_mount_point(&p) {
            nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", p.display()))?;
        }
    }
    std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))
}

/// True when `p` is a mount point (its device differs from its parent's).
pub fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Some(Ok(b))) = (
        std::fs::symlink_metadata(p),
        p.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    a.dev() != b.dev()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str, mode: u32) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn files_are_swapped_atomically_per_revision() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("conf");
        write_files(
            &dir,
            &[file("a.txt", "one", 0), file("sub/b", "x", 0o600)],
            0o644,
            1,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "x");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        write_files(&dir, &[file("a.txt", "two", 0)], 0o644, 2).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "two");
        assert!(!dir.join("sub").exists());
        assert!(!dir.join("..1").exists());
    }

    #[test]
    fn bad_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "", "..data"] {
            let e = write_files(&d.path().join("v"), &[file(bad, "", 0)], 0o644, 1);
            assert!(e.is_err(), "{bad:?} accepted");
        }
        let m = VolumeMount {
            name: "v".into(),
            mount_path: "/x".into(),
            sub_path: "../../etc".into(),
            read_only: false,
        };
        let vols = vec![("v".to_string(), d.path().to_path_buf())];
        assert!(mount_source(&m, &vols).is_err());
    }

    #[test]
    fn host_path_types_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "").unwrap();
        assert!(check_host_path(&f, "File").is_ok());
        let e = check_host_path(&f, "Directory").unwrap_err().to_string();
        assert!(e.contains("is not a Directory"), "{e}");
        assert!(check_host_path(&d.path().join("missing"), "Directory").is_err());
        let new = d.path().join("made/here");
        check_host_path(&new, "DirectoryOrCreate").unwrap();
        assert!(new.is_dir());
    }
}
