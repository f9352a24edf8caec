//! Safe layer unpacking. A layer tar (gzip, zstd or plain) is applied into its own
//! directory, which later serves as an overlay lower dir: whiteouts become overlay
//! whiteouts (character device 0:0) and opaque markers set `trusted.overlay.opaque`.
//!
//! Safety: every path is resolved component by component from the layer root with
//! `O_NOFOLLOW`, so no entry is ever written through a symlink; absolute paths, `..`
//! components and hardlinks that point outside the layer are refused with an error that
//! names the entry. The uncompressed stream is hashed and must match the diff id.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::digest::{Digest, HashingReader};

/// The xattr that marks an overlay directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What unpacking a layer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    /// Entries applied.
    pub entries: u64,
    /// Uncompressed bytes of the layer tar.
    pub tar_bytes: u64,
}

/// How a layer blob is compressed, judged by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Recognises gzip and zstd by their magic numbers.
pub fn sniff(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps `reader` in the decompressor its first bytes call for.
pub fn decompress<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(256 * 1024, reader);
    let kind = sniff(buf.fill_buf().context("reading layer")?);
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(buf)
                .map_err(|e| anyhow!("bad zstd stream: {e}"))?,
        ),
        Compression::None => Box::new(buf),
    })
}

/// Unpacks the layer blob read from `blob` into the (empty, existing) directory `dest`,
/// checking the uncompressed stream against `diff_id` when given. On error `dest` may
/// hold a partial tree: the caller unpacks into a temporary directory and removes it.
pub fn unpack_layer(
    blob: impl Read,
    dest: &Path,
    diff_id: Option<&Digest>,
) -> Result<(Digest, UnpackStats)> {
    let mut hashing = HashingReader::new(decompress(blob)?);
    let mut stats = UnpackStats::default();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut writer = LayerWriter::open(dest)?;
        for entry in archive.entries().context("reading layer tar")? {
            let mut entry = entry.context("reading layer tar (truncated or corrupt archive?)")?;
            let raw_path = entry.path_bytes().into_owned();
            writer
                .apply(&mut entry)
                .with_context(|| format!("layer entry {:?}", String::from_utf8_lossy(&raw_path)))?;
            stats.entries += 1;
        }
        writer.finish()?;
    }
    let (digest, len) = hashing.finish().context("reading layer (truncated?)")?;
    stats.tar_bytes = len;
    if let Some(want) = diff_id
        && *want != digest
    {
        bail!("layer content does not match its diff id: expected {want}, got {digest}");
    }
    Ok((digest, stats))
}

/// Splits an entry path into safe components: no absolute paths, no `..`.
pub fn safe_components(path: &Path) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("absolute path {path:?} refused (layer paths must be relative)")
            }
            Component::ParentDir => bail!("path {path:?} refused: it contains '..'"),
        }
    }
    Ok(out)
}

fn errno_ctx(e: Errno, what: impl FnOnce() -> String) -> anyhow::Error {
    anyhow::Error::new(io::Error::from(e)).context(what())
}

/// Applies tar entries under one root directory without ever following a symlink.
struct LayerWriter {
    root: OwnedFd,
    /// The last parent directory used, by path (entries come grouped by directory).
    cached: Option<(Vec<OsString>, OwnedFd)>,
    /// Directory mtimes to set at the end (writing into a directory changes its mtime).
    dir_times: Vec<(Vec<OsString>, u64)>,
    buf: Vec<u8>,
    is_root: bool,
}

impl LayerWriter {
    fn open(dest: &Path) -> Result<LayerWriter> {
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno_ctx(e, || format!("opening {}", dest.display())))?;
        Ok(LayerWriter {
            root,
            cached: None,
            dir_times: Vec::new(),
            buf: vec![0; 128 * 1024],
            is_root: rustix::process::geteuid().is_root(),
        })
    }

    /// Opens the directory at `comps` below the root, creating missing ones when
    /// `create`, refusing symlinks and non-directories on the way.
    fn dir(&mut self, comps: &[OsString], create: bool) -> Result<OwnedFd> {
        if let Some((path, fd)) = &self.cached
            && path.as_slice() == comps
        {
            return Ok(fd.try_clone()?);
        }
        let mut fd = self.root.try_clone()?;
        for (i, c) in comps.iter().enumerate() {
            fd = match open_dir_at(&fd, c) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(errno_ctx(e, || {
                                format!("creating directory {:?}", join(&comps[..=i]))
                            }));
                        }
                    }
                    open_dir_at(&fd, c)
                        .map_err(|e| errno_ctx(e, || format!("opening {:?}", join(&comps[..=i]))))?
                }
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => bail!(
                    "refused: {:?} is a symlink or not a directory, and layer entries are never written through symlinks",
                    join(&comps[..=i])
                ),
                Err(e) => return Err(errno_ctx(e, || format!("opening {:?}", join(&comps[..=i])))),
            };
        }
        self.cached = Some((comps.to_vec(), fd.try_clone()?));
        Ok(fd)
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let path = entry.path().context("bad path")?.into_owned();
        let comps = safe_components(&path)?;
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);
        let xattrs = pax_xattrs(entry)?;

        let Some((name, parent)) = comps.split_last() else {
            // The layer root itself ("./").
            if kind.is_dir() {
                let root = self.root.try_clone()?;
                self.set_meta(&root, uid, gid, mode, None, &xattrs)?;
                self.dir_times.push((Vec::new(), mtime));
            }
            return Ok(());
        };
        let name_bytes = name.as_bytes();

        // Whiteouts become their overlay form.
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            let dir = self.dir(parent, true)?;
            if name_bytes == OPAQUE_MARKER.as_bytes() {
                rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|e| errno_ctx(e, || "marking directory opaque".into()))?;
            } else if name_bytes.starts_with(b".wh..wh.") {
                // Other AUFS metadata (.wh..wh.plnk, …): nothing to do for overlay.
            } else {
                let target = OsStr::from_bytes(&name_bytes[WHITEOUT_PREFIX.len()..]);
                if target.is_empty() {
                    bail!("empty whiteout name");
                }
                self.remove(&dir, target)?;
                rustix::fs::mknodat(
                    &dir,
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| {
                    errno_ctx(e, || "creating overlay whiteout (needs CAP_MKNOD)".into())
                })?;
            }
            return Ok(());
        }

        let dir = self.dir(parent, true)?;
        match kind {
            tar::EntryType::Directory => {
                match open_dir_at(&dir, name) {
                    Ok(_) => {}
                    Err(Errno::NOENT) => {}
                    Err(_) => self.remove(&dir, name)?,
                }
                match rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(errno_ctx(e, || "creating directory".into())),
                }
                let fd = open_dir_at(&dir, name)
                    .map_err(|e| errno_ctx(e, || "opening directory".into()))?;
                self.set_meta(&fd, uid, gid, mode, None, &xattrs)?;
                self.dir_times.push((comps.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = match rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    flags,
                    Mode::from_raw_mode(0o600),
                ) {
                    Err(Errno::EXIST) => {
                        self.remove(&dir, name)?;
                        rustix::fs::openat(
                            &dir,
                            name.as_os_str(),
                            flags,
                            Mode::from_raw_mode(0o600),
                        )
                    }
                    other => other,
                }
                .map_err(|e| errno_ctx(e, || "creating file".into()))?;
                let mut file = File::from(fd);
                loop {
                    let n = entry
                        .read(&mut self.buf)
                        .context("reading file data (truncated archive?)")?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n]).context("writing file")?;
                }
                self.set_meta(&file, uid, gid, mode, Some(mtime), &xattrs)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .context("bad symlink target")?
                    .ok_or_else(|| anyhow!("symlink without a target"))?
                    .into_owned();
                self.remove(&dir, name)?;
                rustix::fs::symlinkat(target.as_os_str(), &dir, name.as_os_str())
                    .map_err(|e| errno_ctx(e, || "creating symlink".into()))?;
                self.chown_entry(&dir, name, uid, gid)?;
                let ts = timestamps(mtime);
                let _ =
                    rustix::fs::utimensat(&dir, name.as_os_str(), &ts, AtFlags::SYMLINK_NOFOLLOW);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .context("bad hardlink target")?
                    .ok_or_else(|| anyhow!("hardlink without a target"))?
                    .into_owned();
                let tcomps = safe_components(&target).context("hardlink target")?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    bail!("hardlink to the layer root refused");
                };
                let tdir = match self.dir(tparent, false) {
                    Ok(d) => d,
                    Err(e) => {
                        return Err(
                            e.context(format!("hardlink target {target:?} is not in this layer"))
                        );
                    }
                };
                // The cache now points at the target's directory; reopen ours.
                let dir = self.dir(parent, true)?;
                self.remove(&dir, name)?;
                rustix::fs::linkat(
                    &tdir,
                    tname.as_os_str(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| {
                    errno_ctx(e, || {
                        format!("hardlink target {target:?} is not in this layer")
                    })
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (ft, dev) = match kind {
                    tar::EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if kind == tar::EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                self.remove(&dir, name)?;
                rustix::fs::mknodat(&dir, name.as_os_str(), ft, Mode::from_raw_mode(mode), dev)
                    .map_err(|e| errno_ctx(e, || "creating device node".into()))?;
                self.chown_entry(&dir, name, uid, gid)?;
            }
            other => bail!("unsupported tar entry type {other:?}"),
        }
        Ok(())
    }

    /// Gives a symlink or device node (not followed) its owner, when running as root.
    fn chown_entry(&self, dir: &impl AsFd, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
        if !self.is_root {
            return Ok(());
        }
        rustix::fs::chownat(
            dir,
            name,
            Some(uid_of(uid)),
            Some(gid_of(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| errno_ctx(e, || format!("setting the owner of {name:?}")))
    }

    /// Removes an existing entry, forgetting the cached directory (it may be inside).
    fn remove(&mut self, dir: &impl AsFd, name: &OsStr) -> Result<()> {
        self.cached = None;
        remove_existing(dir, name)
    }

    fn set_meta(
        &self,
        fd: &impl AsFd,
        uid: u32,
        gid: u32,
        mode: u32,
        mtime: Option<u64>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        if self.is_root {
            rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))
                .map_err(|e| errno_ctx(e, || "setting owner".into()))?;
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
            .map_err(|e| errno_ctx(e, || "setting mode".into()))?;
        for (key, value) in xattrs {
            match rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty()) {
                Ok(()) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
                Err(e) => return Err(errno_ctx(e, || format!("setting xattr {key}"))),
            }
        }
        if let Some(mtime) = mtime {
            rustix::fs::futimens(fd, &timestamps(mtime))
                .map_err(|e| errno_ctx(e, || "setting mtime".into()))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        // Deepest first is not needed: a directory's own mtime is not changed by
        // setting its children's times.
        let times = std::mem::take(&mut self.dir_times);
        for (comps, mtime) in times {
            // A directory replaced by a later entry is gone or no longer a directory.
            let Ok(fd) = self.dir(&comps, false) else {
                continue;
            };
            rustix::fs::futimens(&fd, &timestamps(mtime))
                .map_err(|e| errno_ctx(e, || "setting mtime".into()))?;
        }
        Ok(())
    }
}

fn uid_of(uid: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw_unchecked(uid)
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw_unchecked(gid)
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

fn open_dir_at(dir: &impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Removes whatever is at `name` in `dir` (a later tar entry replaces an earlier one).
fn remove_existing(dir: &impl AsFd, name: &OsStr) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            let sub =
                open_dir_at(dir, name).map_err(|e| errno_ctx(e, || format!("opening {name:?}")))?;
            remove_tree_at(&sub)?;
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
                .map_err(|e| errno_ctx(e, || format!("removing {name:?}")))
        }
        Err(e) => Err(errno_ctx(e, || format!("removing {name:?}"))),
    }
}

/// Empties the directory open as `dir` without following symlinks.
pub(crate) fn remove_tree_at(dir: &OwnedFd) -> Result<()> {
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(dir)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((OsStr::from_bytes(n).to_os_string(), ent.file_type()));
        }
    }
    for (name, ft) in names {
        if ft == FileType::Directory {
            let sub = open_dir_at(dir, &name)?;
            remove_tree_at(&sub)?;
            rustix::fs::unlinkat(dir, name.as_os_str(), AtFlags::REMOVEDIR)?;
        } else {
            remove_existing(dir, &name)?;
        }
    }
    Ok(())
}

/// `SCHILY.xattr.*` PAX records, minus the overlay ones a layer must not smuggle in.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().context("bad PAX header")? {
        for ext in exts {
            let ext = ext.context("bad PAX record")?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                && !name.starts_with("trusted.overlay.")
            {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
