//! Tests of the e2e harness itself: fixtures, processes, cgroups, sandboxes, registry.

use std::path::Path;
use std::process::Command;

use flotilla_tests::command::{run, run_stdout};
use flotilla_tests::fixtures;

fn sha256_file(path: &Path) -> String {
    run_stdout(Command::new("sha256sum").arg(path))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The layout passes umoci and skopeo, and rebuilding it gives byte-identical blobs.
#[test]
fn fixture_images_are_valid_and_deterministic() {
    flotilla_tests::require_root!();
    let layout = fixtures::busybox_layout();
    let stat = run_stdout(Command::new("umoci").args(["stat", "--image"]).arg(format!(
        "{}:{}",
        layout.display(),
        fixtures::TAG
    )))
    .unwrap();
    assert!(stat.contains("LAYER"), "umoci stat: {stat}");

    let inspect = run_stdout(
        fixtures::skopeo()
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:{}", layout.display(), fixtures::TAG)),
    )
    .unwrap();
    let config: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(config["os"], "linux");

    let oci = fixtures::busybox_oci_archive();
    run(fixtures::skopeo()
        .arg("inspect")
        .arg(format!("oci-archive:{}", oci.display())))
    .unwrap();
    let docker = fixtures::busybox_docker_archive();
    run(fixtures::skopeo()
        .arg("inspect")
        .arg(format!("docker-archive:{}", docker.display())))
    .unwrap();

    // Rebuilt from scratch: the same files with the same bytes, hence the same digests.
    let fresh = tempfile::tempdir().unwrap();
    fixtures::write_busybox_layout(&fresh.path().join("layout")).unwrap();
    assert_same_tree(&layout, &fresh.path().join("layout"));
    fixtures::write_multiarch_layout(&fresh.path().join("multiarch")).unwrap();
    assert_same_tree(
        &fixtures::multiarch_layout(),
        &fresh.path().join("multiarch"),
    );
    let archive = fresh.path().join("busybox.oci.tar");
    fixtures::write_oci_archive(&fresh.path().join("layout"), &archive).unwrap();
    assert_eq!(sha256_file(&oci), sha256_file(&archive));
}

/// Asserts that two directory trees hold the same files with the same bytes.
fn assert_same_tree(a: &Path, b: &Path) {
    let list = |dir: &Path| {
        run_stdout(
            Command::new("find")
                .arg(".")
                .arg("-type")
                .arg("f")
                .current_dir(dir),
        )
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
    };
    let files = list(a);
    assert_eq!(files, list(b), "{} and {} differ", a.display(), b.display());
    for file in files {
        assert_eq!(
            sha256_file(&a.join(&file)),
            sha256_file(&b.join(&file)),
            "{file} differs"
        );
    }
}
