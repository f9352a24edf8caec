//! A cluster of the real binaries on a test LAN: one `flotilla-controller serve` in
//! its own sandbox node, and agents (`flotilla-agent run`), each in a network
//! namespace of its own (and a private mount namespace) with its own data dir,
//! runtime root, cgroup parent, node name and labels, joined with the controller's
//! node token and holding the busybox fixture in its air-gap folder. kubectl runs as
//! admin inside the controller's node. Agents can be killed (a crash) and started
//! again; everything is stopped by PID and removed on drop.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cgroup::TestCgroup;
use crate::process::Process;
use crate::sandbox::{Lan, Node};
use crate::{bin, fixtures};

/// The name the agents' air-gap import gives the busybox fixture (its tag only).
pub const IMAGE: &str = "localhost/busybox:latest";

/// The controller's address on the LAN (agents dial its hub there).
const CONTROLLER_IP: &str = "10.99.0.1";
const API: &str = "127.0.0.1:6443";
const HUB_PORT: u16 = 6444;

/// One agent node: its sandbox, its directories and (while it runs) its process.
pub struct Agent {
    /// Declared first: dropped (stopped) before the node's namespace goes.
    process: Option<Process>,
    node: Node,
    name: String,
    ip: String,
    /// Its end of the LAN link, inside its namespace.
    lan_if: String,
    labels: Vec<String>,
    dir: PathBuf,
    cgroup_root: String,
}

impl Agent {
    /// The Node name it registers.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its sandbox node (its network namespace), e.g. to cut its LAN link.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Its address on the LAN (its InternalIP).
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Takes its LAN link down (a cut cable: it and the controller no longer reach
    /// each other, while the agent and its pods keep running) or up again; only inside
    /// its own namespace.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        self.node
            .ip(&["link", "set", &self.lan_if, state])
            .unwrap_or_else(|e| panic!("cannot set {}'s LAN link {state}: {e:#}", self.name));
    }

    /// Its `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its `--runtime-root`: one entry per container the runtime holds.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The ids of the containers its runtime holds now.
    pub fn containers(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.runtime_root())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// `flotilla-agent runtime state ID` against its runtime root: the container's OCI
    /// state (`status`, `pid`, …), or None when the runtime does not hold it.
    pub fn container_state(&self, id: &str) -> Option<Value> {
        let mut cmd = Command::new(bin("flotilla-agent"));
        cmd.arg("runtime")
            .arg("--root")
            .arg(self.runtime_root())
            .args(["state", id]);
        let out = crate::command::output(&mut cmd, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"));
        out.status.success().then(|| {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "runtime state {id} is not JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
        })
    }

    /// The running agent process (panics while it is stopped).
    pub fn process(&mut self) -> &mut Process {
        self.process
            .as_mut()
            .unwrap_or_else(|| panic!("agent {} is not running", self.name))
    }

    /// Its logs so far (empty while it never ran).
    pub fn output(&self) -> String {
        self.process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    /// Kills the agent with SIGKILL (by PID), as a crash or a power cut of the daemon
    /// would: its containers keep running under their shims.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
    }

    /// Starts the agent (again): with `token` until it has joined, then from its
    /// stored credentials.
    fn spawn(&mut self, hub: &str, token: Option<&str>) {
        let process = self.start_process(hub, token);
        self.process = Some(process);
    }

    /// Starts `flotilla-agent run` with this agent's settings and directories.
    fn start_process(&self, hub: &str, token: Option<&str>) -> Process {
        let mut cmd = Command::new(bin("flotilla-agent"));
        cmd.arg("run")
            .arg("--server")
            .arg(format!("https://{hub}"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--runtime-root")
            .arg(self.runtime_root())
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--registries")
            .arg(self.dir.join("registries.yaml"))
            .args(["--node-name", &self.name, "--node-ip", &self.ip]);
        for label in &self.labels {
            cmd.args(["--node-label", label]);
        }
        if let Some(token) = token {
            cmd.env("FLOTILLA_TOKEN", token);
        }
        // The agent's default log filter, as an operator sees it.
        cmd.env_remove("RUST_LOG");
        let netns = self.node.netns_path();
        Process::try_spawn(self.node.wrap_keeping_sys(&cmd), Some(&netns))
            .unwrap_or_else(|e| panic!("cannot start agent {}: {e:#}", self.name))
            .named(&format!("flotilla-agent {}", self.name))
    }
}

/// A controller and its agents on one test LAN.
pub struct Cluster {
    // Fields drop in this order: agents stop first, then the controller, then the
    // cgroup parent removes (kills) whatever containers remain, then the namespaces
    // and the directories go.
    agents: Vec<Agent>,
    /// Machines started so far, tracked agents or not (their index: address, dirs).
    machines: usize,
    controller: Process,
    controller_args: Vec<String>,
    cg: TestCgroup,
    control: Node,
    lan: Lan,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the LAN and the controller (with extra `serve` flags such as
    /// `--node-monitor-grace-period=15s`), and waits until its API and hub listen.
    pub fn start(label: &str, controller_args: &[&str]) -> Cluster {
        let lan = Lan::new();
        let control = Node::new(&format!("{label}-ctl"));
        control
            .attach(&lan, &format!("{CONTROLLER_IP}/24"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let cg = TestCgroup::new(label);
        let dir = tempfile::Builder::new()
            .prefix(&format!("flotilla-{label}-"))
            .tempdir()
            .expect("a temporary directory");
        let controller_args: Vec<String> = controller_args.iter().map(|a| a.to_string()).collect();
        let controller = spawn_controller(&control, dir.path(), &controller_args);
        Cluster {
            agents: Vec::new(),
            machines: 0,
            controller,
            controller_args,
            cg,
            control,
            lan,
            dir,
        }
    }

    /// Stops the controller (SIGTERM by PID) and starts it again on the same data
    /// dir and flags; returns once its API and hub listen again.
    pub fn restart_controller(&mut self) {
        self.controller.stop();
        self.controller = spawn_controller(&self.control, self.dir.path(), &self.controller_args);
    }

    /// The controller's node token (what `--token` takes).
    pub fn token(&self) -> String {
        let path = self.dir.path().join("controller/node-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// Starts a new agent node `name` with `--node-label`s (`key=value`) on the LAN,
    /// the busybox oci-archive in its air-gap folder, and waits until it has joined.
    pub fn add_agent(&mut self, name: &str, labels: &[&str]) -> &mut Agent {
        let mut agent = self.new_machine(name, labels);
        if let Err(e) = agent
            .process()
            .wait_for_log("joined the cluster", Duration::from_secs(60))
        {
            panic!("agent {name} did not join: {e:#}\n{}", agent.output());
        }
        self.agents.push(agent);
        self.agents.last_mut().unwrap()
    }

    /// Starts another machine that joins as `name` (e.g. a board flashed from the same
    /// image as agent `name`): its own sandbox, address, dirs and key, the join token;
    /// not tracked as an agent and not waited for. Drop it before the cluster.
    pub fn start_machine_named(&mut self, name: &str) -> Agent {
        self.new_machine(name, &[])
    }

    /// A new machine on the LAN running `flotilla-agent run` with the join token.
    fn new_machine(&mut self, name: &str, labels: &[&str]) -> Agent {
        let index = self.machines;
        self.machines += 1;
        let node = Node::new(name);
        let ip = format!("10.99.0.{}", 11 + index);
        let lan_if = node
            .attach(&self.lan, &format!("{ip}/24"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let dir = self
            .dir
            .path()
            .join("agents")
            .join(format!("{index}-{name}"));
        let images = dir.join("data/images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::copy(
            fixtures::busybox_oci_archive(),
            images.join("busybox.oci.tar"),
        )
        .unwrap();
        let mut agent = Agent {
            process: None,
            node,
            name: name.to_string(),
            ip,
            lan_if,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            dir,
            cgroup_root: format!("{}/{index}-{name}", self.cg.path()),
        };
        agent.spawn(&self.hub(), Some(&self.token()));
        agent
    }

    /// Starts agent `name` again (after [`Agent::kill`]) from its stored credentials
    /// and local state, and waits until its link is up.
    pub fn restart_agent(&mut self, name: &str) {
        let hub = self.hub();
        let agent = self.agent_mut(name);
        agent.spawn(&hub, None);
        if let Err(e) = agent
            .process()
            .wait_for_log("connected to the controller", Duration::from_secs(60))
        {
            panic!("agent {name} did not reconnect: {e:#}\n{}", agent.output());
        }
    }

    /// Starts a second `flotilla-agent run` with agent `name`'s settings and data
    /// dir, as an operator running it by hand next to the service would (not tracked
    /// as an agent; stopped by PID when dropped).
    pub fn start_second_agent_process(&self, name: &str) -> Process {
        self.agent(name).start_process(&self.hub(), None)
    }

    fn hub(&self) -> String {
        format!("{CONTROLLER_IP}:{HUB_PORT}")
    }

    pub fn agent(&self, name: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    pub fn agent_mut(&mut self, name: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    pub fn controller(&self) -> &Process {
        &self.controller
    }

    /// The cgroups agent `name` holds now below its `--cgroup-root`, in any hierarchy
    /// (one `pod-<uid>` per pod while it has one).
    pub fn pod_cgroups(&self, name: &str) -> Vec<PathBuf> {
        let root = &self.agent(name).cgroup_root;
        let below = root
            .trim_start_matches(&self.cg.path())
            .trim_start_matches('/');
        self.cg
            .dirs()
            .flat_map(|d| std::fs::read_dir(d.join(below)).into_iter().flatten())
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }

    /// The admin kubeconfig the controller wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("controller/admin.kubeconfig")
    }

    /// Runs kubectl as admin inside the controller's node, feeding `stdin` if given;
    /// returns its output whatever its status.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["--request-timeout", "30s"])
            .args(args);
        let mut wrapped = self.control.wrap(&cmd);
        let out = match stdin {
            Some(input) => crate::command::run_with_input(&mut wrapped, input.as_bytes()),
            None => crate::command::output(&mut wrapped, Duration::from_secs(60)),
        };
        out.unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        if !out.status.success() {
            panic!(
                "kubectl {args:?} failed:\n{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        self.ok(&["apply", "-f", "-"], Some(yaml));
    }

    /// `kubectl get ARGS -o json`, or None when kubectl fails (e.g. not found).
    pub fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.kubectl(&a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"))
    }

    /// The items of `kubectl get ARGS -o json` (empty when kubectl fails).
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.json(args)
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until `check` holds, polling; on timeout panics with `what`, the
    /// cluster's nodes, pods and events, and every log.
    pub fn until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("timed out after {timeout:?}: {what}\n{}", self.logs());
    }

    /// What `kubectl get` shows of nodes, pods and events, and every process's log.
    pub fn logs(&self) -> String {
        let state = self.kubectl(&["get", "nodes,pods,events", "-A", "-o", "wide"], None);
        let mut text = format!(
            "{}{}",
            String::from_utf8_lossy(&state.stdout),
            String::from_utf8_lossy(&state.stderr)
        );
        for a in &self.agents {
            text.push_str(&format!("\n----- agent {} -----\n{}", a.name, a.output()));
        }
        text.push_str(&format!(
            "\n----- controller -----\n{}",
            self.controller.output()
        ));
        text
    }
}

/// `flotilla-controller serve` in `control` with its data in `dir/controller`, the API
/// on the node's loopback and the hub on the LAN, once both listen.
fn spawn_controller(control: &Node, dir: &std::path::Path, args: &[String]) -> Process {
    let hub = format!("{CONTROLLER_IP}:{HUB_PORT}");
    let mut cmd = Command::new(bin("flotilla-controller"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("controller"))
        .args(["--listen", API, "--hub-listen", &hub])
        .args(["--tls-san", CONTROLLER_IP])
        .args(args);
    let mut controller = control.spawn(cmd).named("flotilla-controller");
    for addr in [API.to_string(), hub] {
        let addr = addr.parse().unwrap();
        // The API is on the controller node's own loopback: wait from inside it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while control.connect(addr, Duration::from_secs(1)).is_err() {
            if !controller.is_running() || Instant::now() > deadline {
                panic!(
                    "the controller does not listen on {addr}\n{}",
                    controller.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    controller
}

/// The status of a Node's Ready condition ("True", "False", "Unknown"; "" if none).
pub fn node_ready(node: &Value) -> &str {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

/// True when a Node carries a taint with this key and effect.
pub fn has_taint(node: &Value, key: &str, effect: &str) -> bool {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == key && t["effect"] == effect)
}

/// True when a pod is Running with every container running (as its agent reports).
pub fn pod_running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| {
                !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object())
            })
}

/// The node a pod is bound to ("" if none).
pub fn pod_node(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or("")
}

/// The runtime id of a pod's first container (`flotilla://<id>` without the scheme).
pub fn container_id(pod: &Value) -> Option<&str> {
    pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .map(|id| id.trim_start_matches("flotilla://"))
}
