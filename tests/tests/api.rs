//! End-to-end tests of the Kubernetes API server: the real `flotilla-controller serve`
//! on loopback, driven by the real `kubectl` and the Python `kubernetes` client.
//! They need no root, so they always run (never skipped).

use flotilla_tests::kube::{kubectl, spawn_controller};
use flotilla_tests::process::Process;
use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A controller on 127.0.0.1 with its own data directory.
struct Controller {
    proc: Process,
    dir: tempfile::TempDir,
    port: u16,
}

impl Controller {
    fn start() -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = flotilla_tests::free_port();
        let proc = spawn_controller(dir.path(), port, &[]);
        let mut c = Controller { proc, dir, port };
        c.wait_ready();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn wait_ready(&mut self) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        self.proc
            .wait_for_tcp(addr, Duration::from_secs(20))
            .expect("controller listens");
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data().join("admin.kubeconfig")
    }

    fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl(kubeconfig, args, stdin)
    }

    /// kubectl as admin; panics (with output) unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_as(&self.kubeconfig(), args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}\ncontroller log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.proc.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl as admin; panics unless it fails; returns stderr.
    fn fails_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_as(kubeconfig, args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl prints JSON")
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
data:
  greeting: hello
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: shop
stringData:
  password: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: ["httpd", "-f"]
        ports:
        - containerPort: 80
        env:
        - name: GREETING
          valueFrom:
            configMapKeyRef: {name: web-config, key: greeting}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 80
"#;

#[test]
fn kubectl_apply_read_change_watch_delete() {
    let c = Controller::start();
    let file = c.dir.path().join("app.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let f = file.to_str().unwrap();
    let out = c.ok(&["apply", "-f", f]);
    for line in [
        "namespace/shop created",
        "configmap/web-config created",
        "secret/web-secret created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(out.contains(line), "apply output lacks {line:?}:\n{out}");
    }

    // Read back: defaults filled in, server-side fields set.
    let yaml = c.ok(&["get", "deployment", "web", "-n", "shop", "-o", "yaml"]);
    assert!(yaml.contains("imagePullPolicy: IfNotPresent"), "{yaml}");
    assert!(yaml.contains("type: RollingUpdate"), "{yaml}");
    let dep = c.json(&["get", "deployment", "web", "-n", "shop"]);
    assert_eq!(dep["metadata"]["generation"], 1);
    assert!(dep["metadata"]["uid"].as_str().unwrap().len() == 36);
    let secret = c.json(&["get", "secret", "web-secret", "-n", "shop"]);
    assert_eq!(secret["data"]["password"], "czNjcmV0");
    let svc = c.json(&["get", "service", "web", "-n", "shop"]);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.43.")
    );
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);

    // Server-side printing with kubectl's columns.
    let table = c.ok(&["get", "deployments", "-n", "shop"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("READY") && table.contains("UP-TO-DATE") && table.contains("AVAILABLE"),
        "{table}"
    );
    let table = c.ok(&["get", "services", "-n", "shop"]);
    assert!(
        table.contains("CLUSTER-IP") && table.contains("80/TCP"),
        "{table}"
    );

    // A watcher sees the change.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args([
            "get",
            "configmap",
            "web-config",
            "-n",
            "shop",
            "-w",
            "-o",
            "jsonpath={.data.color}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));

    // Change and re-apply: a field removed from the manifest disappears.
    let changed = MANIFEST
        .replace("  color: blue\n", "  color: green\n  size: big\n")
        .replace("replicas: 2", "replicas: 3")
        .replace(
            "        env:\n        - name: GREETING\n          valueFrom:\n            configMapKeyRef: {name: web-config, key: greeting}\n",
            "",
        );
    std::fs::write(&file, &changed).unwrap();
    let out = c.ok(&["apply", "-f", f]);
    assert!(out.contains("configmap/web-config configured"), "{out}");
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let dep2 = c.json(&["get", "deployment", "web", "-n", "shop"]);
    assert_eq!(dep2["spec"]["replicas"], 3);
    assert!(
        dep2["spec"]["template"]["spec"]["containers"][0]
            .get("env")
            .is_none(),
        "env removed: {dep2}"
    );
    assert_eq!(dep2["metadata"]["generation"], 2);
    let rv1: u64 = dep["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rv2: u64 = dep2["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);

    let removal = changed.replace("  size: big\n", "");
    std::fs::write(&file, &removal).unwrap();
    c.ok(&["apply", "-f", f]);
    let cm = c.json(&["get", "configmap", "web-config", "-n", "shop"]);
    assert_eq!(
        cm["data"],
        serde_json::json!({"greeting": "hello", "color": "green"})
    );

    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = watch.wait();
    let mut seen = String::new();
    watch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut seen)
        .unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.first(), Some(&"blue"), "watch output: {seen:?}");
    assert!(lines.contains(&"green"), "watch saw the change: {seen:?}");

    // Scale, label, annotate.
    c.ok(&["scale", "deployment/web", "-n", "shop", "--replicas=5"]);
    c.ok(&[
        "label",
        "configmap",
        "web-config",
        "-n",
        "shop",
        "tier=front",
    ]);
    c.ok(&[
        "annotate",
        "configmap",
        "web-config",
        "-n",
        "shop",
        "note=hi",
    ]);
    let cm = c.json(&["get", "configmap", "web-config", "-n", "shop"]);
    assert_eq!(cm["metadata"]["labels"]["tier"], "front");
    assert_eq!(cm["metadata"]["annotations"]["note"], "hi");
    assert_eq!(
        c.json(&["get", "deployment", "web", "-n", "shop"])["spec"]["replicas"],
        5
    );
    let selected = c.ok(&[
        "get",
        "configmaps",
        "-n",
        "shop",
        "-l",
        "tier=front",
        "-o",
        "name",
    ]);
    assert_eq!(selected.trim(), "configmap/web-config");
    let described = c.ok(&["describe", "deployment", "web", "-n", "shop"]);
    assert!(described.contains("5 desired"), "{described}");
    let explained = c.ok(&["explain", "deployment.spec"]);
    assert!(explained.contains("replicas"), "{explained}");

    // Delete everything the manifest made; the namespace goes away with its contents.
    let out = c.ok(&["delete", "-f", f, "--wait=false"]);
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    wait_until(
        "namespace shop to be removed",
        Duration::from_secs(20),
        || {
            !c.kubectl_as(&c.kubeconfig(), &["get", "namespace", "shop"], None)
                .status
                .success()
        },
    );
    let left = c.ok(&["get", "configmaps", "-A", "-o", "name"]);
    assert!(!left.contains("web-config"), "{left}");
}

#[test]
fn stale_updates_conflict_and_bad_manifests_get_field_errors() {
    let c = Controller::start();
    c.ok_in(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  namespace: default\ndata:\n  a: '1'\n"),
    );
    let cm = c.json(&["get", "configmap", "c1"]);
    let mut first = cm.clone();
    first["data"]["a"] = "2".into();
    let mut second = cm.clone();
    second["data"]["a"] = "3".into();
    c.ok_in(&["replace", "-f", "-"], Some(&first.to_string()));
    let err = c.fails_as(
        &c.kubeconfig(),
        &["replace", "-f", "-"],
        Some(&second.to_string()),
    );
    assert!(
        err.contains("Conflict") || err.contains("the object has been modified"),
        "{err}"
    );
    assert_eq!(c.json(&["get", "configmap", "c1"])["data"]["a"], "2");

    // Server-side apply: fields a manager stops applying go away; another manager
    // changing them conflicts unless it forces.
    let ssa = |data: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: s1, namespace: default}}\ndata: {data}\n"
        )
    };
    c.ok_in(
        &["apply", "--server-side", "-f", "-"],
        Some(&ssa("{a: '1', b: '2'}")),
    );
    c.ok_in(
        &["apply", "--server-side", "-f", "-"],
        Some(&ssa("{a: '1'}")),
    );
    assert_eq!(
        c.json(&["get", "configmap", "s1"])["data"],
        serde_json::json!({"a": "1"})
    );
    let err = c.fails_as(
        &c.kubeconfig(),
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        Some(&ssa("{a: 'X'}")),
    );
    assert!(err.contains("conflict with \"kubectl\""), "{err}");
    c.ok_in(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&ssa("{a: 'X'}")),
    );
    assert_eq!(c.json(&["get", "configmap", "s1"])["data"]["a"], "X");

    let no_image = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  selector:\n    matchLabels: {app: bad}\n  template:\n    metadata:\n      labels: {app: bad}\n    spec:\n      containers:\n      - name: c\n";
    let err = c.fails_as(&c.kubeconfig(), &["apply", "-f", "-"], Some(no_image));
    assert!(
        err.contains("spec.template.spec.containers[0].image: Required value"),
        "{err}"
    );

    let unknown =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\ndata: {a: b}\nbogus: 1\n";
    let err = c.fails_as(&c.kubeconfig(), &["apply", "-f", "-"], Some(unknown));
    assert!(err.contains("unknown field \"bogus\""), "{err}");

    let mismatch = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad2\nspec:\n  selector:\n    matchLabels: {app: a}\n  template:\n    metadata:\n      labels: {app: b}\n    spec:\n      containers:\n      - {name: c, image: x}\n";
    let err = c.fails_as(&c.kubeconfig(), &["apply", "-f", "-"], Some(mismatch));
    assert!(
        err.contains("spec.template.metadata.labels") && err.contains("does not match"),
        "{err}"
    );

    let no_ns = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c3\n  namespace: nowhere\n";
    let err = c.fails_as(&c.kubeconfig(), &["apply", "-f", "-"], Some(no_ns));
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
    assert!(
        !c.kubectl_as(&c.kubeconfig(), &["get", "deployment", "bad"], None)
            .status
            .success()
    );
}

#[test]
fn viewer_reads_only_and_nodes_see_only_what_their_pods_use() {
    let c = Controller::start();
    let viewer = c.data().join("viewer.kubeconfig");
    c.ok_in(
        &["apply", "-f", "-"],
        Some(concat!(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: used, namespace: default}\nstringData: {k: v}\n---\n",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: unused, namespace: default}\nstringData: {k: v}\n---\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: busybox\n    env:\n    - name: K\n      valueFrom: {secretKeyRef: {name: used, key: k}}\n",
        )),
    );
    // Viewer: reads, cannot write, cannot read secrets.
    let out = c.kubectl_as(&viewer, &["get", "pods"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = c.fails_as(
        &viewer,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: v, namespace: default}\n"),
    );
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    let err = c.fails_as(&viewer, &["delete", "pod", "p"], None);
    assert!(err.contains("forbidden"), "{err}");

    // A node credential from the CA.
    let node_cfg = c.dir.path().join("n1.kubeconfig");
    let status = Command::new(flotilla_tests::bin("flotilla-controller"))
        .args(["node-credential", "--name", "n1", "--server"])
        .arg(format!("https://127.0.0.1:{}", c.port))
        .arg("--data-dir")
        .arg(c.data())
        .arg("--out")
        .arg(&node_cfg)
        .status()
        .unwrap();
    assert!(status.success());
    let out = c.kubectl_as(&node_cfg, &["get", "secret", "used", "-o", "name"], None);
    assert!(
        out.status.success(),
        "node reads a secret its pod uses: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = c.fails_as(&node_cfg, &["get", "secret", "unused"], None);
    assert!(
        err.contains("forbidden") && err.contains("system:node:n1"),
        "{err}"
    );
    let err = c.fails_as(&node_cfg, &["get", "pods", "-A"], None);
    assert!(err.contains("forbidden"), "{err}");
    let mine = c.kubectl_as(
        &node_cfg,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "name",
        ],
        None,
    );
    assert!(
        mine.status.success(),
        "{}",
        String::from_utf8_lossy(&mine.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&mine.stdout).trim(), "pod/p");

    // No credential at all: 401.
    let anon = c.dir.path().join("anon.kubeconfig");
    let text = std::fs::read_to_string(&viewer).unwrap();
    let token_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .unwrap();
    std::fs::write(&anon, text.replace(token_line, "    token: wrong")).unwrap();
    let err = c.fails_as(&anon, &["get", "pods"], None);
    assert!(
        err.contains("Unauthorized") || err.contains("credentials"),
        "{err}"
    );
}

#[test]
fn kill_9_after_apply_loses_nothing() {
    let mut c = Controller::start();
    let mut manifest = String::new();
    for i in 0..20 {
        manifest.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{i}, namespace: default}}\ndata: {{num: '{i}'}}\n---\n"
        ));
    }
    c.ok_in(&["apply", "-f", "-"], Some(&manifest));
    // SIGKILL right after the successful reply: no chance to flush anything.
    c.proc.kill();
    c.proc = spawn_controller(c.dir.path(), c.port, &[]);
    c.wait_ready();
    let list = c.json(&["get", "configmaps", "-n", "default"]);
    let items = list["items"].as_array().unwrap();
    let mut max_rv = 0u64;
    for i in 0..20 {
        let cm = items
            .iter()
            .find(|x| x["metadata"]["name"] == format!("cm{i}"))
            .unwrap_or_else(|| panic!("cm{i} survived the crash"));
        assert_eq!(cm["data"]["num"], i.to_string());
        max_rv = max_rv.max(
            cm["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    c.ok(&["label", "configmap", "cm0", "after=restart"]);
    let rv: u64 = c.json(&["get", "configmap", "cm0"])["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rv > max_rv,
        "resourceVersions keep increasing: {rv} > {max_rv}"
    );
}

#[test]
fn python_kubernetes_client_lists_watches_and_creates() {
    let c = Controller::start();
    let script = c.dir.path().join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(c.kubeconfig())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (needs `pip install kubernetes`):\n{stdout}\n{stderr}\ncontroller log:\n{}",
        c.proc.output()
    );
    assert!(
        stdout.contains("namespaces: default,kube-node-lease,kube-public,kube-system"),
        "{stdout}"
    );
    assert!(stdout.contains("created py-cm"), "{stdout}");
    assert!(stdout.contains("watched ADDED py-cm"), "{stdout}");
    assert!(stdout.contains("watched MODIFIED py-cm"), "{stdout}");
    assert_eq!(
        c.json(&["get", "configmap", "py-cm"])["data"]["from"],
        "python-updated"
    );
}

const PYTHON_CLIENT: &str = r#"
import sys, threading, time
from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
names = sorted(ns.metadata.name for ns in v1.list_namespace().items)
print("namespaces: " + ",".join(names), flush=True)
rv = v1.list_namespaced_config_map("default").metadata.resource_version

seen = []
def watcher():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name))
        if len(seen) >= 2:
            w.stop()
t = threading.Thread(target=watcher)
t.start()
time.sleep(0.5)
body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm"), data={"from": "python"})
created = v1.create_namespaced_config_map("default", body)
print("created " + created.metadata.name, flush=True)
v1.patch_namespaced_config_map("py-cm", "default", {"data": {"from": "python-updated"}})
t.join(15)
for kind, name in seen:
    print("watched %s %s" % (kind, name), flush=True)
"#;

#[test]
fn owner_references_are_garbage_collected() {
    let c = Controller::start();
    let cm = |name: &str, owner: Option<(&str, &str)>| {
        let refs = owner
            .map(|(n, uid)| format!("\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: {n}, uid: {uid}}}]"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default{refs}\n"
        )
    };
    let uid = |name: &str| {
        c.json(&["get", "configmap", name])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let exists = |name: &str| {
        c.kubectl_as(&c.kubeconfig(), &["get", "configmap", name], None)
            .status
            .success()
    };
    // Background: the dependent goes after its owner.
    c.ok_in(&["apply", "-f", "-"], Some(&cm("owner", None)));
    let u = uid("owner");
    c.ok_in(
        &["apply", "-f", "-"],
        Some(&cm("child", Some(("owner", &u)))),
    );
    c.ok(&["delete", "configmap", "owner"]);
    wait_until(
        "the dependent to be collected",
        Duration::from_secs(10),
        || !exists("child"),
    );

    // Orphan: the dependent stays, without the owner reference.
    c.ok_in(&["apply", "-f", "-"], Some(&cm("owner2", None)));
    let u = uid("owner2");
    c.ok_in(
        &["apply", "-f", "-"],
        Some(&cm("kept", Some(("owner2", &u)))),
    );
    c.ok(&["delete", "configmap", "owner2", "--cascade=orphan"]);
    std::thread::sleep(Duration::from_millis(500));
    let kept = c.json(&["get", "configmap", "kept"]);
    assert!(kept["metadata"].get("ownerReferences").is_none(), "{kept}");

    // Foreground: the owner waits (deletionTimestamp + finalizer) until the
    // dependent is gone, then goes too.
    c.ok_in(&["apply", "-f", "-"], Some(&cm("owner3", None)));
    let u = uid("owner3");
    c.ok_in(
        &["apply", "-f", "-"],
        Some(&cm("child3", Some(("owner3", &u)))),
    );
    c.ok(&[
        "delete",
        "configmap",
        "owner3",
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_until(
        "foreground deletion to finish",
        Duration::from_secs(10),
        || !exists("owner3") && !exists("child3"),
    );
}

/// kubectl's typed generators send protobuf bodies; each object reads back as
/// Kubernetes would store it, and `kubectl create -f` (JSON) works as before.
#[test]
fn kubectl_create_generators_send_protobuf_bodies() {
    let c = Controller::start();
    c.ok(&["create", "namespace", "pb"]);
    let ns = c.json(&["get", "namespace", "pb"]);
    assert_eq!(ns["status"]["phase"], "Active", "{ns}");
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]));

    c.ok(&[
        "create",
        "configmap",
        "conf",
        "-n",
        "pb",
        "--from-literal=greeting=hello",
        "--from-literal=empty=",
    ]);
    let cm = c.json(&["get", "configmap", "conf", "-n", "pb"]);
    assert_eq!(cm["data"]["greeting"], "hello", "{cm}");
    assert_eq!(cm["data"]["empty"], "", "{cm}");
    assert!(
        cm["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(cm["metadata"].get("generation").is_none(), "{cm}");

    // Non-UTF-8 file contents travel as protobuf bytes and land in binaryData.
    let blob: Vec<u8> = (0..=255u8).rev().collect();
    let file = c.dir.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    let from_file = format!("--from-file={}", file.display());
    c.ok(&["create", "configmap", "binary", "-n", "pb", &from_file]);
    let got = c.ok(&[
        "get",
        "configmap",
        "binary",
        "-n",
        "pb",
        "-o",
        r"jsonpath={.binaryData.blob\.bin}",
    ]);
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write as _;
            ch.stdin.take().unwrap().write_all(got.trim().as_bytes())?;
            ch.wait_with_output()
        })
        .expect("base64 runs");
    assert_eq!(decoded.stdout, blob, "binaryData round trip: {got}");

    c.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "pb",
        "--from-literal=password=s3cr3t",
    ]);
    let s = c.json(&["get", "secret", "creds", "-n", "pb"]);
    assert_eq!(
        s["data"]["password"], "czNjcjN0",
        "bytes arrive base64 encoded: {s}"
    );
    assert_eq!(s["type"], "Opaque");

    c.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "pb",
        "--image=busybox:1.36",
        "--replicas=0",
        "--port=8080",
    ]);
    let d = c.json(&["get", "deployment", "web", "-n", "pb"]);
    assert_eq!(d["spec"]["replicas"], 0, "an explicit zero survives: {d}");
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate", "{d}");
    let ctr = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(ctr["image"], "busybox:1.36");
    assert_eq!(ctr["ports"][0]["containerPort"], 8080);
    assert_eq!(ctr["imagePullPolicy"], "IfNotPresent");
    assert!(
        ctr.get("stdin").is_none() && ctr.get("tty").is_none(),
        "{ctr}"
    );
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");

    c.ok(&[
        "create",
        "service",
        "clusterip",
        "api",
        "-n",
        "pb",
        "--tcp=80:8080",
    ]);
    let svc = c.json(&["get", "service", "api", "-n", "pb"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080, "{svc}");
    assert!(svc["spec"]["ports"][0].get("nodePort").is_none(), "{svc}");
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43."))
    );
    c.ok(&[
        "create",
        "service",
        "nodeport",
        "edge",
        "-n",
        "pb",
        "--tcp=443",
    ]);
    let np = c.json(&["get", "service", "edge", "-n", "pb"]);
    let port = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&port), "{np}");
    assert_eq!(np["spec"]["ports"][0]["targetPort"], 443, "{np}");

    c.ok(&["create", "serviceaccount", "robot", "-n", "pb"]);
    assert_eq!(
        c.json(&["get", "serviceaccount", "robot", "-n", "pb"])["metadata"]["name"],
        "robot"
    );

    c.ok(&[
        "create",
        "job",
        "once",
        "-n",
        "pb",
        "--image=busybox:1.36",
        "--",
        "echo",
        "hi",
    ]);
    let j = c.json(&["get", "job", "once", "-n", "pb"]);
    let jc = &j["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(jc["command"], serde_json::json!(["echo", "hi"]), "{j}");
    assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(j["spec"]["backoffLimit"], 6);

    // JSON bodies still work.
    c.ok_in(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-json, namespace: pb}\ndata: {k: v}\n"),
    );
    assert_eq!(
        c.json(&["get", "configmap", "from-json", "-n", "pb"])["data"]["k"],
        "v"
    );
}

/// A client that accepts only protobuf gets 406 with a Status naming the types this
/// server writes; one that also takes JSON gets JSON.
#[test]
fn protobuf_only_clients_get_not_acceptable() {
    let c = Controller::start();
    let script = c.dir.path().join("accept.py");
    std::fs::write(&script, ACCEPT_CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(c.kubeconfig())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("protobuf-only: 406"), "{stdout}");
    assert!(stdout.contains("NotAcceptable"), "{stdout}");
    assert!(stdout.contains("both: 200 application/json {"), "{stdout}");
}

const ACCEPT_CLIENT: &str = r#"
import sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
api = client.ApiClient()
cfg = api.configuration
auth = cfg.get_api_key_with_prefix("BearerToken") or cfg.api_key.get("authorization")
def get(accept):
    r = api.call_api("GET", cfg.host + "/api/v1/namespaces/default/configmaps",
                     header_params={"Accept": accept, "Authorization": auth})
    body = r.read()
    return "%d %s %s" % (r.status, r.getheader("content-type"), body.decode()[:300])
print("protobuf-only: " + get("application/vnd.kubernetes.protobuf"), flush=True)
print("both: " + get("application/vnd.kubernetes.protobuf, application/json"), flush=True)
"#;

/// Pod specs change only where Kubernetes allows; other immutable fields too.
#[test]
fn updates_respect_immutable_fields() {
    let c = Controller::start();
    c.ok(&["run", "app", "--image=busybox:1.36", "--", "sleep", "3600"]);
    c.ok(&["set", "image", "pod/app", "app=busybox:1.37"]);
    assert_eq!(
        c.json(&["get", "pod", "app"])["spec"]["containers"][0]["image"],
        "busybox:1.37"
    );
    let kc = c.kubeconfig();
    let err = c.fails_as(
        &kc,
        &[
            "patch",
            "pod",
            "app",
            "-p",
            r#"{"spec":{"containers":[{"name":"app","workingDir":"/tmp"}]}}"#,
        ],
        None,
    );
    assert!(
        err.contains("The Pod \"app\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"),
        "{err}"
    );
    assert!(
        err.contains("spec.containers[0].workingDir"),
        "the diff names the field: {err}"
    );
    // activeDeadlineSeconds may be set and lowered, not raised.
    c.ok(&[
        "patch",
        "pod",
        "app",
        "-p",
        r#"{"spec":{"activeDeadlineSeconds":600}}"#,
    ]);
    c.ok(&[
        "patch",
        "pod",
        "app",
        "-p",
        r#"{"spec":{"activeDeadlineSeconds":300}}"#,
    ]);
    let err = c.fails_as(
        &kc,
        &[
            "patch",
            "pod",
            "app",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":900}}"#,
        ],
        None,
    );
    assert!(err.contains("spec.activeDeadlineSeconds: Invalid value: 900: must be less than or equal to previous value"), "{err}");
    // Tolerations may be added, not removed.
    c.ok(&[
        "patch",
        "pod",
        "app",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/tolerations","value":[{"key":"a","operator":"Exists"}]}]"#,
    ]);
    c.ok(&[
        "patch",
        "pod",
        "app",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/tolerations/-","value":{"key":"b","operator":"Exists"}}]"#,
    ]);
    let err = c.fails_as(
        &kc,
        &[
            "patch",
            "pod",
            "app",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/tolerations/0"}]"#,
        ],
        None,
    );
    assert!(
        err.contains("spec: Forbidden: pod updates may not change fields"),
        "{err}"
    );
    let pod = c.json(&["get", "pod", "app"]);
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], 300);
    assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
    // Labels (metadata) stay free.
    c.ok(&["label", "pod", "app", "tier=web"]);

    // ConfigMaps and Secrets marked immutable keep their data.
    c.ok(&["create", "configmap", "frozen", "--from-literal=a=1"]);
    c.ok(&[
        "patch",
        "configmap",
        "frozen",
        "-p",
        r#"{"immutable":true}"#,
    ]);
    let err = c.fails_as(
        &kc,
        &[
            "patch",
            "configmap",
            "frozen",
            "-p",
            r#"{"data":{"a":"2"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    let err = c.fails_as(
        &kc,
        &[
            "patch",
            "configmap",
            "frozen",
            "-p",
            r#"{"immutable":false}"#,
        ],
        None,
    );
    assert!(err.contains("immutable: Forbidden"), "{err}");
    c.ok(&["label", "configmap", "frozen", "still=labelable"]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "sealed",
        "--from-literal=k=v",
    ]);
    c.ok(&["patch", "secret", "sealed", "-p", r#"{"immutable":true}"#]);
    let err = c.fails_as(
        &kc,
        &[
            "patch",
            "secret",
            "sealed",
            "-p",
            r#"{"data":{"k":"dw=="}}"#,
        ],
        None,
    );
    assert!(
        err.contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    let err = c.fails_as(
        &kc,
        &[
            "patch",
            "secret",
            "sealed",
            "-p",
            r#"{"type":"kubernetes.io/tls"}"#,
        ],
        None,
    );
    assert!(
        err.contains("type: Invalid value: \"kubernetes.io/tls\": field is immutable"),
        "{err}"
    );

    // A Job's template is fixed once created.
    c.ok(&[
        "create",
        "job",
        "once",
        "--image=busybox:1.36",
        "--",
        "true",
    ]);
    let err = c.fails_as(
        &kc,
        &["patch", "job", "once", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"busybox:1.37"}]"#],
        None,
    );
    assert!(err.contains("spec.template: Invalid value"), "{err}");
    assert!(err.contains("field is immutable"), "{err}");
}

/// `kubectl get -w -l`: objects entering the selector arrive as ADDED, leaving it
/// as DELETED (with the last state that matched and the event's resourceVersion, as
/// Kubernetes' watch cache sends it), changes outside it not at all.
#[test]
fn selector_watches_see_objects_enter_and_leave() {
    let c = Controller::start();
    c.ok(&["create", "configmap", "a", "--from-literal=k=1"]);
    c.ok(&["label", "configmap", "a", "app=web"]);
    c.ok(&["create", "configmap", "outside", "--from-literal=k=1"]);
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args([
            "get",
            "configmaps",
            "-l",
            "app=web",
            "-w",
            "--output-watch-events",
        ])
        .args([
            "-o",
            r#"jsonpath={.type} {.object.metadata.name} {.object.data.k} {.object.metadata.labels.app} {.object.metadata.resourceVersion}{"\n"}"#,
        ]);
    let mut w = Process::spawn(cmd).named("kubectl-watch");
    let wait = |w: &mut Process, n: usize, what: &str| {
        w.wait_until(what, Duration::from_secs(15), |p| {
            p.stdout().lines().count() >= n
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", w.output()));
    };
    wait(&mut w, 1, "the initial list");
    c.ok(&["label", "configmap", "a", "app=db", "--overwrite"]);
    let left = c
        .ok(&[
            "get",
            "configmap",
            "a",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .to_owned();
    wait(&mut w, 2, "a leaving the selector");
    c.ok(&["patch", "configmap", "a", "-p", r#"{"data":{"k":"2"}}"#]);
    c.ok(&[
        "patch",
        "configmap",
        "outside",
        "-p",
        r#"{"data":{"k":"2"}}"#,
    ]);
    c.ok(&["label", "configmap", "outside", "app=web"]);
    wait(&mut w, 3, "outside entering the selector");
    c.ok(&[
        "patch",
        "configmap",
        "outside",
        "-p",
        r#"{"data":{"k":"3"}}"#,
    ]);
    wait(&mut w, 4, "a change inside the selector");
    c.ok(&["delete", "configmap", "outside"]);
    c.ok(&["delete", "configmap", "a"]);
    wait(&mut w, 5, "the deletion");
    std::thread::sleep(Duration::from_millis(500));
    w.stop();
    let lines: Vec<Vec<String>> = w
        .stdout()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    let expected: Vec<Vec<&str>> = vec![
        vec!["ADDED", "a", "1", "web"],
        vec!["DELETED", "a", "1", "web"],
        vec!["ADDED", "outside", "2", "web"],
        vec!["MODIFIED", "outside", "3", "web"],
        vec!["DELETED", "outside", "3", "web"],
    ];
    let seen: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.iter().take(4).map(String::as_str).collect())
        .collect();
    assert_eq!(seen, expected, "{}", w.output());
    // The DELETED of `a` has the resourceVersion of the write that relabeled it.
    assert_eq!(lines[1].get(4), Some(&left), "{}", w.output());
    let rvs: Vec<u64> = lines.iter().map(|l| l[4].parse().unwrap()).collect();
    assert!(rvs.is_sorted(), "resourceVersions go back: {rvs:?}");
}

/// ClusterIPs and NodePorts return to the pool when their Service goes, without a
/// restart, and are never handed out twice, also across a restart.
#[test]
fn service_addresses_are_freed_on_delete_and_never_doubled() {
    let mut c = Controller::start();
    let create = |c: &Controller, name: &str, extra: &[&str]| -> Value {
        let mut args = vec!["create", "service", "nodeport", name, "--tcp=80"];
        args.extend_from_slice(extra);
        c.ok(&args);
        c.json(&["get", "service", name])
    };
    let addr = |s: &Value| {
        (
            s["spec"]["clusterIP"].as_str().unwrap().to_owned(),
            s["spec"]["ports"][0]["nodePort"].as_i64().unwrap(),
        )
    };
    let first = addr(&create(&c, "first", &["--node-port=30123"]));
    let kc = c.kubeconfig();
    let err = c.fails_as(
        &kc,
        &[
            "create",
            "service",
            "nodeport",
            "clash",
            "--tcp=80",
            "--node-port=30123",
        ],
        None,
    );
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 30123: provided port is already allocated"
        ),
        "{err}"
    );
    let manifest = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    };
    let err = c.fails_as(
        &kc,
        &["create", "-f", "-"],
        Some(&manifest("ipclash", &first.0)),
    );
    assert!(err.contains("provided IP is already allocated"), "{err}");
    c.ok(&["delete", "service", "first"]);
    // Both are free again at once.
    let again = addr(&create(&c, "again", &["--node-port=30123"]));
    assert_eq!(again.1, 30123);
    c.ok(&["delete", "service", "again"]);
    c.ok_in(&["create", "-f", "-"], Some(&manifest("same-ip", &first.0)));
    assert_eq!(
        c.json(&["get", "service", "same-ip"])["spec"]["clusterIP"],
        first.0.as_str()
    );

    let mut seen = vec![first.0.clone()];
    let mut ports = vec![];
    for i in 0..3 {
        let (ip, port) = addr(&create(&c, &format!("svc{i}"), &[]));
        assert!(!seen.contains(&ip), "{ip} handed out twice");
        assert!(!ports.contains(&port), "{port} handed out twice");
        seen.push(ip);
        ports.push(port);
    }
    // A type change allocates a node port; an update may not take another's.
    c.ok(&["create", "service", "clusterip", "grow", "--tcp=80"]);
    c.ok(&[
        "patch",
        "service",
        "grow",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    let (ip, port) = addr(&c.json(&["get", "service", "grow"]));
    assert!(!ports.contains(&port), "{port} handed out twice");
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/ports/0/nodePort","value":{}}}]"#,
        ports[0]
    );
    let err = c.fails_as(
        &kc,
        &["patch", "service", "grow", "--type=json", "-p", &patch],
        None,
    );
    assert!(err.contains("provided port is already allocated"), "{err}");
    seen.push(ip);
    ports.push(port);
    c.proc.kill();
    c.proc = spawn_controller(c.dir.path(), c.port, &[]);
    c.wait_ready();
    for i in 3..6 {
        let (ip, port) = addr(&create(&c, &format!("svc{i}"), &[]));
        assert!(
            !seen.contains(&ip),
            "{ip} handed out twice across a restart"
        );
        assert!(
            !ports.contains(&port),
            "{port} handed out twice across a restart"
        );
        seen.push(ip);
        ports.push(port);
    }
}

/// An idle watch with bookmarks still learns how far the store has moved: its BOOKMARK
/// carries a resourceVersion past writes to other kinds, so a client that resumes from
/// it does not replay (or get 410 for) history it never needed.
#[test]
fn idle_watch_bookmarks_follow_the_store() {
    let c = Controller::start();
    c.ok(&["create", "configmap", "before", "--from-literal=a=1"]);
    let start: u64 = c
        .ok(&[
            "get",
            "configmap",
            "before",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .unwrap();
    let kubeconfig = c.kubeconfig();
    let watch = std::thread::spawn(move || {
        kubectl(
            &kubeconfig,
            &[
                "get",
                "--raw",
                &format!(
                    "/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion={start}&timeoutSeconds=17"
                ),
            ],
            None,
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    // Writes to another kind only: the configmap watch itself sees no event.
    c.ok(&["create", "namespace", "elsewhere"]);
    let later: u64 = c
        .ok(&[
            "get",
            "namespace",
            "elsewhere",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .unwrap();
    let out = watch.join().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    let bookmarks: Vec<u64> = body
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "BOOKMARK")
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        !bookmarks.is_empty(),
        "no BOOKMARK within the watch:\n{body}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bookmarks.iter().all(|&rv| rv >= later),
        "bookmarks {bookmarks:?} lag behind the store's revision {later}"
    );
}

/// The garbage collector's `orphan` finalizer however it gets there — the legacy
/// `orphanDependents: true` body, or a client that set it on the owner (then a delete
/// that names no policy orphans) — leaves the dependent without its owner reference;
/// an explicit Background policy (kubectl's default) or `orphanDependents: false`
/// overrides a client's finalizer and the dependent goes; a body with both the legacy
/// field and a policy is refused.
#[test]
fn orphan_finalizers_from_legacy_bodies_and_clients_are_honoured() {
    let c = Controller::start();
    let apply = |name: &str, extra: &str| {
        c.ok_in(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\n{extra}"
            )),
        );
    };
    // An owner (with these finalizers) and its dependent `<owner>-child`.
    let family = |owner: &str, finalizers: &str| {
        apply(owner, &format!("  finalizers: [{finalizers}]\n"));
        let uid = c.json(&["get", "configmap", owner])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();
        apply(
            &format!("{owner}-child"),
            &format!(
                "  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: {uid}}}]\n"
            ),
        );
    };
    let exists = |name: &str| {
        c.kubectl_as(&c.kubeconfig(), &["get", "configmap", name], None)
            .status
            .success()
    };
    let raw_delete = |name: &str, body: &str| {
        c.kubectl_as(
            &c.kubeconfig(),
            &[
                "delete",
                "--raw",
                &format!("/api/v1/namespaces/default/configmaps/{name}"),
                "-f",
                "-",
            ],
            Some(body),
        )
    };
    let orphaned = |owner: &str| {
        wait_until(&format!("{owner} to go"), Duration::from_secs(10), || {
            !exists(owner)
        });
        std::thread::sleep(Duration::from_secs(2));
        let child = c.json(&["get", "configmap", &format!("{owner}-child")]);
        assert!(
            child["metadata"].get("ownerReferences").is_none(),
            "{owner}'s dependent keeps its owner: {child}"
        );
        assert!(child["metadata"].get("deletionTimestamp").is_none());
    };
    let collected = |owner: &str| {
        wait_until(
            &format!("{owner} and its dependent to go"),
            Duration::from_secs(10),
            || !exists(owner) && !exists(&format!("{owner}-child")),
        );
    };

    family("legacy", "");
    let out = raw_delete(
        "legacy",
        r#"{"kind":"DeleteOptions","apiVersion":"v1","orphanDependents":true}"#,
    );
    assert!(out.status.success(), "{out:?}");
    orphaned("legacy");

    family("marked", "orphan");
    let out = raw_delete("marked", r#"{"kind":"DeleteOptions","apiVersion":"v1"}"#);
    assert!(out.status.success(), "{out:?}");
    orphaned("marked");

    family("overridden", "orphan");
    c.ok(&["delete", "configmap", "overridden", "--cascade=background"]);
    collected("overridden");

    family("legacy-false", "orphan");
    let out = raw_delete(
        "legacy-false",
        r#"{"kind":"DeleteOptions","apiVersion":"v1","orphanDependents":false}"#,
    );
    assert!(out.status.success(), "{out:?}");
    collected("legacy-false");

    family("both", "");
    let out = raw_delete(
        "both",
        r#"{"kind":"DeleteOptions","apiVersion":"v1","orphanDependents":true,"propagationPolicy":"Orphan"}"#,
    );
    assert!(!out.status.success(), "both set is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("orphanDependents and deletionPropagation cannot be both set"),
        "{err}"
    );
    assert!(exists("both"), "a refused delete deletes nothing");
    let owner = c.json(&["get", "configmap", "both"]);
    assert!(
        owner["metadata"].get("deletionTimestamp").is_none(),
        "{owner}"
    );
}

/// A watch without a resourceVersion (as the Python client's `watch.stream` sends it)
/// starts with one ADDED per object, streamed from a snapshot, then the changes after
/// it: with writes going on throughout, every write is either in an object's ADDED
/// state or arrives as its own MODIFIED, and none twice.
#[test]
fn watch_from_now_streams_initial_objects_then_every_later_change_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = Controller::start();
    let manifest: String = (0..150)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  v: \"0\"\n---\n"
            )
        })
        .collect();
    c.ok_in(&["apply", "-f", "-"], Some(&manifest));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kubeconfig, stop) = (c.kubeconfig(), stop.clone());
        std::thread::spawn(move || {
            let mut writes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("cm-{}", n % 10);
                let patch = format!(r#"{{"data":{{"v":"{n}"}}}}"#);
                let out = kubectl(
                    &kubeconfig,
                    &[
                        "patch",
                        "configmap",
                        &name,
                        "-p",
                        &patch,
                        "-o",
                        "jsonpath={.metadata.resourceVersion}",
                    ],
                    None,
                );
                assert!(out.status.success(), "{out:?}");
                let rv: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
                writes.push((name, rv));
            }
            writes
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let out = c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=3",
    ]);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let events: Vec<(String, String, u64)> = out
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let m = &e["object"]["metadata"];
            (
                e["type"].as_str().unwrap().to_owned(),
                m["name"].as_str().unwrap().to_owned(),
                m["resourceVersion"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let added: std::collections::HashMap<&str, u64> = events
        .iter()
        .filter(|(t, ..)| t == "ADDED")
        .map(|(_, n, rv)| (n.as_str(), *rv))
        .collect();
    assert_eq!(added.len(), 150, "one ADDED per object:\n{out}");
    assert_eq!(
        events
            .iter()
            .take(150)
            .filter(|(t, ..)| t == "ADDED")
            .count(),
        150,
        "the initial objects come first:\n{out}"
    );
    let mut seen = std::collections::HashSet::new();
    for (t, n, rv) in &events {
        assert!(seen.insert((n.as_str(), *rv)), "{t} {n} {rv} twice:\n{out}");
    }
    let changes: std::collections::HashSet<(&str, u64)> = events
        .iter()
        .filter(|(t, ..)| t == "MODIFIED")
        .map(|(_, n, rv)| (n.as_str(), *rv))
        .collect();
    let last = events.iter().map(|(.., rv)| *rv).max().unwrap();
    let mut modified = 0;
    for (name, rv) in writes.iter().filter(|(_, rv)| *rv <= last) {
        let in_snapshot = added[name.as_str()] >= *rv;
        let own_event = changes.contains(&(name.as_str(), *rv));
        assert!(
            in_snapshot != own_event,
            "write {name}@{rv}: in the initial state {in_snapshot}, as an event {own_event}:\n{out}"
        );
        modified += usize::from(own_event);
    }
    assert!(
        modified > 0,
        "no write arrived as MODIFIED:\n{out}\n{writes:?}"
    );
}
