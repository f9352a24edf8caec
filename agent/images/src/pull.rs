//! Pulling an image from a registry: resolves the reference through the configured
//! mirrors and the registry itself, picks the platform from an index or manifest list,
//! downloads the config and layers in parallel (resuming partial blobs), then installs
//! the image (unpack and name) only when every blob is verified.

use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};

use crate::client::{ClientOptions, NotFound, RegistryClient};
use crate::digest::Digest;
use crate::install::install;
use crate::manifest::{Document, Manifest, parse_document};
use crate::platform::Platform;
use crate::progress::{Event, Progress};
use crate::reference::Reference;
use crate::registries::RegistriesConfig;
use crate::store::{ImageRecord, ImageStore};

/// Options of a pull.
pub struct PullOptions<'a> {
    /// Platform to pick from an index.
    pub platform: Platform,
    /// Mirrors, credentials, TLS.
    pub registries: RegistriesConfig,
    /// Pin the image against prune.
    pub pinned: bool,
    /// Blobs downloaded at once.
    pub parallel: usize,
    /// Retries, backoff, bandwidth limit.
    pub client: ClientOptions,
    /// Progress reports.
    pub progress: Progress<'a>,
}

/// Pulls `image` into the store and returns its record.
pub fn pull(store: &ImageStore, image: &str, opts: &PullOptions<'_>) -> Result<ImageRecord> {
    let reference: Reference = image.parse()?;
    let _lock = store.lock_shared()?;
    let endpoints = opts
        .registries
        .endpoints(&reference.registry, reference.api_host());
    let mut errors = Vec::new();
    let count = endpoints.len();
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let base = endpoint.base.clone();
        let client = RegistryClient::new(endpoint, &reference.repository, opts.client.clone());
        match pull_from(store, &client, &reference, opts) {
            Ok(r) => return Ok(r),
            Err(e) if count == 1 => return Err(e.context(format!("pulling {reference}"))),
            Err(e) => {
                let last = i + 1 == count;
                errors.push(format!("{base}: {e:#}"));
                if last {
                    break;
                }
            }
        }
    }
    bail!(
        "pulling {reference} failed at every endpoint: {}",
        errors.join("; ")
    )
}

fn pull_from(
    store: &ImageStore,
    client: &RegistryClient,
    reference: &Reference,
    opts: &PullOptions<'_>,
) -> Result<ImageRecord> {
    let progress = opts.progress;
    let (bytes, source_digest, ctype) = client.manifest(&reference.manifest_ref(), progress)?;
    store.content().put_bytes(&bytes, Some(&source_digest))?;
    let (manifest_digest, manifest) = match parse_document(&bytes, ctype.as_deref())? {
        Document::Manifest(m) => (source_digest.clone(), m),
        Document::Index(index) => {
            let entry = index
                .select(&opts.platform)
                .with_context(|| format!("image {reference}"))?;
            let (bytes, digest, ctype) = client.manifest(&entry.digest.to_string(), progress)?;
            let Document::Manifest(m) = parse_document(&bytes, ctype.as_deref())? else {
                bail!(
                    "index entry {} for {} is itself an index",
                    entry.digest,
                    opts.platform
                );
            };
            store.content().put_bytes(&bytes, Some(&digest))?;
            (digest, m)
        }
    };
    check_platform(store, client, &manifest, opts, progress)?;
    progress(&Event::Resolved {
        name: reference.to_string(),
        manifest: manifest_digest.clone(),
        layers: manifest.layers.len(),
        total_bytes: manifest.layers.iter().map(|l| l.size).sum(),
    });
    let blobs: Vec<(Digest, u64)> = manifest
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    let config = store.config(&manifest.config.digest)?;
    if config.rootfs.diff_ids.len() != blobs.len() {
        bail!(
            "image {manifest_digest} is inconsistent: {} layers in the manifest but {} diff ids in the config",
            blobs.len(),
            config.rootfs.diff_ids.len()
        );
    }
    // Layers unpacked by this pull are removed again if it fails; verified blobs stay
    // as a cache for the next attempt (prune removes them).
    let created = Mutex::new(Vec::new());
    let result = download_all(
        store,
        client,
        &blobs,
        &config.rootfs.diff_ids,
        opts.parallel.max(1),
        &created,
        progress,
    )
    .and_then(|()| {
        install(
            store,
            &[reference.to_string()],
            &manifest_digest,
            &source_digest,
            opts.pinned,
            progress,
        )
    });
    match result {
        Ok(records) => records
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no record written")),
        Err(e) => {
            for d in created.into_inner().unwrap() {
                let _ = std::fs::remove_dir_all(store.layer_dir(&d));
            }
            Err(e)
        }
    }
}

/// Fetches the config and refuses images built for another platform (a single-platform
/// manifest gives no choice, but running an arm64 image on amd64 would only fail later).
fn check_platform(
    store: &ImageStore,
    client: &RegistryClient,
    m: &Manifest,
    opts: &PullOptions<'_>,
    progress: Progress<'_>,
) -> Result<()> {
    client.fetch_blob(store.content(), &m.config.digest, m.config.size, progress)?;
    let cfg = store.config(&m.config.digest)?;
    if cfg.os.is_empty() || cfg.architecture.is_empty() {
        return Ok(());
    }
    let image = Platform {
        os: cfg.os.clone(),
        architecture: cfg.architecture.clone(),
        variant: cfg.variant.clone().unwrap_or_default(),
    };
    if opts.platform.score(&image).is_none() {
        bail!("image is for {image}, not {}", opts.platform);
    }
    Ok(())
}

/// Downloads the layers on `parallel` threads; each layer is unpacked as soon as it is
/// complete, so unpacking overlaps the remaining downloads.
fn download_all(
    store: &ImageStore,
    client: &RegistryClient,
    blobs: &[(Digest, u64)],
    diff_ids: &[Digest],
    parallel: usize,
    created: &Mutex<Vec<Digest>>,
    progress: Progress<'_>,
) -> Result<()> {
    crate::parallel::for_each(blobs.len(), parallel, |i| {
        let (digest, size) = &blobs[i];
        client.fetch_blob(store.content(), digest, *size, progress)?;
        let fresh = store.ensure_layer(digest, &diff_ids[i])?;
        if fresh {
            created.lock().unwrap().push(diff_ids[i].clone());
        }
        progress(&Event::Unpacked {
            diff_id: diff_ids[i].clone(),
            fresh,
        });
        Ok(())
    })
}

/// True when `err` says the image does not exist at the registry.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<NotFound>())
}
