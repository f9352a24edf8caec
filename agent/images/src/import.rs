//! Air-gapped import of image archives: oci-archive tars (skopeo, umoci, buildah,
//! `ctr export`) and docker-archive tars (`docker save`, legacy and OCI-layout flavours),
//! plain or gzip/zstd-compressed. Blobs are streamed into the blob store and verified;
//! if anything is wrong the blobs and layers this import added are removed again, so a
//! failed import leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::digest::Digest;
use crate::install::install;
use crate::manifest::{self, Descriptor, Document, Manifest, parse_document};
use crate::platform::Platform;
use crate::progress::Progress;
use crate::reference::Reference;
use crate::store::{ImageRecord, ImageStore};
use crate::unpack::{Compression, decompress, sniff};

/// Options of an import.
pub struct ImportOptions<'a> {
    /// Platform to pick from multi-platform archives.
    pub platform: Platform,
    /// Name for archives whose images carry no name (or to rename a single image).
    pub name: Option<String>,
    /// Pin the imported images (air-gap imports are pinned).
    pub pinned: bool,
    /// Progress reports.
    pub progress: Progress<'a>,
}

/// JSON files kept from the archive (index.json, manifest.json, docker configs).
const MAX_JSON: u64 = 16 << 20;

/// Imports every image of the archive at `path`.
pub fn import_archive(
    store: &ImageStore,
    path: &Path,
    opts: &ImportOptions<'_>,
) -> Result<Vec<ImageRecord>> {
    let _lock = store.lock_shared()?;
    let mut added = Vec::new();
    let result = import_inner(store, path, opts, &mut added);
    if result.is_err() {
        // Remove blobs this import brought in; images already in the store keep theirs.
        let referenced = referenced_blobs(store);
        for d in added {
            if !referenced.contains(&d) {
                let _ = store.content().delete(&d);
            }
        }
    }
    result.with_context(|| format!("importing {}", path.display()))
}

fn referenced_blobs(store: &ImageStore) -> std::collections::BTreeSet<Digest> {
    let mut out = std::collections::BTreeSet::new();
    for rec in store.list().unwrap_or_default() {
        out.insert(rec.source_digest.clone());
        out.insert(rec.manifest.clone());
        out.insert(rec.config.clone());
        if let Ok(m) = store.manifest(&rec.manifest) {
            out.extend(m.layers.into_iter().map(|l| l.digest));
        }
    }
    out
}

/// What the archive held.
#[derive(Default)]
struct Contents {
    /// Archive path → digest of the blob it was stored as.
    blobs: BTreeMap<String, Digest>,
    /// Small metadata files by archive path.
    json: BTreeMap<String, Vec<u8>>,
}

fn import_inner(
    store: &ImageStore,
    path: &Path,
    opts: &ImportOptions<'_>,
    added: &mut Vec<Digest>,
) -> Result<Vec<ImageRecord>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let contents = read_archive(store, file, added)?;
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split('.').next().unwrap_or(n).to_string())
        .unwrap_or_else(|| "image".into());
    let images: Vec<(Vec<String>, Digest, Digest)> = if let Some(m) =
        contents.json.get("manifest.json")
    {
        docker_images(store, &contents, m, opts, added)?
    } else if let Some(i) = contents.json.get("index.json") {
        oci_images(store, &contents, i, opts, &stem)?
    } else {
        bail!(
            "not an image archive: it has neither index.json (oci-archive) nor manifest.json (docker-archive)"
        );
    };
    if images.is_empty() {
        bail!("the archive contains no images");
    }
    let mut out = Vec::new();
    for (names, manifest, source) in images {
        out.extend(install(
            store,
            &names,
            &manifest,
            &source,
            opts.pinned,
            opts.progress,
        )?);
    }
    Ok(out)
}

/// Streams the archive: blobs into the store (verified), metadata into memory.
fn read_archive(store: &ImageStore, file: File, added: &mut Vec<Digest>) -> Result<Contents> {
    let mut archive = tar::Archive::new(decompress(file)?);
    let mut contents = Contents::default();
    for entry in archive.entries().context("not a tar archive")? {
        let mut entry = entry.context("reading archive (truncated or corrupt?)")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry.path().context("bad path in archive")?.into_owned();
        let name = clean(&raw)?;
        let size = entry.size();
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let digest = Digest::from_hex(hex).map_err(|e| anyhow!("archive entry {name}: {e}"))?;
            let existed = store.content().has(&digest);
            store
                .content()
                .put_reader(&mut entry, Some(&digest), Some(size))
                .with_context(|| format!("archive entry {name}"))?;
            if !existed {
                added.push(digest.clone());
            }
            contents.blobs.insert(name, digest);
        } else if name.ends_with(".json") || name == "oci-layout" || name == "repositories" {
            if size > MAX_JSON {
                bail!("archive entry {name} is too large for metadata ({size} bytes)");
            }
            let mut buf = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {name}"))?;
            contents.json.insert(name, buf);
        } else if name.ends_with(".tar") || name.ends_with("/layer.tar") {
            // Legacy docker-archive layer: an uncompressed tar stored as a blob.
            let (digest, _) = store
                .content()
                .put_reader(&mut entry, None, Some(size))
                .with_context(|| format!("archive entry {name}"))?;
            if !added.contains(&digest) {
                added.push(digest.clone());
            }
            contents.blobs.insert(name, digest);
        }
    }
    Ok(contents)
}

/// Normalises an archive path; archives naming paths outside themselves are malformed.
fn clean(p: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => parts.push(
                n.to_str()
                    .ok_or_else(|| anyhow!("non-UTF-8 path {p:?} in archive"))?,
            ),
            Component::CurDir => {}
            _ => bail!("archive entry {p:?} has an absolute or '..' path"),
        }
    }
    Ok(parts.join("/"))
}

fn oci_images(
    store: &ImageStore,
    contents: &Contents,
    index: &[u8],
    opts: &ImportOptions<'_>,
    stem: &str,
) -> Result<Vec<(Vec<String>, Digest, Digest)>> {
    let Document::Index(index) =
        parse_document(index, Some(manifest::OCI_INDEX)).context("index.json")?
    else {
        bail!("index.json is not an image index");
    };
    let mut out = Vec::new();
    let single = index.manifests.len() == 1;
    for desc in &index.manifests {
        let annotations = desc.annotations.clone().unwrap_or_default();
        let name = match (
            &opts.name,
            annotations.get("io.containerd.image.name"),
            annotations.get("org.opencontainers.image.ref.name"),
        ) {
            (Some(n), _, _) if single => n.clone(),
            (_, Some(full), _) => full.clone(),
            (_, None, Some(r)) if r.contains('/') || (r.contains(':') && !r.starts_with(':')) => {
                r.clone()
            }
            (_, None, Some(tag)) => format!("localhost/{}:{tag}", sanitize(stem)),
            (_, None, None) => match &opts.name {
                Some(n) => n.clone(),
                None => bail!("an image in the archive has no name; give one with --name"),
            },
        };
        let name = normalise_name(&name)?;
        let manifest = resolve_manifest(store, contents, desc, &opts.platform)?;
        out.push((vec![name], manifest, desc.digest.clone()));
    }
    Ok(out)
}

/// Follows an index entry down to a manifest for `platform`, all inside the archive.
fn resolve_manifest(
    store: &ImageStore,
    contents: &Contents,
    desc: &Descriptor,
    platform: &Platform,
) -> Result<Digest> {
    let mut digest = desc.digest.clone();
    for _ in 0..4 {
        if !contents.blobs.values().any(|d| *d == digest) && !store.content().has(&digest) {
            bail!("the archive lacks blob {digest} that its index refers to");
        }
        match parse_document(&store.content().read_blob(&digest)?, None)? {
            Document::Manifest(_) => return Ok(digest),
            Document::Index(idx) => digest = idx.select(platform)?.digest.clone(),
        }
    }
    bail!("image index nesting too deep")
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn docker_images(
    store: &ImageStore,
    contents: &Contents,
    manifest_json: &[u8],
    opts: &ImportOptions<'_>,
    added: &mut Vec<Digest>,
) -> Result<Vec<(Vec<String>, Digest, Digest)>> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(manifest_json)
        .context("manifest.json of the docker archive is malformed")?;
    let mut out = Vec::new();
    let single = entries.len() == 1;
    for e in entries {
        let config = match contents.blobs.get(&e.config) {
            Some(d) => d.clone(),
            None => {
                let bytes = contents
                    .json
                    .get(&e.config)
                    .ok_or_else(|| anyhow!("the archive lacks the image config {}", e.config))?;
                let d = store.content().put_bytes(bytes, None)?;
                added.push(d.clone());
                d
            }
        };
        let config_bytes = store.content().read_blob(&config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let digest = contents
                .blobs
                .get(l)
                .ok_or_else(|| anyhow!("the archive lacks layer {l} named in manifest.json"))?;
            let mut head = [0u8; 4];
            let n = store.content().open_blob(digest)?.read(&mut head)?;
            let media_type = match sniff(&head[..n]) {
                Compression::None => manifest::OCI_LAYER_TAR.to_string(),
                Compression::Gzip => format!("{}+gzip", manifest::OCI_LAYER_TAR),
                Compression::Zstd => format!("{}+zstd", manifest::OCI_LAYER_TAR),
            };
            layers.push(Descriptor {
                media_type,
                digest: digest.clone(),
                size: store.content().size(digest).unwrap_or(0),
                platform: None,
                annotations: None,
            });
        }
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: config.clone(),
                size: config_bytes.len() as u64,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let manifest_digest = store.content().put_bytes(&serde_json::to_vec(&m)?, None)?;
        added.push(manifest_digest.clone());
        let names: Vec<String> = match (&opts.name, e.repo_tags) {
            (Some(n), _) if single => vec![normalise_name(n)?],
            (_, Some(tags)) if !tags.is_empty() => tags
                .iter()
                .map(|t| normalise_name(t))
                .collect::<Result<_>>()?,
            (Some(n), _) => vec![normalise_name(n)?],
            _ => bail!("an image in the archive has no RepoTags; give it a name with --name"),
        };
        out.push((names, manifest_digest.clone(), manifest_digest));
    }
    Ok(out)
}

fn normalise_name(name: &str) -> Result<String> {
    Ok(name.parse::<Reference>()?.to_string())
}

fn sanitize(stem: &str) -> String {
    let s: String = stem
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "image".into() } else { s }
}

/// Imports every archive in `dir` (the air-gap images folder, `<data-dir>/images`),
/// pinning what it imports. Archives already imported unchanged (same size and
/// modification time) are skipped. Returns per-archive results.
pub fn import_folder(
    store: &ImageStore,
    dir: &Path,
    progress: Progress<'_>,
) -> Result<Vec<(std::path::PathBuf, Result<Vec<ImageRecord>>)>> {
    let mut out = Vec::new();
    let Ok(read) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let seen_path = store.data_dir().join("airgap-imported.json");
    let mut seen: BTreeMap<String, String> = std::fs::read(&seen_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut paths: Vec<_> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for p in paths {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !(name.ends_with(".tar")
            || name.ends_with(".tar.gz")
            || name.ends_with(".tgz")
            || name.ends_with(".tar.zst"))
        {
            continue;
        }
        let stamp = std::fs::metadata(&p)
            .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
            .unwrap_or_default();
        if seen.get(&name) == Some(&stamp) {
            continue;
        }
        let opts = ImportOptions {
            platform: Platform::host(),
            name: None,
            pinned: true,
            progress,
        };
        let r = import_archive(store, &p, &opts);
        if r.is_ok() {
            seen.insert(name, stamp);
            crate::content::write_atomic(&seen_path, &serde_json::to_vec_pretty(&seen)?)?;
        }
        out.push((p, r));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
