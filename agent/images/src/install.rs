//! Installing an image whose blobs are in the blob store: checks the manifest and
//! config agree, unpacks the layers in parallel (each into its own shared layer dir),
//! and only then records the image's names, so a failure leaves no half-installed image.

use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use crate::digest::Digest;
use crate::progress::{Event, Progress};
use crate::store::{ImageRecord, ImageStore};

/// Unpacks and names the image whose manifest `manifest` is in the store.
/// `source` is the digest the name resolved to (an index or the manifest).
pub fn install(
    store: &ImageStore,
    names: &[String],
    manifest: &Digest,
    source: &Digest,
    pinned: bool,
    progress: Progress<'_>,
) -> Result<Vec<ImageRecord>> {
    let man = store.manifest(manifest)?;
    let config = store
        .config(&man.config.digest)
        .with_context(|| format!("image config {}", man.config.digest))?;
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != man.layers.len() {
        bail!(
            "image {manifest} is inconsistent: {} layers in the manifest but {} diff ids in the config",
            man.layers.len(),
            diff_ids.len()
        );
    }
    for l in &man.layers {
        if !store.content().has(&l.digest) {
            bail!("layer blob {} of image {manifest} is missing", l.digest);
        }
    }
    let created = unpack_all(
        store,
        &man.layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>(),
        &diff_ids,
        progress,
    );
    let created = match created {
        Ok(c) => c,
        Err((e, created)) => {
            remove_layers(store, &created);
            return Err(e);
        }
    };
    let records: Vec<ImageRecord> = names
        .iter()
        .map(|name| ImageRecord {
            name: name.clone(),
            manifest: manifest.clone(),
            source_digest: source.clone(),
            config: man.config.digest.clone(),
            diff_ids: diff_ids.clone(),
            size: man.layers.iter().map(|l| l.size).sum(),
            pinned,
        })
        .collect();
    for r in &records {
        if let Err(e) = store.put(r.clone()) {
            remove_layers(store, &created);
            return Err(e);
        }
        progress(&Event::Stored {
            name: r.name.clone(),
            manifest: manifest.clone(),
        });
    }
    Ok(records)
}

fn remove_layers(store: &ImageStore, created: &[Digest]) {
    for d in created {
        let _ = std::fs::remove_dir_all(store.layer_dir(d));
    }
}

type UnpackError = (anyhow::Error, Vec<Digest>);

/// Unpacks layers on up to one thread per CPU. Returns the layers unpacked now (to be
/// removed again if the install fails).
fn unpack_all(
    store: &ImageStore,
    blobs: &[Digest],
    diff_ids: &[Digest],
    progress: Progress<'_>,
) -> std::result::Result<Vec<Digest>, UnpackError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(blobs.len())
        .max(1);
    let created = Mutex::new(Vec::new());
    let result = crate::parallel::for_each(blobs.len(), threads, |i| {
        // Layers already there were reported by whoever unpacked them.
        if store.ensure_layer(&blobs[i], &diff_ids[i])? {
            created.lock().unwrap().push(diff_ids[i].clone());
            progress(&Event::Unpacked {
                diff_id: diff_ids[i].clone(),
                fresh: true,
            });
        }
        Ok(())
    });
    let created = created.into_inner().unwrap();
    match result {
        Err(e) => Err((e, created)),
        Ok(()) => Ok(created),
    }
}
