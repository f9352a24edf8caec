//! End-to-end tests of the scheduler and controllers running inside the real
//! `flotilla-controller serve` on loopback, driven by the real `kubectl`. Nodes are
//! registered through the API; a small stand-in for the agents (the `Kubelet` below,
//! itself only kubectl calls) reports bound pods Running and Ready (or Succeeded for job
//! pods), finishes terminating pods and renews node Leases, as agents would.
//! They need no root, so they always run (never skipped).

use flotilla_tests::kube::{kubectl, spawn_controller_with};
use flotilla_tests::process::Process;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A controller on 127.0.0.1 with its own data directory.
struct Controller {
    proc: Process,
    dir: tempfile::TempDir,
    port: u16,
    args: Vec<String>,
}

impl Controller {
    /// A controller with these `serve` flags, whose nodes never time out unless
    /// `args` say otherwise.
    fn start_with(args: &[&str]) -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = flotilla_tests::free_port();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if !args
            .iter()
            .any(|a| a.starts_with("--node-monitor-grace-period"))
        {
            args.push("--node-monitor-grace-period=1h".into());
        }
        let proc = spawn_controller_with(dir.path(), port, &[], &args);
        let mut c = Controller {
            proc,
            dir,
            port,
            args,
        };
        c.wait_ready();
        c
    }

    fn start() -> Controller {
        Controller::start_with(&[])
    }

    /// Stops the controller and starts it again on the same data directory.
    fn restart(&mut self) {
        self.proc.stop();
        self.proc = spawn_controller_with(self.dir.path(), self.port, &[], &self.args);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        self.proc
            .wait_for_tcp(addr, Duration::from_secs(20))
            .expect("controller listens");
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl(&self.kubeconfig(), args, stdin)
    }

    /// kubectl as admin; panics (with output and the controller's log) unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}\ncontroller log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.proc.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        self.ok_in(&["apply", "-f", "-"], Some(yaml));
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl prints JSON")
    }

    fn items(&self, args: &[&str]) -> Vec<Value> {
        self.json(args)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits for `f`, failing with the controller's log on timeout.
    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}\ncontroller log:\n{}",
                self.proc.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Registers a Ready node with this much cpu, labels and taints (YAML flow lists).
    fn node(&self, name: &str, cpu: &str, labels: &str, taints: &str) {
        self.apply(&format!(
            r#"apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels: {{kubernetes.io/hostname: {name}{labels}}}
spec:
  taints: [{taints}]
status:
  capacity: {{cpu: "{cpu}", memory: 8Gi, pods: "110", ephemeral-storage: 20Gi}}
  allocatable: {{cpu: "{cpu}", memory: 8Gi, pods: "110", ephemeral-storage: 20Gi}}
  conditions:
  - {{type: Ready, status: "True", reason: KubeletReady, message: kubelet is posting ready status}}
"#
        ));
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*p],
        };
    }
    cur.as_str().unwrap_or("")
}

fn node_of(pod: &Value) -> &str {
    s(pod, &["spec", "nodeName"])
}

fn terminating(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_null()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn job_pod(pod: &Value) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["kind"] == "Job")
}

/// Pods of `selector` that are not terminating.
fn live_pods(c: &Controller, selector: &str) -> Vec<Value> {
    c.items(&["get", "pods", "-l", selector])
        .into_iter()
        .filter(|p| !terminating(p))
        .collect()
}

fn now_micro() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Stands in for the agents: bound pods become Running and Ready (job pods Succeeded),
/// terminating pods are finished, and (if asked) the Leases of live nodes are renewed.
/// Nodes taken out of `live` are left alone entirely, as if they had died.
struct Kubelet {
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<HashSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    fn start(c: &Controller, nodes: &[&str], leases: bool) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<HashSet<String>>> =
            Arc::new(Mutex::new(nodes.iter().map(|n| n.to_string()).collect()));
        let kc = c.kubeconfig();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            let live = live.clone();
            move || {
                let mut next_ip = 10u32;
                let mut ips: HashMap<String, String> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let alive = live.lock().unwrap().clone();
                    if leases && !alive.is_empty() {
                        let now = now_micro();
                        let docs: Vec<String> = alive
                            .iter()
                            .map(|n| {
                                format!(
                                    "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {n}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {n}, leaseDurationSeconds: 40, renewTime: \"{now}\"}}\n"
                                )
                            })
                            .collect();
                        kubectl(&kc, &["apply", "-f", "-"], Some(&docs.join("---\n")));
                    }
                    let out = kubectl(&kc, &["get", "pods", "-A", "-o", "json"], None);
                    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    let mut finish: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for p in list["items"].as_array().into_iter().flatten() {
                        let node = node_of(p);
                        if node.is_empty() || !alive.contains(node) {
                            continue;
                        }
                        let ns = s(p, &["metadata", "namespace"]).to_owned();
                        let name = s(p, &["metadata", "name"]).to_owned();
                        if terminating(p) {
                            finish.entry(ns).or_default().push(name);
                            continue;
                        }
                        let phase = s(p, &["status", "phase"]);
                        let patch = if job_pod(p) {
                            if phase == "Succeeded" {
                                continue;
                            }
                            r#"{"status":{"phase":"Succeeded","conditions":[{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"False","reason":"PodCompleted"}]}}"#.to_owned()
                        } else {
                            if ready(p) {
                                continue;
                            }
                            let ip = ips
                                .entry(format!("{ns}/{name}"))
                                .or_insert_with(|| {
                                    next_ip += 1;
                                    format!("10.42.{}.{}", next_ip / 250, next_ip % 250 + 2)
                                })
                                .clone();
                            format!(
                                r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"PodScheduled","status":"True"}},{{"type":"Initialized","status":"True"}},{{"type":"ContainersReady","status":"True"}},{{"type":"Ready","status":"True"}}]}}}}"#
                            )
                        };
                        kubectl(
                            &kc,
                            &[
                                "patch",
                                "pod",
                                &name,
                                "-n",
                                &ns,
                                "--subresource=status",
                                "--type=merge",
                                "-p",
                                &patch,
                            ],
                            None,
                        );
                    }
                    for (ns, names) in finish {
                        let mut args = vec![
                            "delete",
                            "pod",
                            "-n",
                            &ns,
                            "--grace-period=0",
                            "--force",
                            "--wait=false",
                        ];
                        args.extend(names.iter().map(String::as_str));
                        kubectl(&kc, &args, None);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        Kubelet {
            stop,
            live,
            thread: Some(thread),
        }
    }

    /// The node dies (or comes back).
    fn set_alive(&self, node: &str, alive: bool) {
        let mut live = self.live.lock().unwrap();
        if alive {
            live.insert(node.to_owned());
        } else {
            live.remove(node);
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `kubectl get pods -w` in the background, keeping the latest state of each pod and
/// checking `check` against the whole set after every event.
struct PodWatch {
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
    state: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    pods: BTreeMap<String, Value>,
    events: usize,
    /// Lowest and highest value of the measure seen once `armed`.
    min: Option<usize>,
    max: Option<usize>,
    armed: bool,
}

impl PodWatch {
    fn start(
        c: &Controller,
        selector: &str,
        measure: fn(&BTreeMap<String, Value>) -> usize,
    ) -> PodWatch {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(c.kubeconfig())
            .args([
                "get",
                "pods",
                "-l",
                selector,
                "-w",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl watch runs");
        let stdout = child.stdout.take().unwrap();
        let state = Arc::new(Mutex::new(WatchState::default()));
        let reader = std::thread::spawn({
            let state = state.clone();
            move || {
                let stream = serde_json::Deserializer::from_reader(stdout).into_iter::<Value>();
                for ev in stream {
                    let Ok(ev) = ev else { break };
                    let obj = &ev["object"];
                    let name = s(obj, &["metadata", "name"]).to_owned();
                    let mut st = state.lock().unwrap();
                    if ev["type"] == "DELETED" {
                        st.pods.remove(&name);
                    } else {
                        st.pods.insert(name, obj.clone());
                    }
                    st.events += 1;
                    if st.armed {
                        let m = measure(&st.pods);
                        st.min = Some(st.min.map_or(m, |x| x.min(m)));
                        st.max = Some(st.max.map_or(m, |x| x.max(m)));
                    }
                }
            }
        });
        PodWatch {
            child,
            reader: Some(reader),
            state,
        }
    }

    fn measure_now(&self, measure: fn(&BTreeMap<String, Value>) -> usize) -> usize {
        measure(&self.state.lock().unwrap().pods)
    }

    fn arm(&self) {
        self.state.lock().unwrap().armed = true;
    }

    /// Stops the watch; returns (min, max, events seen).
    fn finish(mut self) -> (Option<usize>, Option<usize>, usize) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let st = self.state.lock().unwrap();
        (st.min, st.max, st.events)
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deployment(name: &str, replicas: u32, image: &str, cpu: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
{extra_spec}  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: {name}
        image: {image}
        command: ["sleep", "3600"]
        resources:
          requests: {{cpu: {cpu}}}
"#
    )
}

fn count_by_node(pods: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in pods {
        *m.entry(node_of(p).to_owned()).or_insert(0) += 1;
    }
    m
}

#[test]
fn deployment_pods_are_bound_spread_and_scaled() {
    let c = Controller::start();
    for n in ["n1", "n2", "n3"] {
        c.node(n, "2", "", "");
    }
    c.apply(&deployment("web", 6, "busybox:1.36", "100m", ""));
    c.wait("6 bound pods", Duration::from_secs(30), || {
        let pods = live_pods(&c, "app=web");
        pods.len() == 6 && pods.iter().all(|p| !node_of(p).is_empty())
    });
    let pods = live_pods(&c, "app=web");
    let spread = count_by_node(&pods);
    assert_eq!(
        spread,
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)]),
        "replicas of one owner spread evenly"
    );
    // Each pod has a controller owner, a generated name and the scheduler's events.
    let pod = &pods[0];
    let name = s(pod, &["metadata", "name"]);
    assert!(name.starts_with("web-"), "{name}");
    let describe = c.ok(&["describe", "pod", name]);
    assert!(
        describe.contains(&format!(
            "Successfully assigned default/{name} to {}",
            node_of(pod)
        )),
        "{describe}"
    );
    let rs = c.items(&["get", "rs", "-l", "app=web"]);
    assert_eq!(rs.len(), 1);
    let rs_name = s(&rs[0], &["metadata", "name"]);
    let describe = c.ok(&["describe", "rs", rs_name]);
    assert!(describe.contains("SuccessfulCreate"), "{describe}");
    let describe = c.ok(&["describe", "deployment", "web"]);
    assert!(
        describe.contains(&format!("Scaled up replica set {rs_name}")),
        "{describe}"
    );

    c.ok(&["scale", "deployment", "web", "--replicas=2"]);
    c.wait("2 pods left", Duration::from_secs(30), || {
        live_pods(&c, "app=web").len() == 2
    });
    c.wait("the replicaset follows", Duration::from_secs(10), || {
        c.json(&["get", "rs", rs_name])["spec"]["replicas"] == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(live_pods(&c, "app=web").len(), 2, "no pod is recreated");
}

#[test]
fn placement_honours_filters_and_explains_what_fits_nowhere() {
    let c = Controller::start();
    c.node("small-1", "1", ", disk: hdd", "");
    c.node("small-2", "1", ", disk: ssd", "");
    c.node(
        "gpu-1",
        "8",
        ", disk: ssd",
        "{key: dedicated, value: gpu, effect: NoSchedule}",
    );
    // nodeSelector: only the ssd node without the taint.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: picky}
spec:
  nodeSelector: {disk: ssd}
  containers: [{name: c, image: busybox:1.36}]
"#,
    );
    c.wait("picky to be bound", Duration::from_secs(20), || {
        !node_of(&c.json(&["get", "pod", "picky"])).is_empty()
    });
    assert_eq!(node_of(&c.json(&["get", "pod", "picky"])), "small-2");

    // Too big for the small nodes, and the big one is tainted.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: big}
spec:
  containers:
  - name: c
    image: busybox:1.36
    resources: {requests: {cpu: "2"}}
"#,
    );
    let mut message = String::new();
    c.wait("PodScheduled=False", Duration::from_secs(20), || {
        let pod = c.json(&["get", "pod", "big"]);
        let cond = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled")
            .cloned();
        match cond {
            Some(cond) if cond["status"] == "False" => {
                assert_eq!(cond["reason"], "Unschedulable");
                message = s(&cond, &["message"]).to_owned();
                true
            }
            _ => false,
        }
    });
    assert!(
        message.starts_with("0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."),
        "{message}"
    );
    let describe = c.ok(&["describe", "pod", "big"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    assert!(
        describe.contains("0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."),
        "{describe}"
    );
    assert!(node_of(&c.json(&["get", "pod", "big"])).is_empty());

    // A node that fits joins: the pod is retried and bound there.
    c.node("big-1", "4", "", "");
    c.wait("big to be bound", Duration::from_secs(20), || {
        node_of(&c.json(&["get", "pod", "big"])) == "big-1"
    });
    let pod = c.json(&["get", "pod", "big"]);
    let cond = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
        .unwrap();
    assert_eq!(cond["status"], "True");
}

fn available(pods: &BTreeMap<String, Value>) -> usize {
    pods.values()
        .filter(|p| ready(p) && !terminating(p))
        .count()
}

fn image_of(v: &Value) -> String {
    s(v, &["spec", "template", "spec", "containers", "0", "image"]).to_owned()
}

#[test]
fn rolling_update_keeps_availability_and_rolls_back() {
    let c = Controller::start();
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        c.node(n, "4", "", "");
    }
    let _kubelet = Kubelet::start(&c, &nodes, false);
    let strategy = "  strategy:\n    type: RollingUpdate\n    rollingUpdate: {maxUnavailable: 1, maxSurge: 1}\n";
    c.apply(&deployment("web", 4, "busybox:1.36", "100m", strategy));
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n",
    );
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    // Endpoints list the ready pods.
    c.wait("4 endpoint addresses", Duration::from_secs(20), || {
        let ep = c.json(&["get", "endpoints", "web"]);
        ep["subsets"][0]["addresses"]
            .as_array()
            .is_some_and(|a| a.len() == 4)
    });

    let watch = PodWatch::start(&c, "app=web", available);
    c.wait(
        "the watch to see 4 available pods",
        Duration::from_secs(20),
        || watch.measure_now(available) == 4,
    );
    watch.arm();
    c.ok(&["set", "image", "deployment/web", "web=busybox:1.37"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    c.wait("the old pods to go", Duration::from_secs(30), || {
        let pods = live_pods(&c, "app=web");
        pods.len() == 4
            && pods
                .iter()
                .all(|p| s(p, &["spec", "containers", "0", "image"]) == "busybox:1.37")
    });
    let (min, max, events) = watch.finish();
    assert!(events > 8, "the watch saw the rollout ({events} events)");
    assert!(
        min.is_some_and(|m| m >= 3),
        "available pods dipped below replicas - maxUnavailable: min {min:?}"
    );
    assert!(
        max.is_some_and(|m| m <= 5),
        "surge beyond maxSurge: {max:?}"
    );

    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    c.ok(&["rollout", "undo", "deployment/web"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(
        image_of(&c.json(&["get", "deployment", "web"])),
        "busybox:1.36"
    );
    c.wait(
        "pods back on the old image",
        Duration::from_secs(30),
        || {
            let pods = live_pods(&c, "app=web");
            pods.len() == 4
                && pods
                    .iter()
                    .all(|p| s(p, &["spec", "containers", "0", "image"]) == "busybox:1.36")
        },
    );
    let d = c.json(&["get", "deployment", "web"]);
    assert_eq!(
        s(
            &d,
            &[
                "metadata",
                "annotations",
                "deployment.kubernetes.io/revision"
            ]
        ),
        "3"
    );

    c.ok(&["rollout", "restart", "deployment/web"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    c.wait("restarted pods", Duration::from_secs(30), || {
        let pods = live_pods(&c, "app=web");
        pods.len() == 4
            && pods.iter().all(|p| {
                !p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_null()
            })
    });
    let status = c.json(&["get", "deployment", "web"])["status"].clone();
    assert_eq!(status["availableReplicas"], 4, "{status}");
    assert_eq!(status["updatedReplicas"], 4, "{status}");
}

fn active_job_pods(pods: &BTreeMap<String, Value>) -> usize {
    pods.values()
        .filter(|p| !terminating(p))
        .filter(|p| !matches!(s(p, &["status", "phase"]), "Succeeded" | "Failed"))
        .count()
}

#[test]
fn job_completes_with_parallelism() {
    let c = Controller::start();
    let nodes = ["n1", "n2"];
    for n in nodes {
        c.node(n, "4", "", "");
    }
    let watch = PodWatch::start(&c, "batch.kubernetes.io/job-name=work", active_job_pods);
    watch.arm();
    std::thread::sleep(Duration::from_millis(500));
    c.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: work}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: w, image: busybox:1.36, command: ["true"]}]
"#,
    );
    // Without the agents' reports nothing finishes: exactly 2 run.
    c.wait("2 active pods", Duration::from_secs(20), || {
        c.json(&["get", "job", "work"])["status"]["active"] == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        c.items(&["get", "pods", "-l", "batch.kubernetes.io/job-name=work"])
            .len(),
        2
    );
    let _kubelet = Kubelet::start(&c, &nodes, false);
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/work",
        "--timeout=60s",
    ]);
    let job = c.json(&["get", "job", "work"]);
    assert_eq!(job["status"]["succeeded"], 5, "{job}");
    let (_, max, _) = watch.finish();
    assert!(max.is_some_and(|m| m <= 2), "parallelism exceeded: {max:?}");
    let pods = c.items(&["get", "pods", "-l", "batch.kubernetes.io/job-name=work"]);
    assert_eq!(
        pods.iter()
            .filter(|p| s(p, &["status", "phase"]) == "Succeeded")
            .count(),
        5
    );
}

#[test]
fn daemonset_follows_nodes_joining_and_leaving() {
    let c = Controller::start();
    for n in ["n1", "n2"] {
        c.node(n, "2", "", "");
    }
    c.node(
        "tainted",
        "2",
        "",
        "{key: dedicated, value: x, effect: NoSchedule}",
    );
    c.apply(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: a, image: busybox:1.36}]
"#,
    );
    let placed = |want: &[&str]| {
        let pods = live_pods(&c, "app=agent");
        let mut nodes: Vec<String> = pods.iter().map(|p| node_of(p).to_owned()).collect();
        nodes.sort();
        nodes == want
    };
    c.wait(
        "one pod on each untainted node",
        Duration::from_secs(20),
        || placed(&["n1", "n2"]),
    );
    c.node("n3", "2", "", "");
    c.wait("a pod on the new node", Duration::from_secs(20), || {
        placed(&["n1", "n2", "n3"])
    });
    c.ok(&["delete", "node", "n2"]);
    c.wait(
        "the pod of the gone node to go",
        Duration::from_secs(20),
        || placed(&["n1", "n3"]),
    );
}

#[test]
fn allocations_stay_unique_across_a_restart() {
    let mut c = Controller::start_with(&[
        "--cluster-cidr=10.99.0.0/16",
        "--service-cidr=10.98.0.0/24",
        "--service-node-port-range=31000-31009",
    ]);
    let svc = |name: &str, ty: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: {ty}\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n"
        )
    };
    for n in ["a1", "a2", "a3"] {
        c.node(n, "1", "", "");
    }
    c.apply(&svc("s1", "ClusterIP"));
    c.apply(&svc("s2", "NodePort"));
    c.apply(&svc("s3", "NodePort"));
    let cidrs = |c: &Controller| -> Vec<String> {
        c.items(&["get", "nodes"])
            .iter()
            .map(|n| s(n, &["spec", "podCIDR"]).to_owned())
            .collect()
    };
    c.wait("pod CIDRs", Duration::from_secs(20), || {
        cidrs(&c).iter().all(|x| !x.is_empty())
    });
    c.restart();
    for n in ["b1", "b2", "b3"] {
        c.node(n, "1", "", "");
    }
    c.apply(&svc("s4", "ClusterIP"));
    c.apply(&svc("s5", "NodePort"));
    c.wait(
        "pod CIDRs for the new nodes",
        Duration::from_secs(20),
        || {
            let all = cidrs(&c);
            all.len() == 6 && all.iter().all(|x| !x.is_empty())
        },
    );
    let all = cidrs(&c);
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 6, "pod CIDRs handed out twice: {all:?}");
    for cidr in &all {
        assert!(
            cidr.starts_with("10.99.") && cidr.ends_with(".0/24"),
            "{cidr}"
        );
        let n = c.items(&["get", "nodes"]);
        let node = n
            .iter()
            .find(|n| s(n, &["spec", "podCIDR"]) == cidr)
            .unwrap();
        assert_eq!(node["spec"]["podCIDRs"][0].as_str(), Some(cidr.as_str()));
    }
    let services = c.items(&["get", "services", "-A"]);
    let ips: Vec<&str> = services
        .iter()
        .map(|v| s(v, &["spec", "clusterIP"]))
        .collect();
    assert_eq!(ips.len(), 6, "{ips:?}");
    assert_eq!(
        ips.iter().collect::<HashSet<_>>().len(),
        ips.len(),
        "cluster IPs handed out twice: {ips:?}"
    );
    assert!(ips.iter().all(|ip| ip.starts_with("10.98.0.")), "{ips:?}");
    let ports: Vec<i64> = services
        .iter()
        .flat_map(|v| v["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["nodePort"].as_i64())
        .collect();
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 3, "{ports:?}");
    assert!(
        ports.iter().all(|p| (31000..=31009).contains(p)),
        "{ports:?}"
    );
}

#[test]
fn a_silent_node_turns_unknown_and_its_pods_move() {
    let c = Controller::start_with(&[
        "--node-monitor-grace-period=4s",
        "--default-unreachable-toleration-seconds=3",
    ]);
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        c.node(n, "2", "", "");
    }
    let kubelet = Kubelet::start(&c, &nodes, true);
    c.apply(&deployment("web", 3, "busybox:1.36", "100m", ""));
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let pods = live_pods(&c, "app=web");
    assert_eq!(count_by_node(&pods).len(), 3, "one pod per node");

    kubelet.set_alive("n3", false);
    let unreachable = |n: &Value| {
        n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
    };
    let node_ready = |n: &Value| -> String {
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| s(c, &["status"]).to_owned())
            .unwrap_or_default()
    };
    c.wait(
        "n3 to turn Unknown and tainted",
        Duration::from_secs(30),
        || {
            let n = c.json(&["get", "node", "n3"]);
            node_ready(&n) == "Unknown" && unreachable(&n)
        },
    );
    for n in ["n1", "n2"] {
        let n = c.json(&["get", "node", n]);
        assert_eq!(node_ready(&n), "True");
        assert!(!unreachable(&n));
    }
    c.wait(
        "the pods to be recreated elsewhere",
        Duration::from_secs(40),
        || {
            let pods = live_pods(&c, "app=web");
            pods.len() == 3 && pods.iter().all(|p| ready(p) && node_of(p) != "n3")
        },
    );

    kubelet.set_alive("n3", true);
    c.wait("n3 to be Ready again", Duration::from_secs(30), || {
        let n = c.json(&["get", "node", "n3"]);
        node_ready(&n) == "True" && !unreachable(&n)
    });
}

#[test]
fn bad_settings_stop_the_controller_with_an_error_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("--node-monitor-grace-period=40", "with a unit"),
        ("--service-cidr=10.43.0.1/16", "not a network address"),
        (
            "--service-node-port-range=32767-30000",
            "not above the last",
        ),
        (
            "--controllers=*,-schedular",
            "unknown controller \"schedular\"",
        ),
        ("--default-unreachable-toleration-seconds=-1", "-1"),
    ];
    for (arg, why) in cases {
        let out = Command::new(flotilla_tests::bin("flotilla-controller"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen=127.0.0.1:1")
            .arg(arg)
            .output()
            .expect("the controller runs");
        let err = String::from_utf8_lossy(&out.stderr);
        let flag = arg.split('=').next().unwrap();
        assert!(!out.status.success(), "{arg} was accepted");
        assert!(
            err.contains(flag) && err.contains(why),
            "{arg}: the error should name {flag} and say {why:?}:\n{err}"
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the settings are checked"
    );
}

#[test]
fn a_rollout_that_stops_progressing_exceeds_its_deadline_on_its_own() {
    let c = Controller::start();
    c.node("n1", "2", "", "");
    // No kubelet here: the pods are bound but never become Ready, and after that
    // nothing in the cluster changes, so only the controller's own timer can notice
    // that the deadline passed.
    c.apply(&deployment(
        "stuck",
        2,
        "busybox:1.36",
        "100m",
        "  progressDeadlineSeconds: 3\n",
    ));
    let progressing = |c: &Controller| -> (String, String) {
        let d = c.json(&["get", "deployment", "stuck"]);
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["type"] == "Progressing")
            .map(|x| (s(x, &["status"]).to_owned(), s(x, &["reason"]).to_owned()))
            .unwrap_or_default()
    };
    c.wait("2 bound pods", Duration::from_secs(20), || {
        let pods = live_pods(&c, "app=stuck");
        pods.len() == 2 && pods.iter().all(|p| !node_of(p).is_empty())
    });
    c.wait(
        "Progressing=False with ProgressDeadlineExceeded",
        Duration::from_secs(20),
        || progressing(&c) == ("False".into(), "ProgressDeadlineExceeded".into()),
    );
    let out = c.kubectl(
        &["rollout", "status", "deployment/stuck", "--timeout=10s"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}

/// A Deployment `web` of `replicas` on two nodes, rolled out, then deleted with
/// `--cascade=orphan`: its one ReplicaSet stays, without owner.
struct OrphanedWeb {
    _kubelet: Kubelet,
    /// The Deployment's manifest, to apply again.
    yaml: String,
    /// The Deployment's uid before the delete.
    deployment_uid: String,
    /// The orphaned ReplicaSet's name and uid.
    rs_name: String,
    rs_uid: String,
    /// The sorted uids of its pods before the delete.
    pods: Vec<String>,
}

impl OrphanedWeb {
    fn start(c: &Controller, replicas: u32) -> OrphanedWeb {
        let nodes = ["n1", "n2"];
        for n in nodes {
            c.node(n, "4", "", "");
        }
        let kubelet = Kubelet::start(c, &nodes, false);
        let yaml = deployment("web", replicas, "busybox:1.36", "100m", "");
        c.apply(&yaml);
        c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
        let sets = c.items(&["get", "rs", "-l", "app=web"]);
        assert_eq!(sets.len(), 1, "{sets:?}");
        let rs_name = s(&sets[0], &["metadata", "name"]).to_owned();
        let rs_uid = s(&sets[0], &["metadata", "uid"]).to_owned();
        let deployment_uid =
            s(&c.json(&["get", "deployment", "web"]), &["metadata", "uid"]).to_owned();
        let pods = uids(&c.items(&["get", "pods", "-l", "app=web"]));
        assert_eq!(pods.len(), replicas as usize);

        c.ok(&["delete", "deployment", "web", "--cascade=orphan"]);
        assert!(gone(c, "deployment", "web"), "the Deployment is deleted");
        c.wait(
            "the ReplicaSet to be orphaned",
            Duration::from_secs(20),
            || c.json(&["get", "rs", &rs_name])["metadata"]["ownerReferences"].is_null(),
        );
        OrphanedWeb {
            _kubelet: kubelet,
            yaml,
            deployment_uid,
            rs_name,
            rs_uid,
            pods,
        }
    }
}

#[test]
fn a_replicaset_name_taken_by_another_template_raises_the_collision_count() {
    let c = Controller::start();
    // The Deployment goes, its ReplicaSet stays; then someone edits that ReplicaSet's
    // template under the name the Deployment's template hashes to.
    let web = OrphanedWeb::start(&c, 2);
    let (yaml, taken) = (web.yaml.clone(), web.rs_name.clone());
    c.ok(&[
        "patch",
        "rs",
        &taken,
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/template/spec/containers/0/env","value":[{"name":"MODE","value":"edited"}]}]"#,
    ]);

    // The same Deployment again. As upstream, it first adopts the orphan its selector
    // matches (an old ReplicaSet now, its template differing); its new ReplicaSet cannot
    // take that name, so collisionCount goes up and the rollout moves to another name.
    c.apply(&yaml);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let d = c.json(&["get", "deployment", "web"]);
    assert_eq!(d["status"]["collisionCount"], 1, "{}", d["status"]);
    assert_eq!(d["status"]["updatedReplicas"], 2, "{}", d["status"]);
    assert_eq!(d["status"]["availableReplicas"], 2, "{}", d["status"]);
    let uid = s(&d, &["metadata", "uid"]).to_owned();
    let sets = c.items(&["get", "rs", "-l", "app=web"]);
    let mine: Vec<&Value> = sets
        .iter()
        .filter(|rs| s(rs, &["metadata", "ownerReferences", "0", "uid"]) == uid)
        .collect();
    assert_eq!(
        mine.len(),
        2,
        "the adopted ReplicaSet and a new one: {sets:?}"
    );
    let new = mine
        .iter()
        .find(|rs| s(rs, &["metadata", "name"]) != taken)
        .expect("a ReplicaSet under another name");
    let hash = s(new, &["metadata", "labels", "pod-template-hash"]).to_owned();
    assert_eq!(s(new, &["metadata", "name"]), format!("web-{hash}"));
    assert!(
        new["spec"]["template"]["spec"]["containers"][0]["env"].is_null(),
        "the new ReplicaSet has the Deployment's template: {}",
        new["spec"]["template"]
    );

    // The edited one keeps its template and is rolled over to the new one.
    c.wait(
        "the adopted ReplicaSet to scale to 0",
        Duration::from_secs(30),
        || c.json(&["get", "rs", &taken])["spec"]["replicas"] == 0,
    );
    let old = c.json(&["get", "rs", &taken]);
    assert_eq!(
        s(
            &old,
            &[
                "spec",
                "template",
                "spec",
                "containers",
                "0",
                "env",
                "0",
                "value"
            ]
        ),
        "edited"
    );
    c.wait("only the new pods", Duration::from_secs(30), || {
        let pods = live_pods(&c, "app=web");
        pods.len() == 2
            && pods
                .iter()
                .all(|p| ready(p) && s(p, &["metadata", "labels", "pod-template-hash"]) == hash)
    });
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
}

/// `kubectl delete deployment --cascade=orphan`, then the same Deployment applied again:
/// as upstream, it adopts the orphaned ReplicaSet (the same one, now controlled by the
/// new Deployment's uid) with its pods — no second ReplicaSet, no new pods.
#[test]
fn a_deployment_made_again_adopts_its_orphaned_replicaset_and_pods() {
    let c = Controller::start();
    let web = OrphanedWeb::start(&c, 2);
    let (rs_name, rs_uid) = (web.rs_name.clone(), web.rs_uid.clone());
    let (old_uid, pods_before) = (web.deployment_uid.clone(), web.pods.clone());

    c.apply(&web.yaml);
    let uid = s(&c.json(&["get", "deployment", "web"]), &["metadata", "uid"]).to_owned();
    assert_ne!(uid, old_uid, "a new Deployment");
    c.wait(
        "the ReplicaSet to be adopted",
        Duration::from_secs(20),
        || {
            let rs = c.json(&["get", "rs", &rs_name]);
            let refs = &rs["metadata"]["ownerReferences"];
            refs.as_array().is_some_and(|r| r.len() == 1)
                && refs[0]["uid"] == uid.as_str()
                && refs[0]["controller"] == true
                && refs[0]["kind"] == "Deployment"
        },
    );
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let d = c.json(&["get", "deployment", "web"]);
    assert!(d["status"]["collisionCount"].is_null(), "{}", d["status"]);
    assert_eq!(d["status"]["availableReplicas"], 2, "{}", d["status"]);
    holds_for(5, || {
        let sets = c.items(&["get", "rs", "-l", "app=web"]);
        assert_eq!(uids(&sets), vec![rs_uid.clone()], "the same one ReplicaSet");
        let pods = c.items(&["get", "pods", "-l", "app=web"]);
        assert_eq!(uids(&pods), pods_before, "the same pods run on: {pods:?}");
        for p in &pods {
            assert!(!terminating(p), "a pod is being deleted: {p}");
            assert_eq!(s(p, &["metadata", "ownerReferences", "0", "uid"]), rs_uid);
        }
    });
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("\n1 ") && !history.contains("\n2 "),
        "{history}"
    );
}

fn replicaset(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: {name}
        image: busybox:1.36
        command: ["sleep", "3600"]
        resources:
          requests: {{cpu: 100m}}
"#
    )
}

/// The sorted uids of these objects.
fn uids(items: &[Value]) -> Vec<String> {
    let mut u: Vec<String> = items
        .iter()
        .map(|o| s(o, &["metadata", "uid"]).to_owned())
        .collect();
    u.sort();
    u
}

/// Whether `kubectl get <kind> <name>` says NotFound.
fn gone(c: &Controller, kind: &str, name: &str) -> bool {
    let out = c.kubectl(&["get", kind, name], None);
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
}

/// For `secs` seconds, `check` holds at every look (4 a second).
fn holds_for(secs: u64, mut check: impl FnMut()) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        check();
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `kubectl delete rs --cascade=orphan`: the ReplicaSet goes and its pods stay — the
/// same pods, none new, none terminating, without owner references — seconds later.
#[test]
fn an_orphan_delete_of_a_replicaset_leaves_its_pods() {
    let c = Controller::start();
    let nodes = ["n1", "n2"];
    for n in nodes {
        c.node(n, "4", "", "");
    }
    let _kubelet = Kubelet::start(&c, &nodes, false);
    c.apply(&replicaset("keep", 3));
    c.wait("3 ready pods", Duration::from_secs(30), || {
        let pods = live_pods(&c, "app=keep");
        pods.len() == 3 && pods.iter().all(ready)
    });
    let before = uids(&c.items(&["get", "pods", "-l", "app=keep"]));

    // kubectl waits until the ReplicaSet is gone.
    c.ok(&["delete", "rs", "keep", "--cascade=orphan"]);
    assert!(gone(&c, "rs", "keep"), "the ReplicaSet is deleted");
    holds_for(5, || {
        let pods = c.items(&["get", "pods", "-l", "app=keep"]);
        assert_eq!(uids(&pods), before, "the same pods stay: {pods:?}");
        for p in &pods {
            assert!(!terminating(p), "an orphaned pod is being deleted: {p}");
            assert!(
                p["metadata"]["ownerReferences"].is_null(),
                "an orphaned pod keeps an owner: {}",
                p["metadata"]
            );
        }
    });
}

/// `kubectl delete deployment --cascade=orphan`: its ReplicaSet stays (the same one,
/// without owner references, no new one made) and so do the ReplicaSet's pods.
#[test]
fn an_orphan_delete_of_a_deployment_leaves_its_replicaset_and_pods() {
    let c = Controller::start();
    let web = OrphanedWeb::start(&c, 3);
    let (rs_name, rs_uid, pods_before) =
        (web.rs_name.clone(), web.rs_uid.clone(), web.pods.clone());
    holds_for(5, || {
        let sets = c.items(&["get", "rs", "-l", "app=web"]);
        assert_eq!(uids(&sets), vec![rs_uid.clone()], "the same one ReplicaSet");
        assert!(
            sets[0]["metadata"]["ownerReferences"].is_null(),
            "the orphaned ReplicaSet keeps an owner: {}",
            sets[0]["metadata"]
        );
        assert!(sets[0]["metadata"]["deletionTimestamp"].is_null());
        let pods = c.items(&["get", "pods", "-l", "app=web"]);
        assert_eq!(uids(&pods), pods_before, "the same pods stay: {pods:?}");
        for p in &pods {
            assert!(!terminating(p), "a pod is being deleted: {p}");
            assert_eq!(s(p, &["metadata", "ownerReferences", "0", "uid"]), rs_uid);
        }
    });
    // The ReplicaSet still keeps its pods: one deleted is replaced.
    let victim = s(
        &c.items(&["get", "pods", "-l", "app=web"])[0],
        &["metadata", "name"],
    )
    .to_owned();
    c.ok(&["delete", "pod", &victim, "--wait=false"]);
    c.wait("3 ready pods again", Duration::from_secs(30), || {
        let pods = live_pods(&c, "app=web");
        pods.len() == 3
            && pods.iter().all(ready)
            && pods.iter().all(|p| s(p, &["metadata", "name"]) != victim)
    });
    c.wait(
        "the ReplicaSet to count 3 ready replicas",
        Duration::from_secs(20),
        || c.json(&["get", "rs", &rs_name])["status"]["readyReplicas"] == 3,
    );
}

/// Cascading deletes still take the dependents: kubectl's default (background) takes a
/// Deployment's ReplicaSet and pods; a foreground delete keeps the ReplicaSet, marked,
/// while its pods wait for their node, and it goes once they are gone.
#[test]
fn background_and_foreground_deletes_take_the_dependents() {
    let c = Controller::start();
    let nodes = ["n1", "n2"];
    for n in nodes {
        c.node(n, "4", "", "");
    }
    let kubelet = Kubelet::start(&c, &nodes, false);
    c.apply(&deployment("bg", 2, "busybox:1.36", "100m", ""));
    c.apply(&replicaset("fg", 2));
    c.ok(&["rollout", "status", "deployment/bg", "--timeout=60s"]);
    c.wait("2 ready fg pods", Duration::from_secs(30), || {
        let pods = live_pods(&c, "app=fg");
        pods.len() == 2 && pods.iter().all(ready)
    });

    c.ok(&["delete", "deployment", "bg"]);
    c.wait(
        "the Deployment's ReplicaSet and pods to go",
        Duration::from_secs(30),
        || {
            c.items(&["get", "rs", "-l", "app=bg"]).is_empty()
                && c.items(&["get", "pods", "-l", "app=bg"]).is_empty()
        },
    );

    // No node finishes the pods for now: the ReplicaSet must wait for them.
    for n in nodes {
        kubelet.set_alive(n, false);
    }
    c.ok(&["delete", "rs", "fg", "--cascade=foreground", "--wait=false"]);
    c.wait("the pods to terminate", Duration::from_secs(20), || {
        let pods = c.items(&["get", "pods", "-l", "app=fg"]);
        pods.len() == 2 && pods.iter().all(terminating)
    });
    holds_for(2, || {
        let rs = c.json(&["get", "rs", "fg"]);
        assert!(!rs["metadata"]["deletionTimestamp"].is_null(), "{rs}");
        assert_eq!(
            rs["metadata"]["finalizers"],
            serde_json::json!(["foregroundDeletion"]),
            "{}",
            rs["metadata"]
        );
    });
    for n in nodes {
        kubelet.set_alive(n, true);
    }
    c.wait(
        "the ReplicaSet and its pods to go",
        Duration::from_secs(30),
        || gone(&c, "rs", "fg") && c.items(&["get", "pods", "-l", "app=fg"]).is_empty(),
    );
}
