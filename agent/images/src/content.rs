//! The content-addressed blob store under `<data-dir>/content`: `blobs/sha256/<hex>` holds
//! only complete, verified blobs; `ingest/` holds partial downloads (resumable) and
//! temporary files. A blob appears under `blobs/` only by an atomic rename after its
//! sha256 was checked and its data synced, so a crash never leaves a half-written blob
//! that looks complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

use crate::digest::{Digest, Hasher, HashingWriter};

/// The blob store.
#[derive(Clone, Debug)]
pub struct ContentStore {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating if needed) the store at `root` (`<data-dir>/content`).
    pub fn open(root: &Path) -> Result<ContentStore> {
        for dir in ["blobs/sha256", "ingest"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(ContentStore {
            root: root.to_path_buf(),
        })
    }

    /// Where the blob with `digest` lives once complete.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Where a partial download of `digest` is kept between attempts.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}.partial", digest.hex()))
    }

    /// True when the complete blob is present.
    pub fn has(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a complete blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        File::open(self.blob_path(digest))
            .with_context(|| format!("blob {digest} is not in the store"))
    }

    /// Reads a complete (small) blob into memory, checking its digest again.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_blob(digest)?.read_to_end(&mut data)?;
        if Digest::of(&data) != *digest {
            bail!("blob {digest} in the store is corrupt (its content does not match its digest)");
        }
        Ok(data)
    }

    /// Size of a complete blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest)).ok().map(|m| m.len())
    }

    /// Stores `bytes`, which must hash to `expected` when given. Returns the digest.
    pub fn put_bytes(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        self.put_reader(bytes, expected, None).map(|(d, _)| d)
    }

    /// Streams `reader` into the store, verifying it against `expected` (and
    /// `expected_size`) when given. Returns the digest and the size.
    pub fn put_reader(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        if let Some(d) = expected
            && self.has(d)
        {
            // Already complete: consume nothing more, the content is addressed by digest.
            return Ok((d.clone(), self.size(d).unwrap_or(0)));
        }
        let tmp = self.temp_path();
        let result = (|| {
            let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut w = HashingWriter::with_hasher(
                io::BufWriter::with_capacity(256 * 1024, file),
                Hasher::new(),
            );
            io::copy(&mut { reader }, &mut w).context("writing blob")?;
            let (buf, hasher) = w.into_parts();
            let size = hasher.len();
            let digest = hasher.finish();
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            check(&digest, size, expected, expected_size)?;
            self.commit_file(file, &tmp, &digest)?;
            Ok((digest, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Opens the partial download of `digest` for appending, returning it with the hash
    /// state of the bytes it already holds (zero bytes for a fresh download).
    pub fn open_partial(&self, digest: &Digest) -> Result<(File, Hasher)> {
        let path = self.partial_path(digest);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.seek(io::SeekFrom::End(0))?;
        Ok((file, hasher))
    }

    /// Throws away a partial download (after a digest mismatch).
    pub fn discard_partial(&self, digest: &Digest) {
        let _ = fs::remove_file(self.partial_path(digest));
    }

    /// Turns a finished partial download into a blob, verifying its digest and size.
    pub fn commit_partial(
        &self,
        file: File,
        hasher: Hasher,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<()> {
        let len = hasher.len();
        let got = hasher.finish();
        let path = self.partial_path(digest);
        if let Err(e) = check(&got, len, Some(digest), size) {
            self.discard_partial(digest);
            return Err(e);
        }
        self.commit_file(file, &path, digest)
    }

    fn commit_file(&self, file: File, from: &Path, digest: &Digest) -> Result<()> {
        file.sync_data().context("syncing blob")?;
        drop(file);
        let dest = self.blob_path(digest);
        fs::rename(from, &dest).with_context(|| format!("moving blob into {}", dest.display()))?;
        Ok(())
    }

    /// Deletes a blob (missing is fine).
    pub fn delete(&self, digest: &Digest) -> Result<()> {
        match fs::remove_file(self.blob_path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every complete blob.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join("blobs/sha256"))? {
            let name = entry?.file_name();
            if let Some(d) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Removes everything in `ingest/` (partial downloads and temporaries).
    pub fn clear_ingest(&self) -> Result<u64> {
        let mut n = 0;
        for entry in fs::read_dir(self.root.join("ingest"))? {
            fs::remove_file(entry?.path())?;
            n += 1;
        }
        Ok(n)
    }

    /// A fresh temporary file name in `ingest/`.
    pub fn temp_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("ingest")
            .join(format!("tmp-{}-{n}", std::process::id()))
    }
}

fn check(
    got: &Digest,
    len: u64,
    expected: Option<&Digest>,
    expected_size: Option<u64>,
) -> Result<()> {
    if let Some(want) = expected
        && want != got
    {
        bail!(
            "digest mismatch: expected {want}, content hashes to {got} ({len} bytes); refusing it"
        );
    }
    if let Some(size) = expected_size
        && size != len
    {
        bail!("size mismatch for {got}: expected {size} bytes, got {len}");
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_verifies_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = cs.put_bytes(b"hello", None).unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(cs.has(&d));
        assert_eq!(cs.read_blob(&d).unwrap(), b"hello");
        assert_eq!(cs.list().unwrap(), vec![d.clone()]);
        // Storing it again with the digest known is a no-op.
        cs.put_bytes(b"hello", Some(&d)).unwrap();
    }

    #[test]
    fn wrong_digest_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let want = Digest::of(b"good");
        let err = cs.put_bytes(b"evil", Some(&want)).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!cs.has(&want));
        assert!(cs.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn corrupted_blob_on_disk_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = cs.put_bytes(b"payload", None).unwrap();
        fs::write(cs.blob_path(&d), b"tampered").unwrap();
        let err = cs.read_blob(&d).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn partial_downloads_resume_with_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let data = b"0123456789abcdef";
        let d = Digest::of(data);
        {
            let (mut f, h) = cs.open_partial(&d).unwrap();
            assert!(h.is_empty());
            f.write_all(&data[..7]).unwrap();
        }
        let (f, h) = cs.open_partial(&d).unwrap();
        assert_eq!(h.len(), 7);
        let mut w = HashingWriter::with_hasher(f, h);
        w.write_all(&data[7..]).unwrap();
        let (f, h) = w.into_parts();
        cs.commit_partial(f, h, &d, Some(data.len() as u64))
            .unwrap();
        assert_eq!(cs.read_blob(&d).unwrap(), data);
        assert!(!cs.partial_path(&d).exists());
    }

    #[test]
    fn corrupt_partial_download_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"expected");
        let (mut f, _) = cs.open_partial(&d).unwrap();
        f.write_all(b"garbage!").unwrap();
        let (f, h) = cs.open_partial(&d).unwrap();
        let err = cs.commit_partial(f, h, &d, None).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!cs.partial_path(&d).exists());
        assert!(!cs.has(&d));
    }
}
