//! The air-gap images folder: at start the agent imports every archive found in
//! `<data-dir>/images/` (oci-archive or docker-archive tars, as k3s does with its
//! `agent/images` folder). The image store remembers what it imported (size and
//! modification time), so unchanged archives are skipped on later starts.

use anyhow::Result;
use flotilla_images::store::ImageStore;
use std::path::Path;

/// What one start imported.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Image names imported from archives new or changed since the last start.
    pub imported: Vec<String>,
    /// Archives that could not be imported, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Imports the archives of `<data_dir>/images/`, logging each image and each failure.
/// A broken archive does not stop the agent: it is reported and tried again at the
/// next start.
pub fn import(data_dir: &Path) -> Result<Summary> {
    let folder = data_dir.join("images");
    let mut summary = Summary::default();
    if !folder.is_dir() {
        return Ok(summary);
    }
    let store = ImageStore::open(data_dir)?;
    let results = flotilla_images::import::import_folder(
        &store,
        &folder,
        &flotilla_images::progress::silent,
    )?;
    for (path, result) in results {
        let file = path.display().to_string();
        match result {
            Ok(images) => {
                for image in images {
                    tracing::info!(archive = %file, image = %image.name, "imported air-gap image");
                    summary.imported.push(image.name);
                }
            }
            Err(e) => {
                tracing::error!(archive = %file, "cannot import air-gap archive: {e:#}");
                summary.failed.push((file, format!("{e:#}")));
            }
        }
    }
    if summary.imported.is_empty() && summary.failed.is_empty() {
        tracing::info!(folder = %folder.display(), "air-gap images already imported");
    }
    Ok(summary)
}
