//! Unit tests of archive import: oci-archive and docker-archive round trips, and bad
//! archives that must leave nothing behind.

use super::*;
use crate::unpack::tests::TarMaker;
use std::io::Write;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn config_for(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// An oci-archive with the given uncompressed layers (stored gzipped).
fn oci_archive(layers: &[Vec<u8>], ref_name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let config = config_for(layers);
    let mut descs = Vec::new();
    for l in layers {
        let gz = gzip(l);
        let d = Digest::of(&gz);
        add(&mut b, &format!("blobs/sha256/{}", d.hex()), &gz);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
    }
    let cd = Digest::of(&config);
    add(&mut b, &format!("blobs/sha256/{}", cd.hex()), &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": manifest::OCI_CONFIG, "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let md = Digest::of(&manifest);
    add(&mut b, &format!("blobs/sha256/{}", md.hex()), &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest::OCI_MANIFEST, "digest": md, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": ref_name}}]
    });
    add(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    b.into_inner().unwrap()
}

/// A legacy `docker save` archive.
fn docker_archive(layers: &[Vec<u8>], tag: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let config = config_for(layers);
    let cd = Digest::of(&config);
    add(&mut b, &format!("{}.json", cd.hex()), &config);
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = format!("layer{i}/layer.tar");
        add(&mut b, &p, l);
        paths.push(p);
    }
    let m = serde_json::json!([{"Config": format!("{}.json", cd.hex()), "RepoTags": [tag], "Layers": paths}]);
    add(&mut b, "manifest.json", &serde_json::to_vec(&m).unwrap());
    b.into_inner().unwrap()
}

fn setup() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("data")).unwrap();
    (dir, store)
}

fn opts() -> ImportOptions<'static> {
    ImportOptions {
        platform: Platform::host(),
        name: None,
        pinned: false,
        progress: &crate::progress::silent,
    }
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn base_layers() -> Vec<Vec<u8>> {
    vec![
        TarMaker::new()
            .dir("etc/")
            .file("etc/hostname", b"one\n")
            .file("bin/sh", b"shell")
            .finish(),
        TarMaker::new()
            .dir("etc/")
            .file("etc/hostname", b"two\n")
            .finish(),
    ]
}

/// Nothing of a failed import remains: no names, blobs, layers or temporaries.
fn assert_empty(store: &ImageStore) {
    assert!(store.list().unwrap().is_empty());
    assert!(
        store.content().list().unwrap().is_empty(),
        "blobs left behind"
    );
    let data = store.data_dir();
    assert_eq!(
        std::fs::read_dir(data.join("layers/sha256"))
            .unwrap()
            .count(),
        0,
        "layers left behind"
    );
    assert_eq!(
        std::fs::read_dir(data.join("layers/tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(data.join("content/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn imports_oci_archive() {
    let (dir, store) = setup();
    let layers = base_layers();
    let p = write(
        dir.path(),
        "app.tar",
        &oci_archive(&layers, "example.com/team/app:v1"),
    );
    let recs = import_archive(&store, &p, &opts()).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].name, "example.com/team/app:v1");
    assert_eq!(
        recs[0].diff_ids,
        layers.iter().map(|l| Digest::of(l)).collect::<Vec<_>>()
    );
    let top = store.layer_dir(&recs[0].diff_ids[1]);
    assert_eq!(std::fs::read(top.join("etc/hostname")).unwrap(), b"two\n");
    assert_eq!(store.resolve("example.com/team/app:v1").unwrap(), recs[0]);
    // Importing again is idempotent.
    assert_eq!(import_archive(&store, &p, &opts()).unwrap(), recs);
}

#[test]
fn oci_archive_with_tag_only_name_gets_a_local_name() {
    let (dir, store) = setup();
    let p = write(
        dir.path(),
        "my-app.tar.gz",
        &gzip(&oci_archive(&base_layers(), "latest")),
    );
    let recs = import_archive(&store, &p, &opts()).unwrap();
    assert_eq!(recs[0].name, "localhost/my-app:latest");
}

#[test]
fn imports_docker_archive() {
    let (dir, store) = setup();
    let layers = base_layers();
    let p = write(
        dir.path(),
        "saved.tar",
        &docker_archive(&layers, "busybox:1.36"),
    );
    let recs = import_archive(&store, &p, &opts()).unwrap();
    assert_eq!(recs[0].name, "docker.io/library/busybox:1.36");
    assert_eq!(
        std::fs::read(store.layer_dir(&recs[0].diff_ids[0]).join("bin/sh")).unwrap(),
        b"shell"
    );
    let m = store.manifest(&recs[0].manifest).unwrap();
    assert_eq!(m.layers[0].media_type, manifest::OCI_LAYER_TAR);
}

#[test]
fn malicious_layer_leaves_nothing_behind() {
    let (dir, store) = setup();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let evil = TarMaker::new()
        .symlink("etc", outside.to_str().unwrap())
        .file("etc/pwned", b"x")
        .finish();
    let layers = vec![base_layers().remove(0), evil];
    let p = write(
        dir.path(),
        "evil.tar",
        &oci_archive(&layers, "evil.example/x:1"),
    );
    let err = format!("{:#}", import_archive(&store, &p, &opts()).unwrap_err());
    assert!(err.contains("symlink"), "{err}");
    assert_empty(&store);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn blob_that_does_not_match_its_name_is_refused() {
    let (dir, store) = setup();
    let mut archive = oci_archive(&base_layers(), "example.com/a:1");
    // Flip a byte inside the first blob's data (the first entry after oci-layout).
    let pos = 512 * 3 + 20;
    archive[pos] ^= 0xff;
    let p = write(dir.path(), "bad.tar", &archive);
    let err = format!("{:#}", import_archive(&store, &p, &opts()).unwrap_err());
    assert!(err.contains("digest mismatch"), "{err}");
    assert_empty(&store);
}

#[test]
fn truncated_archive_is_refused() {
    let (dir, store) = setup();
    let archive = oci_archive(&base_layers(), "example.com/a:1");
    let p = write(dir.path(), "cut.tar", &archive[..archive.len() / 2]);
    let err = format!("{:#}", import_archive(&store, &p, &opts()).unwrap_err());
    assert!(err.contains("importing"), "{err}");
    assert_empty(&store);
}

#[test]
fn not_an_archive_is_a_clear_error() {
    let (dir, store) = setup();
    let p = write(
        dir.path(),
        "x.tar",
        &TarMaker::new().file("hello", b"x").finish(),
    );
    let err = format!("{:#}", import_archive(&store, &p, &opts()).unwrap_err());
    assert!(err.contains("neither index.json"), "{err}");
    let missing = dir.path().join("missing.tar");
    assert!(
        format!(
            "{:#}",
            import_archive(&store, &missing, &opts()).unwrap_err()
        )
        .contains("missing.tar")
    );
}

#[test]
fn airgap_folder_is_imported_once_and_pinned() {
    let (dir, store) = setup();
    let folder = dir.path().join("images");
    std::fs::create_dir(&folder).unwrap();
    write(
        &folder,
        "a.tar",
        &oci_archive(&base_layers(), "example.com/a:1"),
    );
    write(&folder, "README.txt", b"not an archive");
    let r = import_folder(&store, &folder, &crate::progress::silent).unwrap();
    assert_eq!(r.len(), 1);
    let recs = r.into_iter().next().unwrap().1.unwrap();
    assert!(recs[0].pinned);
    // Unchanged archives are skipped on the next start.
    assert!(
        import_folder(&store, &folder, &crate::progress::silent)
            .unwrap()
            .is_empty()
    );
    // Pinned images survive prune.
    store.prune().unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    store.set_pinned("example.com/a:1", false).unwrap();
    let (removed, gc) = store.prune().unwrap();
    assert_eq!(removed, vec!["example.com/a:1".to_string()]);
    assert!(gc.blobs >= 4 && gc.layers == 2, "{gc:?}");
    assert_empty(&store);
}
