//! The image store under the agent's data dir: ties the blob store (`content/`), the
//! image references, the unpacked layers (`layers/sha256/<diff id hex>`, shared by
//! every image that has the layer) and the container snapshots (`snapshots/<id>`).
//!
//! References live in `images.json`, a small JSON file replaced atomically (write,
//! fsync, rename) under an exclusive lock — simpler than redb for a list this small and
//! easy for an operator to read. Pulls and imports hold a shared lock on `store.lock`
//! for their whole run; garbage collection (rm, prune) takes it exclusively, so it never
//! deletes what a running pull has just fetched.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::content::{ContentStore, write_atomic};
use crate::digest::Digest;
use crate::manifest::{Document, ImageConfig, Manifest, parse_document};
use crate::reference::Reference;
use crate::unpack;

/// Default data dir of the agent.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/flotilla/agent";

/// One named image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Canonical reference, e.g. `docker.io/library/busybox:1.36`.
    pub name: String,
    /// Digest of the platform-specific manifest.
    pub manifest: Digest,
    /// Digest the name resolved to at the source (an index, or the manifest itself).
    pub source_digest: Digest,
    /// Digest of the image config (the image id).
    pub config: Digest,
    /// Uncompressed layer digests, base first.
    pub diff_ids: Vec<Digest>,
    /// Compressed size of the layers.
    pub size: u64,
    /// Pinned images are never removed by prune.
    #[serde(default)]
    pub pinned: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct RefsFile {
    version: u32,
    images: BTreeMap<String, ImageRecord>,
}

/// The image store.
#[derive(Clone, Debug)]
pub struct ImageStore {
    data_dir: PathBuf,
    content: ContentStore,
}

/// A held `flock`, released on drop.
pub struct StoreLock {
    _file: File,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    /// Opens (creating) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<ImageStore> {
        for d in ["layers/sha256", "layers/tmp", "snapshots"] {
            fs::create_dir_all(data_dir.join(d))
                .with_context(|| format!("creating {}", data_dir.join(d).display()))?;
        }
        Ok(ImageStore {
            data_dir: data_dir.to_path_buf(),
            content: ContentStore::open(&data_dir.join("content"))?,
        })
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The blob store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    fn lock(&self, file: &str, op: FlockOperation) -> Result<StoreLock> {
        let path = self.data_dir.join(file);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        rustix::fs::flock(&f, op).with_context(|| format!("locking {}", path.display()))?;
        Ok(StoreLock { _file: f })
    }

    /// Shared lock held by pulls and imports while they add content.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock("store.lock", FlockOperation::LockShared)
    }

    /// Exclusive lock held by garbage collection.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock("store.lock", FlockOperation::LockExclusive)
    }

    fn read_refs(&self) -> Result<RefsFile> {
        let path = self.data_dir.join("images.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is corrupt", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RefsFile {
                version: 1,
                ..Default::default()
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn update_refs<T>(&self, f: impl FnOnce(&mut RefsFile) -> Result<T>) -> Result<T> {
        let _guard = self.lock("images.lock", FlockOperation::LockExclusive)?;
        let mut refs = self.read_refs()?;
        let out = f(&mut refs)?;
        refs.version = 1;
        write_atomic(
            &self.data_dir.join("images.json"),
            &serde_json::to_vec_pretty(&refs)?,
        )?;
        Ok(out)
    }

    /// Every image, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.read_refs()?.images.into_values().collect())
    }

    /// Records (or replaces) a named image.
    pub fn put(&self, record: ImageRecord) -> Result<()> {
        self.update_refs(|refs| {
            refs.images.insert(record.name.clone(), record);
            Ok(())
        })
    }

    /// Sets or clears the pin of an image.
    pub fn set_pinned(&self, what: &str, pinned: bool) -> Result<ImageRecord> {
        let name = self.resolve(what)?.name;
        self.update_refs(|refs| {
            let r = refs.images.get_mut(&name).context("image vanished")?;
            r.pinned = pinned;
            Ok(r.clone())
        })
    }

    /// Finds an image by reference (`busybox`, `docker.io/library/busybox:latest`,
    /// `name@sha256:…`), by manifest or config digest, or by a digest prefix of 12+ hex.
    pub fn resolve(&self, what: &str) -> Result<ImageRecord> {
        let images = self.read_refs()?.images;
        if let Ok(r) = what.parse::<Reference>() {
            if let Some(rec) = images.get(&r.to_string()) {
                return Ok(rec.clone());
            }
            if let Some(d) = &r.digest
                && let Some(rec) = images
                    .values()
                    .find(|i| {
                        i.name.starts_with(&format!("{}:", r.name()))
                            || i.name.starts_with(&format!("{}@", r.name()))
                    })
                    .filter(|i| &i.manifest == d || &i.source_digest == d)
            {
                return Ok(rec.clone());
            }
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = images
                .values()
                .filter(|i| {
                    [&i.manifest, &i.config, &i.source_digest]
                        .iter()
                        .any(|d| d.hex().starts_with(hex))
                })
                .collect();
            if let Some(first) = hits.first() {
                return Ok((*first).clone());
            }
        }
        bail!("image {what:?} not found in the store (see `flotilla-agent image ls`)")
    }

    /// Reads and parses the manifest of an image.
    pub fn manifest(&self, digest: &Digest) -> Result<Manifest> {
        match parse_document(&self.content.read_blob(digest)?, None)? {
            Document::Manifest(m) => Ok(m),
            Document::Index(_) => bail!("{digest} is an index, not an image manifest"),
        }
    }

    /// Reads and parses an image config.
    pub fn config(&self, digest: &Digest) -> Result<ImageConfig> {
        ImageConfig::parse(&self.content.read_blob(digest)?)
    }

    /// The directory of an unpacked layer.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.data_dir.join("layers/sha256").join(diff_id.hex())
    }

    /// Unpacks layer blob `blob` as `diff_id` unless that layer is already unpacked.
    /// The layer appears under `layers/` only once complete (atomic rename).
    pub fn ensure_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<bool> {
        let dest = self.layer_dir(diff_id);
        if dest.is_dir() {
            return Ok(false);
        }
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.data_dir.join("layers/tmp").join(format!(
            "{}-{}-{n}",
            diff_id.hex(),
            std::process::id()
        ));
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let result = (|| {
            let file = self.content.open_blob(blob)?;
            unpack::unpack_layer(file, &tmp, Some(diff_id))
                .with_context(|| format!("unpacking layer {diff_id}"))?;
            // The layer's files reach the disk before the rename marks it complete:
            // a power cut (common on small boards) never leaves a layer that looks
            // whole but holds truncated files.
            let dir = File::open(&tmp)?;
            rustix::fs::syncfs(&dir).context("syncing the unpacked layer")?;
            match fs::rename(&tmp, &dest) {
                Ok(()) => Ok(true),
                // Someone else finished the same layer first.
                Err(_) if dest.is_dir() => Ok(false),
                Err(e) => Err(e).with_context(|| format!("moving layer into {}", dest.display())),
            }
        })();
        if tmp.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Image manifests used by container snapshots (kept by prune and rm).
    pub fn snapshot_images(&self) -> Result<BTreeMap<String, Digest>> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(self.data_dir.join("snapshots"))? {
            let entry = entry?;
            if let Ok(s) = fs::read_to_string(entry.path().join("image"))
                && let Ok(d) = s.trim().parse::<Digest>()
            {
                out.insert(entry.file_name().to_string_lossy().into_owned(), d);
            }
        }
        Ok(out)
    }

    /// Removes an image's name. Refuses images a container uses, and pinned ones,
    /// unless `force`. Content no longer referenced is then collected.
    pub fn remove(&self, what: &str, force: bool) -> Result<(ImageRecord, GcStats)> {
        let _lock = self.lock_exclusive()?;
        let rec = self.resolve(what)?;
        if !force {
            if rec.pinned {
                bail!("image {} is pinned; unpin it or use --force", rec.name);
            }
            let users: Vec<String> = self
                .snapshot_images()?
                .into_iter()
                .filter(|(_, d)| *d == rec.manifest)
                .map(|(id, _)| id)
                .collect();
            if !users.is_empty() {
                bail!(
                    "image {} is used by container(s) {}; use --force",
                    rec.name,
                    users.join(", ")
                );
            }
        }
        self.update_refs(|refs| {
            refs.images.remove(&rec.name);
            Ok(())
        })?;
        let stats = self.collect_garbage_locked()?;
        Ok((rec, stats))
    }

    /// Removes every image no container uses and that is not pinned, then collects
    /// unreferenced blobs, layers and partial downloads.
    pub fn prune(&self) -> Result<(Vec<String>, GcStats)> {
        let _lock = self.lock_exclusive()?;
        let used: BTreeSet<Digest> = self.snapshot_images()?.into_values().collect();
        let removed = self.update_refs(|refs| {
            let doomed: Vec<String> = refs
                .images
                .values()
                .filter(|r| !r.pinned && !used.contains(&r.manifest))
                .map(|r| r.name.clone())
                .collect();
            for n in &doomed {
                refs.images.remove(n);
            }
            Ok(doomed)
        })?;
        let stats = self.collect_garbage_locked()?;
        Ok((removed, stats))
    }

    /// Deletes blobs and layers that no image and no snapshot reaches. The caller holds
    /// the exclusive lock.
    fn collect_garbage_locked(&self) -> Result<GcStats> {
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        let mut manifests: Vec<Digest> = self.snapshot_images()?.into_values().collect();
        for rec in self.list()? {
            keep_blobs.insert(rec.source_digest.clone());
            manifests.push(rec.manifest.clone());
        }
        for m in manifests {
            keep_blobs.insert(m.clone());
            let Ok(man) = self.manifest(&m) else { continue };
            keep_blobs.insert(man.config.digest.clone());
            for l in &man.layers {
                keep_blobs.insert(l.digest.clone());
            }
            if let Ok(cfg) = self.config(&man.config.digest) {
                keep_layers.extend(cfg.rootfs.diff_ids);
            }
        }
        let mut stats = GcStats::default();
        for blob in self.content.list()? {
            if !keep_blobs.contains(&blob) {
                stats.bytes += self.content.size(&blob).unwrap_or(0);
                self.content.delete(&blob)?;
                stats.blobs += 1;
            }
        }
        for entry in fs::read_dir(self.data_dir.join("layers/sha256"))? {
            let entry = entry?;
            let keep = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                .is_some_and(|d| keep_layers.contains(&d));
            if !keep {
                fs::remove_dir_all(entry.path())?;
                stats.layers += 1;
            }
        }
        for entry in fs::read_dir(self.data_dir.join("layers/tmp"))? {
            fs::remove_dir_all(entry?.path())?;
        }
        stats.partials = self.content.clear_ingest()?;
        Ok(stats)
    }
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcStats {
    /// Blobs deleted.
    pub blobs: u64,
    /// Bytes of blobs deleted.
    pub bytes: u64,
    /// Unpacked layers deleted.
    pub layers: u64,
    /// Partial downloads and temporaries deleted.
    pub partials: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::install;

    /// Stores an image without layers under `name`.
    fn add_image(store: &ImageStore, name: &str, tag: &str) -> ImageRecord {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"tag":"{tag}"}}"#
        );
        let cd = store.content().put_bytes(config.as_bytes(), None).unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cd}","size":{}}},"layers":[]}}"#,
            crate::manifest::OCI_MANIFEST,
            crate::manifest::OCI_CONFIG,
            config.len()
        );
        let md = store
            .content()
            .put_bytes(manifest.as_bytes(), None)
            .unwrap();
        install(
            store,
            &[name.to_string()],
            &md,
            &md,
            false,
            &crate::progress::silent,
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn resolves_names_digests_and_id_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let rec = add_image(&store, "docker.io/library/busybox:1.36", "a");
        assert_eq!(store.resolve("busybox:1.36").unwrap(), rec);
        assert_eq!(
            store.resolve("docker.io/library/busybox:1.36").unwrap(),
            rec
        );
        assert_eq!(
            store.resolve(&format!("busybox@{}", rec.manifest)).unwrap(),
            rec
        );
        assert_eq!(store.resolve(&rec.config.to_string()).unwrap(), rec);
        assert_eq!(store.resolve(&rec.config.hex()[..12]).unwrap(), rec);
        let err = store.resolve("busybox:1.37").unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        assert!(store.resolve("abc").is_err());
    }

    #[test]
    fn rm_refuses_pinned_and_used_images_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let rec = add_image(&store, "example.com/app:1", "a");
        add_image(&store, "example.com/other:1", "b");
        store.set_pinned("example.com/app:1", true).unwrap();
        let err = store.remove("example.com/app:1", false).unwrap_err();
        assert!(err.to_string().contains("pinned"), "{err}");
        store.set_pinned("example.com/app:1", false).unwrap();

        let snap = dir.path().join("snapshots/c1");
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join("image"), rec.manifest.to_string()).unwrap();
        let err = store.remove("example.com/app:1", false).unwrap_err();
        assert!(err.to_string().contains("used by container(s) c1"), "{err}");
        // Prune keeps the used image and removes the unused one.
        let (removed, _) = store.prune().unwrap();
        assert_eq!(removed, vec!["example.com/other:1".to_string()]);
        assert!(store.content().has(&rec.manifest));
        // Forced removal drops the name; the snapshot still keeps its content.
        store.remove("example.com/app:1", true).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(store.content().has(&rec.manifest) && store.content().has(&rec.config));
        fs::remove_dir_all(&snap).unwrap();
        store.prune().unwrap();
        assert!(store.content().list().unwrap().is_empty());
    }
}
