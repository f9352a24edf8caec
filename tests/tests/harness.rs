//! Tests of the e2e harness itself: fixtures, processes, cgroups, sandboxes, registry.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::command::{run, run_stdout};
use flotilla_tests::process::Process;
use flotilla_tests::registry::{self, Registry};
use flotilla_tests::{cgroup, command, dns, fixtures, sandbox};

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

    // It unpacks to a working busybox system.
    let unpacked = tempfile::tempdir().unwrap();
    let bundle = unpacked.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", layout.display(), fixtures::TAG))
        .arg(&bundle))
    .unwrap();
    let out = run_stdout(Command::new("chroot").arg(bundle.join("rootfs")).args([
        "/bin/sh",
        "-c",
        "echo ok; id -un",
    ]))
    .unwrap();
    assert_eq!(out, "ok\nroot\n");

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
    fixtures::verify_layout(&layout).unwrap();
    fixtures::write_multiarch_layout(&fresh.path().join("multiarch")).unwrap();
    assert_same_tree(
        &fixtures::multiarch_layout(),
        &fresh.path().join("multiarch"),
    );
    let archive = fresh.path().join("busybox.oci.tar");
    fixtures::write_oci_archive(&fresh.path().join("layout"), &archive).unwrap();
    assert_eq!(sha256_file(&oci), sha256_file(&archive));
    let archive = fresh.path().join("busybox.docker.tar");
    fixtures::write_docker_archive(&fresh.path().join("layout"), &archive).unwrap();
    assert_eq!(sha256_file(&docker), sha256_file(&archive));

    // A damaged layout is detected (the cache then rebuilds it).
    let damaged = fresh.path().join("layout");
    let blob = std::fs::read_dir(damaged.join("blobs/sha256"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&blob, b"changed by a careless test").unwrap();
    let err = fixtures::verify_layout(&damaged).unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");
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

/// `bin` finds the workspace binaries built next to this test (`cargo build --workspace`).
#[test]
fn bin_finds_the_built_binaries() {
    flotilla_tests::require_root!();
    for name in ["flotilla-agent", "flotilla-controller"] {
        let out = run_stdout(Command::new(flotilla_tests::bin(name)).arg("--version")).unwrap();
        assert!(out.starts_with(name), "{name} --version: {out}");
    }
    let missing = std::panic::catch_unwind(|| flotilla_tests::bin("no-such-binary"));
    let message = *missing.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("cargo build --workspace"), "{message}");
}

/// The rootfs fixture is a working busybox system: a shell, applets, users.
#[test]
fn busybox_rootfs_runs_a_shell() {
    flotilla_tests::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fixtures::busybox_rootfs(&root);
    let out = run_stdout(Command::new("chroot").arg(&root).args([
        "/bin/sh",
        "-c",
        "echo hello; id -un; id -u nobody; ls /usr/bin/env; stat -c %a /tmp",
    ]))
    .unwrap();
    assert_eq!(out, "hello\nroot\n65534\n/usr/bin/env\n1777\n");
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ns_inode(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A sandbox (LAN + node + process) lives in its own namespaces and leaves nothing
/// behind: namespaces gone, veths and bridge gone, process gone, root netns unchanged.
#[test]
fn sandbox_is_created_and_fully_torn_down() {
    flotilla_tests::require_root!();
    let root_before = sandbox::root_netns_snapshot();
    let (node_ns, lan_ns, pid);
    {
        let lan = sandbox::Lan::new();
        let node = sandbox::Node::new("teardown");
        node_ns = node.netns().to_string();
        lan_ns = lan.netns().to_string();
        assert_eq!(node.attach(&lan, "10.99.0.2/24").unwrap(), "eth0");
        assert_eq!(lan.ports().unwrap().len(), 1);
        let mut sleeper = Command::new("sleep");
        sleeper.arg("1000");
        let mut process = node.spawn(sleeper);
        pid = process.pid().to_string();
        process
            .wait_until("sleep to be exec'd", Duration::from_secs(5), |p| {
                std::fs::read_to_string(format!("/proc/{}/comm", p.pid()))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .unwrap();
        // The process is in the node's network namespace and a private mount namespace.
        let node_inode = std::fs::metadata(node.netns_path()).unwrap();
        let proc_net = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(node_inode.ino(), proc_net.ino());
        assert_ne!(ns_inode(&pid, "net"), ns_inode("self", "net"));
        assert_ne!(ns_inode(&pid, "mnt"), ns_inode("self", "mnt"));
        // Inside: lo and eth0 up with the address; the root namespace has neither.
        let inside = String::from_utf8(
            node.run(Command::new("ip").args(["-o", "addr", "show"]))
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(inside.contains("10.99.0.2/24"), "{inside}");
        assert!(inside.contains("127.0.0.1/8"), "{inside}");
        assert_eq!(sandbox::root_netns_snapshot(), root_before);
        // Its own hostname, while the host keeps its own.
        assert_eq!(node.hostname(), "teardown");
        let hostname = node.run(&Command::new("hostname")).unwrap().stdout;
        assert_eq!(String::from_utf8_lossy(&hostname), "teardown\n");
        assert_ne!(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim(),
            "teardown"
        );
        assert_ne!(ns_inode(&pid, "uts"), ns_inode("self", "uts"));
        // Per-node /etc files (e.g. a resolv.conf naming a test's DNS stub).
        node.set_etc_file("hosts", "10.99.0.1 gateway.test\n")
            .unwrap();
        let hosts = node
            .run(Command::new("cat").arg("/etc/hosts"))
            .unwrap()
            .stdout;
        assert_eq!(String::from_utf8_lossy(&hosts), "10.99.0.1 gateway.test\n");
        assert_ne!(
            std::fs::read_to_string("/etc/hosts").unwrap(),
            "10.99.0.1 gateway.test\n"
        );
        assert!(netns_names().contains(&node_ns));
        assert!(netns_names().contains(&lan_ns));
    }
    let names = netns_names();
    assert!(!names.contains(&node_ns), "{node_ns} left behind");
    assert!(!names.contains(&lan_ns), "{lan_ns} left behind");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} left behind"
    );
    assert_eq!(sandbox::root_netns_snapshot(), root_before);
}

/// A mount made under `with_private_mounts` is seen by that process only.
#[test]
fn private_mounts_stay_private() {
    flotilla_tests::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().display().to_string();
    let mut script = Command::new("sh");
    script.args([
        "-c",
        &format!("mount -t tmpfs flotilla-test {target} && touch {target}/inside && ls {target}"),
    ]);
    let out = run_stdout(&mut sandbox::with_private_mounts(&script)).unwrap();
    assert_eq!(out, "inside\n");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&target), "tmpfs leaked to the host");
}

/// Two nodes on one LAN reach each other (ICMP and TCP); a server in one node is
/// ready-checked from its own namespace.
#[test]
fn nodes_on_a_lan_reach_each_other() {
    flotilla_tests::require_root!();
    let lan = sandbox::Lan::new();
    let a = sandbox::Node::new("a");
    let b = sandbox::Node::new("b");
    a.attach(&lan, "10.99.0.2/24").unwrap();
    b.attach(&lan, "10.99.0.3/24").unwrap();

    a.run(Command::new("busybox").args(["ping", "-c", "1", "-W", "5", "10.99.0.3"]))
        .unwrap();

    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("hello"), "hello from b\n").unwrap();
    let mut httpd = Command::new("busybox");
    httpd
        .args(["httpd", "-f", "-p", "10.99.0.3:8080", "-h"])
        .arg(www.path());
    let mut server = b.spawn(httpd);
    server
        .wait_for_tcp("10.99.0.3:8080".parse().unwrap(), Duration::from_secs(10))
        .unwrap();
    let body = a
        .run(Command::new("busybox").args(["wget", "-q", "-O", "-", "http://10.99.0.3:8080/hello"]))
        .unwrap()
        .stdout;
    assert_eq!(String::from_utf8(body).unwrap(), "hello from b\n");
    // A client thread placed in node a's namespace reaches b too.
    a.connect("10.99.0.3:8080".parse().unwrap(), Duration::from_secs(5))
        .unwrap();
    // A node without the LAN reaches nobody.
    let c = sandbox::Node::new("c");
    assert!(
        c.connect("10.99.0.3:8080".parse().unwrap(), Duration::from_secs(1))
            .is_err()
    );
    assert!(
        a.attach(&lan, "10.99.0.9")
            .unwrap_err()
            .to_string()
            .contains("prefix length")
    );
    // A bad address leaves nothing half-done: no new interface, no new bridge port.
    let err = a.attach(&lan, "10.99.0.300/24").unwrap_err();
    assert!(format!("{err:#}").contains("10.99.0.300"), "{err:#}");
    assert_eq!(lan.ports().unwrap().len(), 2);
    let links = a.ip(&["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 2, "{links}");
}

/// A DNS stub in one node answers a real resolver in another node over the LAN.
#[test]
fn dns_stub_answers_over_the_lan() {
    flotilla_tests::require_root!();
    let lan = sandbox::Lan::new();
    let dns_node = sandbox::Node::new("dns");
    let client = sandbox::Node::new("client");
    dns_node.attach(&lan, "10.99.0.53/24").unwrap();
    client.attach(&lan, "10.99.0.2/24").unwrap();
    let stub = dns::Stub::start_in(
        &dns_node,
        "10.99.0.53:53".parse().unwrap(),
        &[("web.flotilla.test", "10.99.0.80".parse().unwrap())],
    );
    let out = client
        .run(Command::new("busybox").args([
            "nslookup",
            "-type=a",
            "web.flotilla.test",
            "10.99.0.53",
        ]))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.99.0.80"), "{text}");
    let missing = command::output(
        &mut client.wrap(Command::new("busybox").args([
            "nslookup",
            "-type=a",
            "gone.flotilla.test",
            "10.99.0.53",
        ])),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!missing.status.success());
    let queries = stub.queries();
    assert!(
        queries.contains(&("web.flotilla.test".to_string(), dns::TYPE_A)),
        "{queries:?}"
    );
    assert!(
        queries.contains(&("gone.flotilla.test".to_string(), dns::TYPE_A)),
        "{queries:?}"
    );
}

/// A TestCgroup exists in every hierarchy, and on drop it kills what it holds and
/// removes itself with its children.
#[test]
fn test_cgroup_is_removed_on_drop() {
    flotilla_tests::require_root!();
    let hierarchies = cgroup::hierarchies().unwrap();
    let cg = cgroup::TestCgroup::new("harness");
    let dirs: Vec<_> = cg.dirs().map(Path::to_path_buf).collect();
    assert_eq!(dirs.len(), hierarchies.len());
    for dir in &dirs {
        assert!(dir.is_dir(), "{} missing", dir.display());
        assert!(dir.ends_with(cg.name()));
    }
    // As a runtime would: a child cgroup holding a process.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("1000");
    let mut process = Process::spawn(sleeper);
    cg.add_process("pod", process.pid()).unwrap();
    for dir in &dirs {
        let procs = std::fs::read_to_string(dir.join("pod/cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), process.pid().to_string(), "{}", dir.display());
    }
    assert_eq!(cg.pids(), vec![process.pid()]);
    assert!(cg.child("../escape").is_err());
    drop(cg);
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    use std::os::unix::process::ExitStatusExt;
    let status = process.wait_exit(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(9));
}

/// Leftovers of a test process that died without cleaning up (its PID is gone) are
/// swept: namespaces, /etc/netns files and empty cgroups; live ones are kept.
#[test]
fn leftovers_of_dead_test_processes_are_swept() {
    flotilla_tests::require_root!();
    // PIDs above the kernel's maximum never exist.
    let stale = "flotilla-test-4294967294-0-sweep";
    run(Command::new("ip").args(["netns", "add", stale])).unwrap();
    std::fs::create_dir_all(Path::new("/etc/netns").join(stale)).unwrap();
    let hierarchies = cgroup::hierarchies().unwrap();
    for h in &hierarchies {
        std::fs::create_dir_all(h.mount.join(stale).join("child")).unwrap();
    }
    let live = sandbox::Node::new("sweep-live");
    let live_cg = cgroup::TestCgroup::new("sweep-live");

    sandbox::sweep_stale();
    cgroup::sweep_stale();

    assert!(
        !netns_names().iter().any(|n| n == stale),
        "stale netns kept"
    );
    assert!(!Path::new("/etc/netns").join(stale).exists());
    for h in &hierarchies {
        assert!(
            !h.mount.join(stale).exists(),
            "stale cgroup kept in {}",
            h.mount.display()
        );
    }
    assert!(netns_names().iter().any(|n| n == live.netns()));
    assert!(live_cg.dirs().all(Path::is_dir));
}

/// Frozen processes in a test cgroup (a paused container) are thawed, killed and
/// removed on drop too.
#[test]
fn test_cgroup_removes_frozen_processes() {
    flotilla_tests::require_root!();
    let cg = cgroup::TestCgroup::new("frozen");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("1000");
    let mut process = Process::spawn(sleeper);
    cg.add_process("paused", process.pid()).unwrap();
    let freezer = match (cg.v1("freezer"), cg.unified()) {
        (Some(dir), _) => dir.join("paused/freezer.state"),
        (None, Some(dir)) => dir.join("paused/cgroup.freeze"),
        (None, None) => panic!("no freezer"),
    };
    let frozen = if freezer.ends_with("freezer.state") {
        "FROZEN"
    } else {
        "1"
    };
    std::fs::write(&freezer, frozen).unwrap();
    process
        .wait_until("the process to freeze", Duration::from_secs(5), |p| {
            std::fs::read_to_string(format!("/proc/{}/status", p.pid())).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("State:") && !l.contains("R ("))
            }) && std::fs::read_to_string(&freezer).is_ok_and(|s| s.trim() == frozen)
        })
        .unwrap();
    // Stopping the frozen process itself thaws it rather than waiting forever.
    let stopped = std::time::Instant::now();
    let status = process.stop_with_grace(Duration::from_millis(100));
    assert!(stopped.elapsed() < Duration::from_secs(15));
    use std::os::unix::process::ExitStatusExt;
    // Thawed, it takes the pending SIGTERM or the SIGKILL, whichever lands first.
    assert!(matches!(status.signal(), Some(9 | 15)), "{status}");

    // And a frozen cgroup is thawed, emptied and removed on drop.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("1000");
    let mut process = Process::spawn(sleeper);
    cg.add_process("paused", process.pid()).unwrap();
    std::fs::write(&freezer, frozen).unwrap();
    let dirs: Vec<_> = cg.dirs().map(Path::to_path_buf).collect();
    let started = std::time::Instant::now();
    drop(cg);
    assert!(started.elapsed() < Duration::from_secs(5));
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let status = process.wait_exit(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(9));
}

/// The registry serves the fixtures, keeps them across a restart, and lists every
/// platform of the multi-arch index.
#[test]
fn registry_serves_fixture_images() {
    flotilla_tests::require_root!();
    let mut registry = Registry::start();
    let busybox = registry.push_busybox("library/busybox:1");
    assert_eq!(busybox, format!("{}/library/busybox:1", registry.addr()));
    let digest = fixtures::layout_digest(&fixtures::busybox_layout(), fixtures::TAG).unwrap();
    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo_inspect(&registry, &busybox, &[]).unwrap()).unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());

    let multi = registry.push_multiarch("multi:latest");
    let raw: serde_json::Value =
        serde_json::from_str(&skopeo_inspect(&registry, &multi, &["--raw"]).unwrap()).unwrap();
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            match p["variant"].as_str() {
                Some(v) => format!(
                    "{}/{}/{v}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
                None => format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
            }
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);
    // Each platform's image is really there, with its marker layer.
    for arch in ["amd64", "arm64"] {
        let one: serde_json::Value = serde_json::from_str(
            &skopeo_inspect(&registry, &multi, &["--override-arch", arch]).unwrap(),
        )
        .unwrap();
        assert_eq!(one["Architecture"], arch);
        assert_eq!(one["Layers"].as_array().unwrap().len(), 2);
    }

    // Pulling one platform gets that platform's image, marker file included.
    let pulled = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:arm64", pulled.path().join("layout").display());
    registry
        .skopeo(&[
            "--override-arch",
            "arm64",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{multi}"),
            &dest,
        ])
        .unwrap();
    let bundle = pulled.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:arm64", pulled.path().join("layout").display()))
        .arg(&bundle))
    .unwrap();
    let marker = std::fs::read_to_string(bundle.join("rootfs").join(fixtures::PLATFORM_FILE));
    assert_eq!(marker.unwrap(), "linux/arm64\n");

    registry.restart();
    let again: serde_json::Value =
        serde_json::from_str(&skopeo_inspect(&registry, &busybox, &[]).unwrap()).unwrap();
    assert_eq!(again["Digest"], digest.as_str());
    registry.stop();
    assert!(skopeo_inspect(&registry, &busybox, &[]).is_err());
}

/// An htpasswd registry refuses anonymous and wrong credentials, accepts the right ones.
#[test]
fn htpasswd_registry_requires_credentials() {
    flotilla_tests::require_root!();
    let registry = Registry::start_with_htpasswd("fleet", "s3cret");
    let image = registry.push_busybox("private:1");
    let anonymous = skopeo_inspect(&registry, &image, &["--no-creds"]).unwrap_err();
    assert!(
        format!("{anonymous:#}").contains("unauthorized")
            || format!("{anonymous:#}").contains("authentication required"),
        "{anonymous:#}"
    );
    assert!(skopeo_inspect(&registry, &image, &["--creds", "fleet:wrong"]).is_err());
    skopeo_inspect(&registry, &image, &["--creds", "fleet:s3cret"]).unwrap();
}

/// A registry inside a node serves the other nodes of its LAN.
#[test]
fn registry_in_a_node_serves_the_lan() {
    flotilla_tests::require_root!();
    let lan = sandbox::Lan::new();
    let server = sandbox::Node::new("registry");
    let client = sandbox::Node::new("client");
    server.attach(&lan, "10.99.0.10/24").unwrap();
    client.attach(&lan, "10.99.0.11/24").unwrap();
    let registry = Registry::start_with(
        registry::Options::default().in_node(&server, "10.99.0.10".parse().unwrap()),
    );
    assert_eq!(registry.addr().ip().to_string(), "10.99.0.10");
    let image = registry.push_busybox("busybox:1");
    let mut inspect = fixtures::skopeo();
    inspect
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .env("NO_PROXY", "10.99.0.10");
    let out = client.run(&inspect).unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        inspect["Digest"],
        fixtures::layout_digest(&fixtures::busybox_layout(), fixtures::TAG).unwrap()
    );
}

fn skopeo_inspect(registry: &Registry, reference: &str, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = Vec::new();
    // --override-arch is a global option; the rest belong to `inspect`.
    if let Some(i) = extra.iter().position(|a| *a == "--override-arch") {
        args.extend(&extra[i..i + 2]);
        args.extend(["inspect", "--tls-verify=false"]);
        args.extend(extra[..i].iter().chain(&extra[i + 2..]));
    } else {
        args.extend(["inspect", "--tls-verify=false"]);
        args.extend(extra);
    }
    let target = format!("docker://{reference}");
    args.push(&target);
    registry.skopeo(&args)
}

/// A process's logs are printed into the output of a test that panics, and only then.
#[test]
fn process_logs_reach_the_failure_output() {
    const NAME: &str = "process_logs_reach_the_failure_output";
    if let Ok(mode) = std::env::var("FLOTILLA_HARNESS_CHILD") {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo marker-out-4711; echo marker-err-4712 >&2"]);
        let mut process = Process::spawn(cmd);
        process.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(mode != "fail", "deliberate failure");
        return;
    }
    // Failing: with libtest's usual capture, whose output is shown for failed tests.
    // Passing: with --nocapture, to see that nothing is printed at all.
    let child = |mode: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME])
            .args((mode == "pass").then_some("--nocapture"))
            .env("FLOTILLA_HARNESS_CHILD", mode)
            .env_remove("FLOTILLA_PRINT_LOGS")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, failed) = child("fail");
    assert!(!ok, "{failed}");
    assert!(failed.contains("deliberate failure"), "{failed}");
    assert!(failed.contains("marker-out-4711"), "{failed}");
    assert!(failed.contains("marker-err-4712"), "{failed}");
    let (ok, passed) = child("pass");
    assert!(ok, "{passed}");
    assert!(!passed.contains("marker-out-4711"), "{passed}");
}

/// Without root an e2e test reports itself skipped, or fails under CI=true /
/// FLOTILLA_E2E=1. Checked by running this test again as user nobody.
#[test]
fn require_root_skips_or_fails_without_root() {
    const NAME: &str = "require_root_skips_or_fails_without_root";
    if std::env::var_os("FLOTILLA_HARNESS_CHILD").is_some() {
        flotilla_tests::require_root!();
        panic!("require_root! let a test run without root");
    }
    flotilla_tests::require_root!();
    // A copy of this executable that nobody may run, wherever the target dir is.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("harness");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |env: &[(&str, &str)]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(["--exact", NAME, "--nocapture"])
            .current_dir("/")
            .env("FLOTILLA_HARNESS_CHILD", "1")
            .env_remove("CI")
            .env_remove("FLOTILLA_E2E")
            .envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = as_nobody(&[]);
    assert!(ok && text.contains("SKIPPED"), "{text}");
    for env in [("CI", "true"), ("FLOTILLA_E2E", "1")] {
        let (ok, text) = as_nobody(&[env]);
        assert!(!ok && text.contains("needs root"), "{env:?}: {text}");
        assert!(!text.contains("let a test run"), "{text}");
    }
}
