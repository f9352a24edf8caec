//! Unit tests of layer unpacking: normal trees, whiteouts, and every malicious tar case.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Builds a tar from entries; raw names/link names are written into the header bytes so
/// that malicious paths (which `tar::Builder` refuses) can be crafted.
pub(crate) struct TarMaker {
    out: Vec<u8>,
}

impl TarMaker {
    pub(crate) fn new() -> Self {
        TarMaker { out: Vec::new() }
    }

    fn raw(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub(crate) fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, "", 0o755, b"")
    }
    pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, tar::EntryType::Regular, "", 0o644, data)
    }
    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Symlink, target, 0o777, b"")
    }
    pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Link, target, 0o644, b"")
    }
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<(Digest, UnpackStats)>) {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    let r = unpack_layer(tar, &layer, None);
    (dir, r)
}

/// Every path in `dir` (relative), to show nothing was written elsewhere.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn unpacks_files_dirs_links_and_metadata() {
    let tar = TarMaker::new()
        .dir("./")
        .dir("etc/")
        .file("etc/hostname", b"box\n")
        .symlink("etc/alias", "/etc/hostname")
        .hardlink("etc/hard", "etc/hostname")
        .file("bin/deep/tool", b"#!/bin/sh\n")
        .finish();
    let (dir, r) = unpack(&tar);
    let (digest, stats) = r.unwrap();
    assert_eq!(digest, Digest::of(&tar));
    assert_eq!(stats.entries, 6);
    let l = dir.path().join("layer");
    assert_eq!(std::fs::read(l.join("etc/hostname")).unwrap(), b"box\n");
    assert_eq!(
        std::fs::read_link(l.join("etc/alias")).unwrap(),
        Path::new("/etc/hostname")
    );
    let a = std::fs::metadata(l.join("etc/hostname")).unwrap();
    let b = std::fs::metadata(l.join("etc/hard")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.permissions().mode() & 0o7777, 0o644);
    assert_eq!(a.mtime(), 1_600_000_000);
    assert_eq!(
        std::fs::metadata(l.join("etc")).unwrap().mtime(),
        1_600_000_000
    );
    if rustix::process::geteuid().is_root() {
        assert_eq!(a.uid(), 1000);
    }
    // Missing parent directories are created.
    assert!(l.join("bin/deep/tool").is_file());
}

#[test]
fn pax_xattrs_are_kept_and_overlay_ones_dropped() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.flotilla", &b"kept"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, "file", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let (dir, r) = unpack(&tar);
    r.unwrap();
    let path = dir.path().join("layer/file");
    let mut buf = [0u8; 16];
    match rustix::fs::getxattr(path.as_path(), "user.flotilla", &mut buf) {
        Ok(n) => assert_eq!(&buf[..n], b"kept"),
        Err(Errno::NOTSUP) => {
            eprintln!("user xattrs unsupported here; only checking the overlay one")
        }
        Err(e) => panic!("user.flotilla missing: {e}"),
    }
    assert!(rustix::fs::getxattr(path.as_path(), "trusted.overlay.redirect", &mut buf).is_err());
}

#[test]
fn diff_id_mismatch_is_an_error() {
    let tar = TarMaker::new().file("a", b"x").finish();
    let dir = tempfile::tempdir().unwrap();
    let err = unpack_layer(&tar[..], dir.path(), Some(&Digest::of(b"other"))).unwrap_err();
    assert!(
        err.to_string().contains("does not match its diff id"),
        "{err}"
    );
}

#[test]
fn gzip_layers_are_decompressed() {
    let tar = TarMaker::new().file("hello", b"world").finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let (dir, r) = unpack(&gz);
    assert_eq!(r.unwrap().0, Digest::of(&tar));
    assert_eq!(
        std::fs::read(dir.path().join("layer/hello")).unwrap(),
        b"world"
    );
}

#[test]
fn zstd_layers_are_decompressed() {
    let tar = TarMaker::new().file("z", b"zstd data").finish();
    let zst =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    assert_eq!(sniff(&zst), Compression::Zstd);
    let (dir, r) = unpack(&zst);
    assert_eq!(r.unwrap().0, Digest::of(&tar));
    assert_eq!(
        std::fs::read(dir.path().join("layer/z")).unwrap(),
        b"zstd data"
    );
}

#[test]
fn dot_dot_entry_is_refused() {
    let tar = TarMaker::new().file("../escaped", b"evil").finish();
    let (dir, r) = unpack(&tar);
    let err = format!("{:#}", r.unwrap_err());
    assert!(err.contains("'..'") && err.contains("../escaped"), "{err}");
    assert_eq!(tree(dir.path()), vec!["layer"]);
}

#[test]
fn absolute_path_is_refused() {
    let tar = TarMaker::new().file("/tmp/abs-escape", b"evil").finish();
    let (dir, r) = unpack(&tar);
    let err = format!("{:#}", r.unwrap_err());
    assert!(err.contains("absolute path"), "{err}");
    assert_eq!(tree(dir.path()), vec!["layer"]);
}

#[test]
fn writing_through_an_absolute_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let link_target = outside.path().to_str().unwrap().to_string();
    let tar = TarMaker::new()
        .symlink("etc", &link_target)
        .file("etc/passwd", b"root::0:0::/:/bin/sh\n")
        .finish();
    let (dir, r) = unpack(&tar);
    let err = format!("{:#}", r.unwrap_err());
    assert!(err.contains("symlink"), "{err}");
    assert!(
        tree(outside.path()).is_empty(),
        "something was written outside"
    );
    assert_eq!(tree(dir.path()), vec!["layer", "layer/etc"]);
}

#[test]
fn writing_through_a_relative_symlink_escape_is_refused() {
    let tar = TarMaker::new()
        .symlink("up", "../../../../..")
        .file("up/tmp/evil", b"x")
        .finish();
    let (_dir, r) = unpack(&tar);
    assert!(format!("{:#}", r.unwrap_err()).contains("symlink"));
}

#[test]
fn hardlink_to_a_host_file_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    for target in [
        secret.to_str().unwrap().to_string(),
        "../../../../../../etc/passwd".to_string(),
    ] {
        let tar = TarMaker::new().hardlink("stolen", &target).finish();
        let (dir, r) = unpack(&tar);
        let err = format!("{:#}", r.unwrap_err());
        assert!(err.contains("hardlink target"), "{err}");
        assert_eq!(tree(dir.path()), vec!["layer"]);
    }
    // Through a symlink inside the layer.
    let tar = TarMaker::new()
        .symlink("host", outside.path().to_str().unwrap())
        .hardlink("stolen", "host/secret")
        .finish();
    let (dir, r) = unpack(&tar);
    assert!(format!("{:#}", r.unwrap_err()).contains("symlink"));
    assert!(!dir.path().join("layer/stolen").exists());
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn truncated_archive_is_an_error() {
    let tar = TarMaker::new().file("big", &[1u8; 5000]).finish();
    let (_dir, r) = unpack(&tar[..2048]);
    let err = format!("{:#}", r.unwrap_err());
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = TarMaker::new()
        .file("a", b"first")
        .file("a", b"second")
        .dir("d/")
        .file("d/x", b"x")
        .file("d", b"now a file")
        .finish();
    let (dir, r) = unpack(&tar);
    r.unwrap();
    let l = dir.path().join("layer");
    assert_eq!(std::fs::read(l.join("a")).unwrap(), b"second");
    assert_eq!(std::fs::read(l.join("d")).unwrap(), b"now a file");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: creating overlay whiteouts needs root");
        return;
    }
    let tar = TarMaker::new()
        .dir("etc/")
        .file("etc/.wh.motd", b"")
        .dir("var/")
        .file("var/.wh..wh..opq", b"")
        .finish();
    let (dir, r) = unpack(&tar);
    r.unwrap();
    let l = dir.path().join("layer");
    let m = std::fs::symlink_metadata(l.join("etc/motd")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &m.file_type()
    ));
    assert_eq!(m.rdev(), 0);
    assert!(!l.join("etc/.wh.motd").exists());
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(l.join("var").as_path(), OPAQUE_XATTR, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert!(!l.join("var/.wh..wh..opq").exists());
}
