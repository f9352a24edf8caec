//! The JSON documents of an image: OCI and Docker schema2 manifests, OCI indexes and
//! Docker manifest lists, and the image config (only the fields Flotilla uses are typed;
//! the two dialects share their shape and differ in media types).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Every manifest type Flotilla accepts, for the `Accept` header.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    /// Media type of the target.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Digest of the target.
    pub digest: Digest,
    /// Size of the target in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    /// Annotations (the tag name of an oci-layout index entry lives here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// The platform of an index entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DescriptorPlatform {
    /// GOARCH name.
    pub architecture: String,
    /// GOOS name.
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl DescriptorPlatform {
    /// As a [`Platform`].
    pub fn to_platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().unwrap_or_default(),
        }
    }
}

/// An image manifest (OCI or Docker schema2).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// Media type, when the document names it.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// An image index or manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// Media type, when the document names it.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests, one per platform.
    pub manifests: Vec<Descriptor>,
}

/// What a manifest document turned out to be.
#[derive(Debug)]
pub enum Document {
    /// A single-platform manifest.
    Manifest(Manifest),
    /// An index of per-platform manifests.
    Index(Index),
}

/// Parses a manifest or index, using the media type from the document or else from
/// the transport (HTTP `Content-Type`), and refusing anything else (schema1, artifacts).
pub fn parse_document(bytes: &[u8], content_type: Option<&str>) -> Result<Document> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).context("manifest is not valid JSON")?;
    if probe.schema_version != Some(2) {
        bail!(
            "unsupported manifest schema version {:?} (only schema 2 / OCI manifests are supported)",
            probe.schema_version
        );
    }
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let is_index = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        _ if probe.manifests.is_some() => true,
        _ if probe.layers.is_some() => false,
        other => bail!("unsupported manifest media type {other:?}"),
    };
    if is_index {
        Ok(Document::Index(
            serde_json::from_slice(bytes).context("malformed image index")?,
        ))
    } else {
        Ok(Document::Manifest(
            serde_json::from_slice(bytes).context("malformed image manifest")?,
        ))
    }
}

impl Index {
    /// The entry for `platform`, or a clear error listing what the index offers.
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor> {
        let entries: Vec<(usize, Platform)> = self
            .manifests
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.platform.as_ref().map(|p| (i, p.to_platform())))
            .collect();
        match platform.best(entries.iter().map(|(_, p)| p)) {
            Some(best) => Ok(&self.manifests[entries[best].0]),
            None => {
                let offered: Vec<String> = entries.iter().map(|(_, p)| p.to_string()).collect();
                bail!(
                    "no image for platform {platform} in the index (it offers: {})",
                    if offered.is_empty() {
                        "nothing".into()
                    } else {
                        offered.join(", ")
                    }
                )
            }
        }
    }
}

/// The image configuration (fields Flotilla uses; the full JSON is kept in the store).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// GOARCH.
    #[serde(default)]
    pub architecture: String,
    /// GOOS.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Defaults for running the image.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// The uncompressed layer digests, base first.
    pub rootfs: RootFs,
}

/// `rootfs` of the image config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digest of each layer's uncompressed tar.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// `config` of the image config: what a container runs by default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunConfig {
    /// Default user.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment, `KEY=value`.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// Command.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig> {
        serde_json::from_slice(bytes).context("malformed image config")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn docker_manifest_list_selects_platform() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#
        );
        let Document::Index(idx) = parse_document(json.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            idx.select(&"linux/amd64".parse().unwrap())
                .unwrap()
                .digest
                .to_string(),
            D1
        );
        assert_eq!(
            idx.select(&"linux/arm/v7".parse().unwrap())
                .unwrap()
                .digest
                .to_string(),
            D2
        );
        let err = idx.select(&"linux/arm64".parse().unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("offers: linux/amd64, linux/arm/v7"),
            "{err}"
        );
    }

    #[test]
    fn media_type_from_content_type_when_document_lacks_it() {
        let json =
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":2}},"layers":[]}}"#);
        let doc = parse_document(
            json.as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .unwrap();
        assert!(matches!(doc, Document::Manifest(_)));
    }

    #[test]
    fn rejects_schema1_and_garbage() {
        let err = parse_document(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err();
        assert!(err.to_string().contains("schema version"), "{err}");
        assert!(parse_document(b"<html>", None).is_err());
        let bad_digest =
            r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz","size":2},"layers":[]}"#;
        assert!(parse_document(bad_digest.as_bytes(), Some(OCI_MANIFEST)).is_err());
    }
}
