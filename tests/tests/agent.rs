//! End-to-end tests of `flotilla-agent run` with both real binaries: a controller and
//! an agent in one sandbox node (their own network namespace, nothing on the host's
//! network), the busybox image dropped as an oci-archive in the agent's air-gap folder,
//! and the real `kubectl`. The node joins with the token and turns Ready, a pod runs
//! from the imported image, `kubectl logs` and `kubectl exec` reach it over the agent
//! link, it survives the agent being killed and started again (also while the
//! controller is down: the agent runs from local state and reconnects), and its
//! deletion leaves nothing in the runtime; a wrong token is refused with a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_tests::cgroup::TestCgroup;
use flotilla_tests::process::Process;
use flotilla_tests::sandbox::Node;
use flotilla_tests::{bin, fixtures, require_root};
use serde_json::Value;

const API: &str = "127.0.0.1:6443";
const HUB: &str = "127.0.0.1:6444";
const NODE: &str = "edge-1";
/// The name the air-gap import gives the fixture's oci-archive (its tag, no repository).
const IMAGE: &str = "localhost/busybox:latest";

/// A controller and (at times) an agent, inside one sandbox node.
struct Cluster {
    node: Node,
    dir: tempfile::TempDir,
    cg: TestCgroup,
    controller: Process,
}

impl Cluster {
    fn start(label: &str) -> Cluster {
        let node = Node::new(label);
        let cg = TestCgroup::new(label);
        let dir = tempfile::Builder::new()
            .prefix("flotilla-agent-e2e-")
            .tempdir()
            .unwrap();
        let controller = spawn_controller(&node, dir.path());
        Cluster {
            node,
            dir,
            cg,
            controller,
        }
    }

    /// Starts the controller again on the same data dir (after `controller.stop()`).
    fn restart_controller(&mut self) {
        self.controller = spawn_controller(&self.node, self.dir.path());
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller/node-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn agent_data(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Starts `flotilla-agent run` with `token` (None once joined) and extra flags.
    fn agent(&self, token: Option<&str>, extra: &[&str]) -> Process {
        let mut cmd = Command::new(bin("flotilla-agent"));
        cmd.arg("run")
            .arg("--server")
            .arg(format!("https://{HUB}"))
            .arg("--data-dir")
            .arg(self.agent_data())
            .arg("--runtime-root")
            .arg(self.runtime_root())
            .arg("--cgroup-root")
            .arg(format!("{}/pods", self.cg.path()))
            .arg("--registries")
            .arg(self.dir.path().join("registries.yaml"))
            .args(["--node-name", NODE, "--node-ip", "127.0.0.1"])
            .args(extra)
            .env("RUST_LOG", "info");
        if let Some(token) = token {
            cmd.env("FLOTILLA_TOKEN", token);
        }
        let netns = self.node.netns_path();
        Process::try_spawn(self.node.wrap_keeping_sys(&cmd), Some(&netns))
            .unwrap()
            .named("flotilla-agent")
    }

    /// Runs kubectl as admin inside the node.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("controller/admin.kubeconfig"))
            .args(["--request-timeout", "30s"])
            .args(args);
        let mut wrapped = self.node.wrap(&cmd);
        match stdin {
            Some(input) => {
                flotilla_tests::command::run_with_input(&mut wrapped, input.as_bytes()).unwrap()
            }
            None => flotilla_tests::command::output(&mut wrapped, Duration::from_secs(60)).unwrap(),
        }
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}\ncontroller log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.controller.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.kubectl(&a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until `check` holds, or panics with `what` and both logs.
    fn until(
        &self,
        agent: &Process,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let state = self.kubectl(&["get", "nodes,pods,events", "-o", "wide"], None);
        panic!(
            "timed out: {what}\n{}\nagent log:\n{}\ncontroller log:\n{}",
            String::from_utf8_lossy(&state.stdout),
            agent.output(),
            self.controller.output()
        );
    }

    fn node_ready(&self) -> bool {
        self.json(&["get", "node", NODE]).is_some_and(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    }

    fn pod(&self, name: &str) -> Option<Value> {
        self.json(&["get", "pod", name])
    }
}

/// `flotilla-controller serve` in `node` with its data in `dir/controller`, once both
/// its API and its hub listen.
fn spawn_controller(node: &Node, dir: &Path) -> Process {
    let mut cmd = Command::new(bin("flotilla-controller"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("controller"))
        .args(["--listen", API, "--hub-listen", HUB]);
    let mut controller = node.spawn(cmd).named("flotilla-controller");
    for addr in [API, HUB] {
        controller
            .wait_for_tcp(addr.parse().unwrap(), Duration::from_secs(60))
            .unwrap();
    }
    controller
}

fn pod_yaml(name: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", {script:?}]
"#
    )
}

fn running(pod: &Option<Value>) -> bool {
    pod.as_ref().is_some_and(|p| {
        p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    })
}

/// Containers the runtime still holds under `root`.
fn runtime_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn agent_joins_runs_pods_with_logs_and_exec_and_survives_a_restart() {
    require_root!();
    let mut cluster = Cluster::start("agent-run");
    // The air-gap folder: the image arrives as an oci-archive file, no registry.
    let images = cluster.agent_data().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(
        fixtures::busybox_oci_archive(),
        images.join("busybox.oci.tar"),
    )
    .unwrap();

    let token = cluster.token();
    let mut agent = cluster.agent(Some(&token), &["--node-label", "site=north"]);
    agent
        .wait_for_log("joined the cluster", Duration::from_secs(60))
        .unwrap();
    assert!(
        agent.output().contains("imported air-gap image"),
        "{}",
        agent.output()
    );
    let ls = Command::new(bin("flotilla-agent"))
        .args(["image", "ls", "--data-dir"])
        .arg(cluster.agent_data())
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(IMAGE) && l.contains("yes")),
        "the air-gap image is imported and pinned:\n{ls}"
    );
    for name in ["node.key", "node.crt", "ca.crt"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(cluster.agent_data().join("link").join(name))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{name} is private");
    }

    // The node registers from the agent's report and turns Ready.
    cluster.until(&agent, "node Ready", Duration::from_secs(60), || {
        cluster.node_ready()
    });
    let node = cluster.json(&["get", "node", NODE]).unwrap();
    assert_eq!(node["metadata"]["labels"]["site"], "north");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], NODE);
    assert!(node["status"]["capacity"]["cpu"].is_string());
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    let images = node["status"]["images"].to_string();
    assert!(images.contains("busybox"), "node images: {images}");

    // A pod from the imported image runs; logs and exec reach it through the link.
    let script = "trap 'exit 0' TERM; echo hello from the pod; while true; do sleep 1; done";
    cluster.ok(&["apply", "-f", "-"], Some(&pod_yaml("hello", script)));
    cluster.until(&agent, "pod Running", Duration::from_secs(90), || {
        running(&cluster.pod("hello"))
    });
    cluster.until(&agent, "kubectl logs", Duration::from_secs(30), || {
        let out = cluster.kubectl(&["logs", "hello"], None);
        String::from_utf8_lossy(&out.stdout) == "hello from the pod\n"
    });
    let out = cluster.kubectl(
        &["exec", "hello", "--", "sh", "-c", "echo in-pod; exit 3"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-pod\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "kubectl exec exits with the command's code"
    );
    let out = cluster.ok(&["exec", "hello", "--", "cat", "/etc/hostname"], None);
    assert_eq!(out.trim(), "hello");
    let out = cluster.ok(&["exec", "-i", "hello", "--", "wc", "-c"], Some("12345"));
    assert_eq!(out.trim(), "5", "stdin reaches the process and ends");

    // Killing the agent leaves the container running; a new agent adopts it.
    let before = cluster.pod("hello").unwrap();
    let container_id = before["status"]["containerStatuses"][0]["containerID"].clone();
    agent.kill();
    assert_eq!(
        runtime_entries(&cluster.runtime_root()).len(),
        1,
        "the container outlives the agent"
    );
    let mut agent = cluster.agent(None, &[]);
    agent
        .wait_for_log("connected to the controller", Duration::from_secs(60))
        .unwrap();
    assert!(
        !agent.output().contains("joined the cluster"),
        "no second join"
    );
    cluster.until(&agent, "node Ready again", Duration::from_secs(60), || {
        cluster.node_ready()
    });
    let after = cluster.pod("hello").unwrap();
    assert!(running(&Some(after.clone())), "{after}");
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        container_id
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(cluster.ok(&["logs", "hello"], None), "hello from the pod\n");
    assert_eq!(
        cluster.ok(&["exec", "hello", "--", "echo", "again"], None),
        "again\n"
    );

    // Without the controller, a restarted agent runs from its local state alone and
    // reconnects once the controller is back.
    cluster.controller.stop();
    agent.kill();
    let mut agent = cluster.agent(None, &[]);
    agent
        .wait_for_log("running from local state", Duration::from_secs(30))
        .unwrap();
    assert_eq!(runtime_entries(&cluster.runtime_root()).len(), 1);
    cluster.restart_controller();
    agent
        .wait_for_log("connected to the controller", Duration::from_secs(60))
        .unwrap();
    cluster.until(
        &agent,
        "pod Running after the outage",
        Duration::from_secs(30),
        || running(&cluster.pod("hello")),
    );
    let after = cluster.pod("hello").unwrap();
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        container_id
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);

    // Deleting the pod stops its container and leaves nothing in the runtime.
    cluster.ok(&["delete", "pod", "hello", "--timeout", "60s"], None);
    assert!(cluster.pod("hello").is_none());
    cluster.until(&agent, "runtime emptied", Duration::from_secs(30), || {
        runtime_entries(&cluster.runtime_root()).is_empty()
    });
    agent.stop();
}

#[test]
fn a_wrong_token_is_refused_with_a_clear_error() {
    require_root!();
    let cluster = Cluster::start("agent-token");
    let token = cluster.token();
    let (pin, _) = token.split_once("::").unwrap();

    // The right CA but a wrong secret: the controller refuses, the agent says so.
    let mut agent = cluster.agent(Some(&format!("{pin}::node:not-the-secret")), &[]);
    let status = agent.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(!status.success());
    assert!(
        agent
            .stderr()
            .contains("the controller refused to let this node join"),
        "{}",
        agent.output()
    );
    assert!(!cluster.agent_data().join("link/node.crt").exists());

    // A token pinning another CA: the agent stops before sending the secret.
    let other = format!("K10{}::node:secret", "0".repeat(64));
    let mut agent = cluster.agent(Some(&other), &[]);
    let status = agent.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(!status.success());
    assert!(
        agent.stderr().contains("no secret was sent"),
        "{}",
        agent.output()
    );
    // A malformed token is rejected before anything starts.
    let mut agent = cluster.agent(Some("K10nothex::node:x"), &[]);
    agent.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        agent.stderr().contains("not 64 hexadecimal digits"),
        "{}",
        agent.output()
    );
    assert!(cluster.kubectl(&["get", "node", NODE], None).status.code() != Some(0));
}
