//! The node's credentials on disk, under `<data-dir>/link/` (files 0600, directory
//! 0700): `node.key` (generated on the node, never sent), `node.crt` (signed by the
//! controller at join), `ca.crt` (the cluster CA) and `node-name`. `node.crt` is
//! written last, so its presence means the join completed.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What the node needs for mutual TLS with the controller.
#[derive(Clone)]
pub struct Identity {
    /// The name the certificate was issued for (`system:node:<name>`).
    pub node_name: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// The directory holding the credentials.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("link")
}

/// Loads the credentials, `None` when this node has not joined yet.
pub fn load(data_dir: &Path) -> Result<Option<Identity>> {
    let dir = dir(data_dir);
    if !dir.join("node.crt").exists() {
        return Ok(None);
    }
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| {
            format!(
                "reading {} (remove {} to join again)",
                dir.join(name).display(),
                dir.display()
            )
        })
    };
    Ok(Some(Identity {
        node_name: read("node-name")?.trim().to_string(),
        key_pem: read("node.key")?,
        cert_pem: read("node.crt")?,
        ca_pem: read("ca.crt")?,
    }))
}

/// Stores the credentials of a completed join.
pub fn save(data_dir: &Path, identity: &Identity) -> Result<()> {
    let dir = dir(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join("node-name"), identity.node_name.as_bytes())?;
    write_private(&dir.join("node.key"), identity.key_pem.as_bytes())?;
    write_private(&dir.join("ca.crt"), identity.ca_pem.as_bytes())?;
    write_private(&dir.join("node.crt"), identity.cert_pem.as_bytes())?;
    Ok(())
}

/// Checks that the stored identity is the one asked for on the command line.
pub fn check_name(identity: &Identity, wanted: &str, data_dir: &Path) -> Result<()> {
    if identity.node_name != wanted {
        bail!(
            "this node joined as {:?} but --node-name is {wanted:?}; keep the name, or remove {} to join again under the new one",
            identity.node_name,
            dir(data_dir).display()
        );
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename), mode 0600.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_identity_loads_back_private() {
        let data = tempfile::tempdir().unwrap();
        assert!(load(data.path()).unwrap().is_none());
        let id = Identity {
            node_name: "pi-04".into(),
            key_pem: "KEY".into(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
        };
        save(data.path(), &id).unwrap();
        let back = load(data.path()).unwrap().unwrap();
        assert_eq!(
            (
                back.node_name.as_str(),
                back.key_pem.as_str(),
                back.cert_pem.as_str()
            ),
            ("pi-04", "KEY", "CERT")
        );
        for name in ["node.key", "node.crt", "ca.crt", "node-name"] {
            let mode = std::fs::metadata(dir(data.path()).join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let err = check_name(&back, "pi-05", data.path()).unwrap_err();
        assert!(err.to_string().contains("joined as \"pi-04\""), "{err}");
        check_name(&back, "pi-04", data.path()).unwrap();
    }
}
