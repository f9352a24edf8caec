//! End-to-end tests of `flotilla-agent image`: pulls from a real registry (Debian's
//! docker-registry on 127.0.0.1, filled by skopeo), multi-arch selection, basic auth
//! from the registries config, resumed downloads, corrupted blobs, archive imports,
//! malicious layers, and a container run on an image's overlay root filesystem.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_tests::fixtures::{self, Target, layout::LayoutWriter, rootfs::Entry};
use flotilla_tests::process::Process;
use flotilla_tests::registry::Registry;
use flotilla_tests::{bin, require_root};
use oci_spec::image::MediaType;

/// A data dir for one agent, removed at the end of the test.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::Builder::new()
                .prefix("flotilla-images-e2e-")
                .tempdir()
                .unwrap(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("flotilla-agent"));
        cmd.arg("image")
            .arg("--data-dir")
            .arg(self.data())
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("cannot run flotilla-agent")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`image {}` failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`image {}` should have failed; stdout:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn inspect(&self, image: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", image])).unwrap()
    }

    /// A file of an image as the container would see it: from the top-most layer
    /// that has it.
    fn image_file(&self, image: &str, path: &str) -> Option<String> {
        let info = self.inspect(image);
        let diff_ids = info["image"]["diff_ids"].as_array().unwrap().clone();
        diff_ids.iter().rev().find_map(|d| {
            let hex = d.as_str().unwrap().strip_prefix("sha256:").unwrap();
            fs::read_to_string(self.data().join("layers/sha256").join(hex).join(path)).ok()
        })
    }

    fn names(&self) -> Vec<String> {
        self.ok(&["ls", "-q"]).lines().map(str::to_string).collect()
    }

    fn blobs(&self) -> usize {
        fs::read_dir(self.data().join("content/blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn layers(&self) -> usize {
        fs::read_dir(self.data().join("layers/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn registries(&self, yaml: &str) -> PathBuf {
        let p = self.dir.path().join("registries.yaml");
        fs::write(&p, yaml).unwrap();
        p
    }
}

#[test]
fn pull_by_tag_and_by_digest() {
    require_root!();
    let registry = Registry::start();
    let image = registry.push_busybox("busybox:1.36");
    let digest = fixtures::layout_digest(&fixtures::busybox_layout(), fixtures::TAG).unwrap();
    let store = Store::new();
    let empty = store.registries("");
    let empty = empty.to_str().unwrap();

    let out = store.ok(&["--registries", empty, "pull", &image]);
    assert_eq!(out.trim(), format!("{image} {digest}"));
    assert_eq!(store.names(), vec![image.clone()]);
    assert!(
        store
            .image_file(&image, "etc/passwd")
            .unwrap()
            .contains("root")
    );
    let info = store.inspect(&image);
    assert_eq!(info["image"]["manifest"], digest.as_str());
    assert_eq!(info["config"]["config"]["Cmd"][0], "sh");

    let by_digest = format!("{}/busybox@{digest}", registry.addr());
    let out = store.ok(&["--registries", empty, "pull", &by_digest]);
    assert_eq!(out.trim(), format!("{by_digest} {digest}"));
    // Same content: no new layer, blobs shared.
    assert_eq!(store.layers(), 1);

    let err = store.fails(&[
        "--registries",
        empty,
        "pull",
        &format!("{}/nothere:1", registry.addr()),
    ]);
    assert!(err.contains("not found"), "{err}");
    let wrong = format!("{}/busybox@sha256:{}", registry.addr(), "0".repeat(64));
    let err = store.fails(&["--registries", empty, "pull", &wrong]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn multiarch_index_picks_host_platform_or_the_one_asked_for() {
    require_root!();
    let registry = Registry::start();
    let image = registry.push_multiarch("multi:1");
    let store = Store::new();
    let empty = store.registries("");
    let empty = empty.to_str().unwrap();

    store.ok(&["--registries", empty, "pull", &image]);
    let host = Target::host().name();
    assert_eq!(
        store
            .image_file(&image, fixtures::PLATFORM_FILE)
            .unwrap()
            .trim(),
        host
    );

    let other = if host == "linux/arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    store.ok(&["--registries", empty, "pull", "--platform", other, &image]);
    assert_eq!(
        store
            .image_file(&image, fixtures::PLATFORM_FILE)
            .unwrap()
            .trim(),
        other
    );

    store.ok(&[
        "--registries",
        empty,
        "pull",
        "--platform",
        "linux/arm/v7",
        &image,
    ]);
    assert_eq!(
        store
            .image_file(&image, fixtures::PLATFORM_FILE)
            .unwrap()
            .trim(),
        "linux/arm/v7"
    );

    let err = store.fails(&[
        "--registries",
        empty,
        "pull",
        "--platform",
        "linux/riscv64",
        &image,
    ]);
    assert!(err.contains("no image for platform linux/riscv64"), "{err}");
}

#[test]
fn docker_schema2_manifests_and_manifest_lists() {
    require_root!();
    let registry = Registry::start();
    let push_v2s2 = |layout: &Path, name: &str, all: bool| {
        let src = format!("oci:{}:{}", layout.display(), fixtures::TAG);
        let dest = format!("docker://{}", registry.reference(name));
        let mut args = vec![
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
        ];
        if all {
            args.push("--all");
        }
        args.extend([src.as_str(), dest.as_str()]);
        registry.skopeo(&args).unwrap();
        registry.reference(name)
    };
    let single = push_v2s2(&fixtures::busybox_layout(), "v2s2/busybox:1", false);
    let list = push_v2s2(&fixtures::multiarch_layout(), "v2s2/multi:1", true);
    let store = Store::new();
    let empty = store.registries("");
    let empty = empty.to_str().unwrap();

    store.ok(&["--registries", empty, "pull", &single]);
    let info = store.inspect(&single);
    assert_eq!(
        info["manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(store.image_file(&single, "etc/passwd").is_some());

    store.ok(&[
        "--registries",
        empty,
        "pull",
        "--platform",
        "linux/arm/v7",
        &list,
    ]);
    assert_eq!(
        store
            .image_file(&list, fixtures::PLATFORM_FILE)
            .unwrap()
            .trim(),
        "linux/arm/v7"
    );
}

#[test]
fn htpasswd_registry_with_credentials_from_the_config() {
    require_root!();
    let registry = Registry::start_with_htpasswd("fleet", "s3cret");
    let image = registry.push_busybox("private/busybox:1");
    let store = Store::new();
    let addr = registry.addr().to_string();

    let none = store.registries("");
    let err = store.fails(&["--registries", none.to_str().unwrap(), "pull", &image]);
    assert!(err.contains("requires credentials"), "{err}");

    let wrong = store.registries(&format!(
        "configs:\n  \"{addr}\":\n    auth:\n      username: fleet\n      password: nope\n"
    ));
    let err = store.fails(&["--registries", wrong.to_str().unwrap(), "pull", &image]);
    assert!(err.contains("refused access"), "{err}");
    assert!(store.names().is_empty());

    let good = store.registries(&format!(
        "configs:\n  \"{addr}\":\n    auth:\n      username: fleet\n      password: s3cret\n"
    ));
    store.ok(&["--registries", good.to_str().unwrap(), "pull", &image]);
    assert_eq!(store.names(), vec![image]);
}

#[test]
fn mirror_from_the_registries_config_serves_the_pull() {
    require_root!();
    let registry = Registry::start();
    registry.push_busybox("team/app:1");
    let store = Store::new();
    // The image's own registry is a loopback port where nothing listens; the mirror
    // (the real registry) must serve it, and a dead mirror must fall through.
    let config = store.registries(&format!(
        "mirrors:\n  \"127.0.0.2:9\":\n    endpoint:\n      - \"http://127.0.0.3:9\"\n      - \"http://{}\"\n",
        registry.addr()
    ));
    let config = config.to_str().unwrap();
    let out = store.ok(&[
        "--registries",
        config,
        "pull",
        "--attempts",
        "1",
        "127.0.0.2:9/team/app:1",
    ]);
    assert!(out.starts_with("127.0.0.2:9/team/app:1 sha256:"), "{out}");
    assert!(
        store
            .image_file("127.0.0.2:9/team/app:1", "etc/passwd")
            .is_some()
    );

    let err = store.fails(&[
        "--registries",
        config,
        "pull",
        "--attempts",
        "1",
        "127.0.0.2:9/team/other:1",
    ]);
    assert!(
        err.contains("failed at every endpoint") && err.contains("not found"),
        "{err}"
    );
}

/// Deterministic incompressible bytes (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A layout with one large random layer.
fn big_layout(dir: &Path, mib: usize) -> PathBuf {
    let layout = dir.join("big-layout");
    let w = LayoutWriter::create(&layout).unwrap();
    let layer = w
        .layer(&[
            Entry::dir("data", 0o755),
            Entry::file("data/blob", 0o644, noise(mib << 20, 42)),
        ])
        .unwrap();
    let m = w.image(Target::host(), &[layer]).unwrap();
    w.finish(m, "latest").unwrap();
    layout
}

fn partial_bytes(data: &Path) -> u64 {
    fs::read_dir(data.join("content/ingest"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn interrupted_download_resumes_with_range_requests() {
    require_root!();
    let mut registry = Registry::start();
    let store = Store::new();
    let layout = big_layout(store.dir.path(), 24);
    let image = registry
        .push_layout(&layout, "latest", "big:1", false)
        .unwrap();
    let empty = store.registries("");

    // 24 MiB at 3 MiB/s: the registry is stopped a few MiB in, and restarted.
    let cmd = store.cmd(&[
        "--registries",
        empty.to_str().unwrap(),
        "pull",
        "--limit-rate",
        "3M",
        "--attempts",
        "12",
        &image,
    ]);
    let mut pull = Process::spawn(cmd).named("pull");
    let deadline = Instant::now() + Duration::from_secs(30);
    while partial_bytes(&store.data()) < 4 << 20 {
        assert!(
            Instant::now() < deadline,
            "download did not start:\n{}",
            pull.output()
        );
        assert!(pull.is_running(), "pull ended early:\n{}", pull.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    registry.stop();
    let kept = partial_bytes(&store.data());
    std::thread::sleep(Duration::from_secs(1));
    registry.restart();
    let status = pull.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "pull failed:\n{}", pull.output());
    let err = pull.stderr();
    let resumed_at: u64 = err
        .lines()
        .find_map(|l| l.split("resuming at ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resumed download in:\n{err}"));
    assert!(
        resumed_at >= kept && resumed_at > 0,
        "resumed at {resumed_at}, {kept} bytes were kept"
    );
    assert_eq!(store.names(), vec![image.clone()]);
    assert_eq!(partial_bytes(&store.data()), 0);
    let data = fs::read(
        store
            .data()
            .join("layers/sha256")
            .join(
                store.inspect(&image)["image"]["diff_ids"][0]
                    .as_str()
                    .unwrap()
                    .strip_prefix("sha256:")
                    .unwrap(),
            )
            .join("data/blob"),
    )
    .unwrap();
    assert!(data == noise(24 << 20, 42), "unpacked content differs");
}

#[test]
fn killed_pull_resumes_its_partial_blob_on_the_next_run() {
    require_root!();
    let registry = Registry::start();
    let store = Store::new();
    let layout = big_layout(store.dir.path(), 16);
    let image = registry
        .push_layout(&layout, "latest", "big:2", false)
        .unwrap();
    let empty = store.registries("");
    let empty = empty.to_str().unwrap();

    let cmd = store.cmd(&["--registries", empty, "pull", "--limit-rate", "2M", &image]);
    let mut pull = Process::spawn(cmd).named("pull");
    let deadline = Instant::now() + Duration::from_secs(30);
    while partial_bytes(&store.data()) < 2 << 20 {
        assert!(
            Instant::now() < deadline,
            "download did not start:\n{}",
            pull.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // An agent killed mid-pull (crash, power cut, restart) leaves a partial blob.
    pull.kill();
    let kept = partial_bytes(&store.data());
    assert!(store.names().is_empty());

    let out = store.run(&["--registries", empty, "pull", &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let resumed_at: u64 = err
        .lines()
        .find_map(|l| l.split("resuming at ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resumed download in:\n{err}"));
    assert_eq!(resumed_at, kept);
    assert_eq!(store.names(), vec![image]);
}

/// The largest blob file in the registry's storage (the layer).
fn largest_blob(root: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "data" && best.as_ref().is_none_or(|(s, _)| m.len() > *s) {
                best = Some((m.len(), e.path()));
            }
        }
    }
    best.expect("no blobs in registry storage").1
}

#[test]
fn corrupted_blob_is_rejected() {
    require_root!();
    let registry = Registry::start();
    let image = registry.push_busybox("busybox:corrupt");
    let blob = largest_blob(&registry.storage_dir().join("docker/registry/v2/blobs"));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(&blob, &bytes).unwrap();

    let store = Store::new();
    let empty = store.registries("");
    let err = store.fails(&["--registries", empty.to_str().unwrap(), "pull", &image]);
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(store.names().is_empty());
    assert_eq!(store.layers(), 0);
    assert_eq!(
        partial_bytes(&store.data()),
        0,
        "corrupt partial download kept"
    );
    let layer_hex = blob
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        !store
            .data()
            .join("content/blobs/sha256")
            .join(layer_hex)
            .exists()
    );
}

#[test]
fn imports_skopeo_made_oci_and_docker_archives() {
    require_root!();
    let store = Store::new();
    let tmp = store.dir.path();

    // oci-archive made by skopeo from the fixture layout.
    let oci = tmp.join("busybox-oci.tar");
    let status = fixtures::skopeo()
        .args(["copy", "--quiet"])
        .arg(format!(
            "oci:{}:latest",
            fixtures::busybox_layout().display()
        ))
        .arg(format!("oci-archive:{}:fleet/busybox:2", oci.display()))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo failed");
    let out = store.ok(&["import", oci.to_str().unwrap()]);
    assert!(
        out.starts_with("docker.io/fleet/busybox:2 sha256:"),
        "{out}"
    );

    let docker = fixtures::busybox_docker_archive();
    let out = store.ok(&["import", docker.to_str().unwrap()]);
    assert!(
        out.starts_with("docker.io/flotilla/busybox:latest sha256:"),
        "{out}"
    );

    let gz = tmp.join("busybox-docker.tar.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", docker.display(), gz.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let out = store.ok(&["import", "--name", "fleet/gz:1", gz.to_str().unwrap()]);
    assert!(out.starts_with("docker.io/fleet/gz:1 "), "{out}");

    // One unpacked layer shared by all three.
    assert_eq!(store.layers(), 1);
    for name in ["fleet/busybox:2", "flotilla/busybox:latest", "fleet/gz:1"] {
        assert!(store.image_file(name, "etc/group").is_some(), "{name}");
    }
    // rm keeps what other images still use; prune removes the rest.
    store.ok(&["rm", "fleet/gz:1"]);
    assert_eq!(store.layers(), 1);
    store.ok(&["pin", "fleet/busybox:2"]);
    let out = store.ok(&["prune"]);
    assert!(
        out.contains("removed docker.io/flotilla/busybox:latest"),
        "{out}"
    );
    assert_eq!(store.names(), vec!["docker.io/fleet/busybox:2".to_string()]);
    store.ok(&["unpin", "fleet/busybox:2"]);
    store.ok(&["prune"]);
    assert!(store.names().is_empty());
    assert_eq!((store.blobs(), store.layers()), (0, 0));

    let err = store.fails(&["inspect", "fleet/busybox:2"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn airgap_folder_is_imported_pinned_and_only_once() {
    require_root!();
    let store = Store::new();
    let folder = store.data().join("images");
    fs::create_dir_all(&folder).unwrap();
    fs::copy(
        fixtures::busybox_docker_archive(),
        folder.join("busybox.tar"),
    )
    .unwrap();
    fs::write(folder.join("notes.txt"), "not an image").unwrap();

    let out = store.ok(&["import-airgap"]);
    assert!(
        out.starts_with("docker.io/flotilla/busybox:latest sha256:"),
        "{out}"
    );
    assert!(
        store
            .ok(&["ls"])
            .lines()
            .any(|l| l.contains("flotilla/busybox") && l.ends_with("yes"))
    );
    // Already imported: the next start does not read it again.
    assert_eq!(store.ok(&["import-airgap"]), "");
    // Pinned: prune keeps it.
    store.ok(&["prune"]);
    assert_eq!(store.names().len(), 1);

    // A broken archive is reported, and does not stop the others.
    fs::write(folder.join("broken.tar"), b"garbage").unwrap();
    let err = store.fails(&["import-airgap"]);
    assert!(
        err.contains("broken.tar") && err.contains("1 archive(s) could not be imported"),
        "{err}"
    );
}

/// Runs a shell script in a private mount namespace that dies with it; asserts it
/// succeeds and returns its stdout.
fn run_with_private_mounts(script: &str) -> String {
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(script);
    let out = flotilla_tests::sandbox::with_private_mounts(&sh)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A raw tar entry, bypassing the checks of tar::Builder (which refuses `..`).
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// An oci-archive whose only layer is `tar`.
fn archive_with_layer(dir: &Path, name: &str, mut tar: Vec<u8>) -> PathBuf {
    tar.extend_from_slice(&[0; 1024]);
    let layout = dir.join(format!("{name}-layout"));
    let w = LayoutWriter::create(&layout).unwrap();
    let desc = w.blob(MediaType::ImageLayer, &tar).unwrap();
    let m = w
        .image(Target::host(), &[(desc, fixtures::layout::sha256(&tar))])
        .unwrap();
    w.finish(m, "latest").unwrap();
    let path = dir.join(format!("{name}.tar"));
    fixtures::write_oci_archive(&layout, &path).unwrap();
    path
}

#[test]
fn malicious_archives_are_rejected_and_leave_nothing() {
    require_root!();
    let store = Store::new();
    let tmp = store.dir.path();
    let outside = tmp.join("outside");
    fs::create_dir(&outside).unwrap();
    let host_file = tmp.join("host-secret");
    fs::write(&host_file, "secret").unwrap();
    // Paths that resolve, from a layer dir data/layers/tmp/<x>/, to `outside`.
    let up = "../../../../";

    let mut dotdot = Vec::new();
    raw_entry(
        &mut dotdot,
        &format!("{up}outside/escaped"),
        tar::EntryType::Regular,
        "",
        b"x",
    );
    let mut symlink = Vec::new();
    raw_entry(
        &mut symlink,
        "etc",
        tar::EntryType::Symlink,
        outside.to_str().unwrap(),
        b"",
    );
    raw_entry(
        &mut symlink,
        "etc/passwd",
        tar::EntryType::Regular,
        "",
        b"root::0:0",
    );
    let mut hardlink = Vec::new();
    raw_entry(
        &mut hardlink,
        "stolen",
        tar::EntryType::Link,
        host_file.to_str().unwrap(),
        b"",
    );
    let mut rel_hardlink = Vec::new();
    raw_entry(
        &mut rel_hardlink,
        "stolen",
        tar::EntryType::Link,
        &format!("{up}host-secret"),
        b"",
    );

    for (name, tar, expect) in [
        ("dotdot", dotdot, "'..'"),
        ("symlink", symlink, "symlink"),
        ("hardlink", hardlink, "hardlink target"),
        ("relhardlink", rel_hardlink, "'..'"),
    ] {
        let archive = archive_with_layer(tmp, name, tar);
        let err = store.fails(&[
            "import",
            "--name",
            &format!("evil/{name}:1"),
            archive.to_str().unwrap(),
        ]);
        assert!(err.contains(expect), "{name}: {err}");
        assert!(store.names().is_empty(), "{name}: image recorded");
        assert_eq!(
            (store.blobs(), store.layers()),
            (0, 0),
            "{name}: content left in the store"
        );
        assert_eq!(
            fs::read_dir(store.data().join("layers/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the store"
    );
    assert_eq!(fs::read_to_string(&host_file).unwrap(), "secret");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&host_file).unwrap().nlink(), 1);

    // A truncated archive, and something that is not an archive at all.
    let good = fixtures::busybox_oci_archive();
    let bytes = fs::read(&good).unwrap();
    let cut = tmp.join("cut.tar");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = store.fails(&["import", cut.to_str().unwrap()]);
    assert!(err.contains("importing"), "{err}");
    assert_eq!((store.blobs(), store.layers()), (0, 0));
    let err = store.fails(&["import", "/etc/hostname"]);
    assert!(err.contains("/etc/hostname"), "{err}");
}

#[test]
fn container_runs_on_an_imported_images_overlay_rootfs() {
    require_root!();
    let store = Store::new();
    let archive = fixtures::busybox_oci_archive();
    store.ok(&[
        "import",
        "--name",
        "fleet/busybox:run",
        archive.to_str().unwrap(),
    ]);

    let bundle = store.dir.path().join("bundle");
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let cgroup = flotilla_tests::cgroup::TestCgroup::new("images");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", "echo written-in-container > /tmp/marker && cat /etc/group | head -n 1 && echo container-ok"],
            "env": ["PATH=/bin:/usr/bin"],
            "cwd": "/"
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "images-e2e",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "cgroupsPath": format!("{}/images-c1", cgroup.path()),
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]
        }
    });
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();

    let agent = bin("flotilla-agent");
    let data = store.data();
    let upper = data.join("snapshots/c1/upper/tmp/marker");
    // Everything mounts inside a private mount namespace that dies with the shell.
    let script = format!(
        "set -e\n\
         {a} image --data-dir {d} mount fleet/busybox:run {b}/rootfs --id c1\n\
         grep -q ' {b}/rootfs overlay ' /proc/self/mounts && echo overlay-mounted\n\
         {a} runtime --root {d}/runtime run --bundle {b} c1\n\
         cat {u}\n\
         {a} image --data-dir {d} unmount c1\n\
         {a} image --data-dir {d} mount --copy fleet/busybox:run {b}/rootfs --id c2\n\
         ! grep -q ' {b}/rootfs overlay ' /proc/self/mounts\n\
         test -x {b}/rootfs/bin/busybox && test -f {d}/snapshots/c2/rootfs/etc/passwd && echo copy-mounted\n\
         {a} image --data-dir {d} unmount c2\n",
        a = agent.display(),
        d = data.display(),
        b = bundle.display(),
        u = upper.display(),
    );
    let stdout = run_with_private_mounts(&script);
    assert!(stdout.contains("overlay-mounted"), "{stdout}");
    assert!(stdout.contains("copy-mounted"), "{stdout}");
    assert!(stdout.contains("container-ok"), "{stdout}");
    assert!(stdout.contains("root:x:0:"), "{stdout}");
    // The write landed in the container's upper dir, not in the shared layer.
    assert!(stdout.contains("written-in-container"), "{stdout}");
    let info = store.inspect("fleet/busybox:run");
    let hex = info["image"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_string();
    assert!(
        !data
            .join("layers/sha256")
            .join(hex)
            .join("tmp/marker")
            .exists()
    );
    assert!(!data.join("snapshots/c1").exists(), "snapshot not removed");
    assert!(
        !data.join("snapshots/c2").exists(),
        "copy snapshot not removed"
    );
    // In use no more: rm works without --force.
    store.ok(&["rm", "fleet/busybox:run"]);
}

/// An image deeper than the layers' full paths fit in one page of mount options
/// (~38 at the default data dir) still gets an overlay root filesystem, each layer
/// named by an open descriptor, with every layer visible and the top one winning.
#[test]
fn deep_image_still_mounts_as_overlay() {
    require_root!();
    let store = Store::new();
    let tmp = store.dir.path();
    const DEPTH: usize = 120;
    let layout = tmp.join("deep-layout");
    let w = LayoutWriter::create(&layout).unwrap();
    let layers: Vec<_> = (0..DEPTH)
        .map(|i| {
            w.layer(&[
                Entry::dir("layers", 0o755),
                Entry::file(&format!("layers/{i}"), 0o644, format!("{i}").into_bytes()),
                Entry::file("top", 0o644, format!("layer {i}").into_bytes()),
            ])
            .unwrap()
        })
        .collect();
    let m = w.image(Target::host(), &layers).unwrap();
    w.finish(m, "latest").unwrap();
    let archive = tmp.join("deep.tar");
    fixtures::write_oci_archive(&layout, &archive).unwrap();
    store.ok(&[
        "import",
        "--name",
        "fleet/deep:1",
        archive.to_str().unwrap(),
    ]);

    let rootfs = tmp.join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    let script = format!(
        "set -e\n\
         {a} image --data-dir {d} mount fleet/deep:1 {r} --id deep\n\
         grep ' {r} overlay ' /proc/self/mounts >/dev/null && echo overlay-mounted\n\
         echo layers=$(ls {r}/layers | wc -l)\n\
         echo top=\"$(cat {r}/top)\"\n\
         {a} image --data-dir {d} unmount deep\n",
        a = bin("flotilla-agent").display(),
        d = store.data().display(),
        r = rootfs.display(),
    );
    let stdout = run_with_private_mounts(&script);
    assert!(stdout.contains("overlay-mounted"), "{stdout}");
    assert!(stdout.contains(&format!("layers={DEPTH}")), "{stdout}");
    assert!(
        stdout.contains(&format!("top=layer {}", DEPTH - 1)),
        "{stdout}"
    );
    assert!(!store.data().join("snapshots/deep").exists());
}
