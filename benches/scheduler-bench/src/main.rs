//! scheduler-bench: scheduling throughput through a real `flotilla-controller serve`
//! (started here on loopback with a fresh data directory), against issue 6's target
//! of 5,000 pods bound per second.
//!
//! 1. The controller runs with `--controllers=*,-scheduler`. The bench registers NODES
//!    fake nodes through the API (Ready, with capacity, zone and disk labels, some
//!    tainted) and their Leases, then SETS ReplicaSets whose pod templates mix cpu and
//!    memory requests, nodeSelectors, required and preferred node affinity and
//!    tolerations; the ReplicaSet controller creates PODS pending pods.
//! 2. The controller is stopped. For each of RUNS runs, a copy of its data directory is
//!    started with every loop on. The clock runs from that start (store open and cache
//!    fill included) until a watch has seen every pod bound. Then it reads the
//!    controller's CPU time (utime+stime) and memory (VmRSS, VmHWM) from /proc, and checks
//!    each placement against the pod's selector, affinity, tolerations and the node's
//!    allocatable cpu and pod count, so a fast but wrong scheduler fails too. The verdict
//!    goes by the median run, as a shared machine makes single runs noisy.
//!
//! Usage: scheduler-bench [--controller PATH] [--nodes N] [--pods N] [--sets N]
//! [--clients N] [--runs N]

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

const TARGET: f64 = 5000.0;
const ZONES: usize = 4;

struct Opts {
    controller: PathBuf,
    nodes: usize,
    pods: usize,
    sets: usize,
    clients: usize,
    runs: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        controller: PathBuf::from("target/release/flotilla-controller"),
        nodes: 1000,
        pods: 10_000,
        sets: 100,
        clients: 32,
        runs: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        let n = || {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("{} N", pair[0]))
        };
        match pair[0].as_str() {
            "--controller" => o.controller = PathBuf::from(&v),
            "--nodes" => o.nodes = n(),
            "--pods" => o.pods = n(),
            "--sets" => o.sets = n(),
            "--clients" => o.clients = n(),
            "--runs" => o.runs = n().max(1),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        o.sets > 0 && o.pods.is_multiple_of(o.sets),
        "--pods must be a multiple of --sets"
    );
    o
}

/// A running controller and an HTTPS client for it.
struct Server {
    child: Child,
    port: u16,
    token: String,
    agent: Agent,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn send(&self, method: &str, path: &str, body: &Value) -> (u16, String) {
        let auth = format!("Bearer {}", self.token);
        let r = match method {
            "POST" => self
                .agent
                .post(&self.url(path))
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(body.to_string()),
            _ => self
                .agent
                .get(&self.url(path))
                .header("Authorization", &auth)
                .call(),
        };
        let mut r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = r
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap_or_default();
        (r.status().as_u16(), text)
    }

    fn create(&self, path: &str, body: &Value) {
        let (code, text) = self.send("POST", path, body);
        assert_eq!(code, 201, "POST {path}: {text}");
    }

    fn get(&self, path: &str) -> Value {
        let (code, text) = self.send("GET", path, &Value::Null);
        assert_eq!(code, 200, "GET {path}: {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    /// VmRSS and VmHWM in KiB.
    fn mem(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// User plus system CPU time of the controller so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/PID/stat");
        // Fields after the command name (which may hold spaces): state is field 3,
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
        let ticks = f[11] + f[12];
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// Stops the controller (SIGTERM by PID, then waits).
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the controller on `dir` and returns once it accepts connections.
fn start(o: &Opts, dir: &Path, port: u16, extra: &[&str]) -> Server {
    let help = Command::new(&o.controller)
        .args(["serve", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", o.controller.display()));
    // Keep the agent hub (where there is one) on loopback too.
    let hub: Vec<String> = if String::from_utf8_lossy(&help.stdout).contains("--hub-listen") {
        vec![format!("--hub-listen=127.0.0.1:{}", free_port())]
    } else {
        Vec::new()
    };
    let child = Command::new(&o.controller)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(&hub)
        // 1,000 nodes need more /24s than the default /16 holds.
        .arg("--cluster-cidr=10.0.0.0/8")
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", o.controller.display()));
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "controller did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
    let tokens = std::fs::read_to_string(dir.join("tokens.csv")).expect("tokens.csv");
    let token = tokens
        .lines()
        .find(|l| l.contains(",admin,"))
        .and_then(|l| l.split(',').next())
        .expect("an admin token")
        .to_owned();
    let agent: Agent = Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[
                    Certificate::from_pem(&ca).expect("CA PEM")
                ]))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(None)
        .max_idle_connections(256)
        .max_idle_connections_per_host(256)
        .build()
        .into();
    Server {
        child,
        port,
        token,
        agent,
    }
}

fn zone(i: usize) -> String {
    format!("zone-{}", i % ZONES)
}

fn node(j: usize) -> Value {
    let name = format!("node-{j:04}");
    let taints = if j.is_multiple_of(20) {
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    let res = json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": zone(j),
            "disktype": if j.is_multiple_of(3) { "ssd" } else { "hdd" },
        }},
        "spec": {"taints": taints},
        "status": {
            "capacity": res, "allocatable": res,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
        },
    })
}

fn lease(j: usize) -> Value {
    static NOW: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let now = NOW.get_or_init(|| {
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("date")
    });
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": format!("node-{j:04}"), "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": format!("node-{j:04}"), "leaseDurationSeconds": 40,
                 "renewTime": now},
    })
}

/// What pods of set `i` ask for: requests, and which placement rules apply.
struct Shape {
    cpu_milli: u64,
    memory: &'static str,
    zone: Option<String>,
    ssd_required: bool,
    prefer_zone: Option<String>,
    tolerates_gpu: bool,
}

fn shape(i: usize) -> Shape {
    Shape {
        cpu_milli: [100, 250, 500][i % 3],
        memory: ["64Mi", "128Mi", "256Mi", "512Mi"][i % 4],
        zone: i.is_multiple_of(5).then(|| zone(i / 5)),
        ssd_required: i.is_multiple_of(7),
        prefer_zone: i.is_multiple_of(11).then(|| zone(i / 11 + 1)),
        tolerates_gpu: i.is_multiple_of(10),
    }
}

fn replicaset(i: usize, replicas: usize) -> Value {
    let s = shape(i);
    let name = format!("set-{i:03}");
    let mut spec = json!({
        "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
            "resources": {"requests": {"cpu": format!("{}m", s.cpu_milli), "memory": s.memory}}}],
    });
    if let Some(z) = &s.zone {
        spec["nodeSelector"] = json!({"topology.kubernetes.io/zone": z});
    }
    let mut affinity = json!({});
    if s.ssd_required {
        affinity["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]}]});
    }
    if let Some(z) = &s.prefer_zone {
        affinity["preferredDuringSchedulingIgnoredDuringExecution"] = json!([{"weight": 50,
            "preference": {"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [z]}]}}]);
    }
    if affinity != json!({}) {
        spec["affinity"] = json!({"nodeAffinity": affinity});
    }
    if s.tolerates_gpu {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Equal",
            "value": "gpu", "effect": "NoSchedule"}]);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"set": name}},
            "template": {"metadata": {"labels": {"set": name}}, "spec": spec},
        },
    })
}

/// Runs `f(0..n)` on `clients` threads.
fn parallel(s: &Arc<Server>, n: usize, clients: usize, f: fn(&Server, usize)) {
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (s, next) = (s.clone(), next.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(&s, i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread");
    }
}

/// Watches pods from `rv` until `want` distinct pods are seen bound; returns when.
fn watch_bound(s: &Server, rv: &str, want: usize, bound: &Mutex<HashSet<String>>) -> Instant {
    loop {
        let r = s
            .agent
            .get(&s.url(&format!(
                "/api/v1/namespaces/bench/pods?watch=true&resourceVersion={rv}"
            )))
            .header("Authorization", &format!("Bearer {}", s.token))
            .call();
        let Ok(r) = r else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        assert_eq!(r.status().as_u16(), 200, "the watch is accepted");
        let mut reader = BufReader::new(r.into_body().into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("the watch ended before every pod was bound");
            }
            let ev: Value = serde_json::from_str(&line).expect("a watch event");
            let pod = &ev["object"];
            if pod["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            {
                let mut b = bound.lock().unwrap();
                b.insert(pod["metadata"]["name"].as_str().unwrap_or("").to_owned());
                if b.len() >= want {
                    return Instant::now();
                }
            }
        }
    }
}

/// Checks every placement; returns the problems found.
fn check_placements(pods: &[Value], nodes: &[Value]) -> Vec<String> {
    let nodes: HashMap<&str, &Value> = nodes
        .iter()
        .map(|n| (n["metadata"]["name"].as_str().unwrap_or(""), n))
        .collect();
    let mut cpu: HashMap<&str, u64> = HashMap::new();
    let mut count: HashMap<&str, u64> = HashMap::new();
    let mut bad = Vec::new();
    for p in pods {
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        let Some(n) = p["spec"]["nodeName"].as_str() else {
            bad.push(format!("{name} is not bound"));
            continue;
        };
        let Some(node) = nodes.get(n) else {
            bad.push(format!("{name} is on unknown node {n}"));
            continue;
        };
        let set: usize = p["metadata"]["labels"]["set"]
            .as_str()
            .and_then(|s| s.strip_prefix("set-"))
            .and_then(|s| s.parse().ok())
            .expect("a set label");
        let s = shape(set);
        let labels = &node["metadata"]["labels"];
        if let Some(z) = &s.zone
            && labels["topology.kubernetes.io/zone"] != z.as_str()
        {
            bad.push(format!("{name} wants {z} but is on {n}"));
        }
        if s.ssd_required && labels["disktype"] != "ssd" {
            bad.push(format!("{name} requires ssd but is on {n}"));
        }
        let tainted = node["spec"]["taints"]
            .as_array()
            .is_some_and(|t| !t.is_empty());
        if tainted && !s.tolerates_gpu {
            bad.push(format!("{name} does not tolerate {n}'s taint"));
        }
        *cpu.entry(n).or_default() += s.cpu_milli;
        *count.entry(n).or_default() += 1;
    }
    for (n, c) in cpu {
        if c > 8000 {
            bad.push(format!("{n} holds {c}m cpu of 8000m"));
        }
    }
    for (n, c) in count {
        if c > 110 {
            bad.push(format!("{n} holds {c} pods of 110"));
        }
    }
    bad
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let o = opts();
    let dir = std::env::temp_dir().join(format!("scheduler-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let port = free_port();

    // 1. Nodes, leases and pending pods, with the scheduler off.
    let t = Instant::now();
    let s = Arc::new(start(&o, &data, port, &["--controllers=*,-scheduler"]));
    while s
        .send("GET", "/api/v1/namespaces/kube-node-lease", &Value::Null)
        .0
        != 200
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    s.create(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
    );
    parallel(&s, o.nodes, o.clients, |s, j| {
        s.create("/api/v1/nodes", &node(j))
    });
    parallel(&s, o.nodes, o.clients, |s, j| {
        s.create(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            &lease(j),
        )
    });
    let per_set = o.pods / o.sets;
    for i in 0..o.sets {
        s.create(
            "/apis/apps/v1/namespaces/bench/replicasets",
            &replicaset(i, per_set),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let rv = loop {
        let list = s.get("/api/v1/namespaces/bench/pods");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= o.pods {
            assert_eq!(
                items.len(),
                o.pods,
                "the ReplicaSets made exactly PODS pods"
            );
            assert!(
                items.iter().all(|p| p["spec"]["nodeName"].is_null()),
                "no pod is bound while the scheduler is off"
            );
            break list["metadata"]["resourceVersion"]
                .as_str()
                .expect("a list revision")
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} pods were created",
            items.len(),
            o.pods
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let setup = t.elapsed();
    let (pending_rss, pending_hwm) = s.mem();
    Arc::into_inner(s).expect("no client left").stop();

    // 2. Every loop on, RUNS times from copies of the same data: time until every pod is
    //    bound.
    let mut runs: Vec<Run> = Vec::new();
    for i in 0..o.runs {
        let copy = dir.join(format!("run-{i}"));
        copy_dir(&data, &copy);
        let r = run(&o, &copy, port, &rv);
        let _ = std::fs::remove_dir_all(&copy);
        println!(
            "run {}: every pod bound after {:.0} ms ({:.0} /s), CPU {:.2} s, VmHWM {:.1} MiB, placements {}",
            i + 1,
            r.elapsed.as_secs_f64() * 1000.0,
            r.rate(o.pods),
            r.cpu.as_secs_f64(),
            mib(r.hwm),
            if r.problems.is_empty() { "ok" } else { "WRONG" }
        );
        runs.push(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
    runs.sort_by_key(|r| r.elapsed);
    let m = &runs[runs.len() / 2];

    let rate = m.rate(o.pods);
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let all_right = runs
        .iter()
        .all(|r| r.problems.is_empty() && r.placed == o.pods);
    println!(
        "flotilla-controller scheduling benchmark ({}, {} nodes, {} pods in {} ReplicaSets, median of {} runs)",
        o.controller.display(),
        o.nodes,
        o.pods,
        o.sets,
        runs.len()
    );
    println!(
        "{:<58} {:>12}",
        "setup (nodes, leases, pods created)",
        format!("{:.1} s", setup.as_secs_f64())
    );
    println!(
        "{:<58} {:>12}",
        "controller RSS holding them, scheduler off (VmRSS/VmHWM)",
        format!("{:.1}/{:.1} MiB", mib(pending_rss), mib(pending_hwm))
    );
    println!(
        "{:<58} {:>12}",
        "restart: listening after",
        format!("{:.0} ms", m.listening.as_secs_f64() * 1000.0)
    );
    println!(
        "{:<58} {:>12}",
        "restart: every pod bound after",
        format!("{:.0} ms", m.elapsed.as_secs_f64() * 1000.0)
    );
    println!(
        "{:<58} {:>9.0} /s   >= {TARGET:.0} /s ({})",
        "pods bound per second (from the restart, cache fill included)",
        rate,
        verdict(rate >= TARGET)
    );
    let mut cpus: Vec<f64> = runs.iter().map(|r| r.cpu.as_secs_f64()).collect();
    cpus.sort_by(f64::total_cmp);
    println!(
        "{:<58} {:>12}",
        "controller CPU (user+sys) until then / 2 s later",
        format!(
            "{:.2}/{:.2} s",
            m.cpu.as_secs_f64(),
            m.cpu_settled.as_secs_f64()
        )
    );
    println!(
        "{:<58} {:>12}",
        "controller CPU until every pod was bound, all runs (min-max)",
        format!("{:.2}-{:.2} s", cpus[0], cpus[cpus.len() - 1])
    );
    println!(
        "{:<58} {:>12}",
        "controller VmRSS/VmHWM when every pod was bound",
        format!("{:.1}/{:.1} MiB", mib(m.rss), mib(m.hwm))
    );
    println!(
        "{:<58} {:>12}",
        "controller VmRSS/VmHWM 2 s later",
        format!("{:.1}/{:.1} MiB", mib(m.settled_rss), mib(m.settled_hwm))
    );
    println!(
        "{:<58} {:>12}   every placement honours its filters, every run ({})",
        "placements checked",
        format!("{} on {} nodes", m.placed, m.used_nodes),
        verdict(all_right)
    );
    for p in runs.iter().flat_map(|r| &r.problems).take(10) {
        println!("  {p}");
    }
    if !all_right || rate < TARGET {
        std::process::exit(1);
    }
}

/// What one run with every loop on measured.
struct Run {
    listening: Duration,
    elapsed: Duration,
    cpu: Duration,
    cpu_settled: Duration,
    rss: u64,
    hwm: u64,
    settled_rss: u64,
    settled_hwm: u64,
    placed: usize,
    used_nodes: usize,
    problems: Vec<String>,
}

impl Run {
    fn rate(&self, pods: usize) -> f64 {
        pods as f64 / self.elapsed.as_secs_f64()
    }
}

/// Starts the controller on `data` with every loop on and measures until a watch from
/// `rv` has seen every pod bound; then checks the placements and stops it.
fn run(o: &Opts, data: &Path, port: u16, rv: &str) -> Run {
    let t0 = Instant::now();
    let s = start(o, data, port, &[]);
    let listening = t0.elapsed();
    let bound = Mutex::new(HashSet::new());
    let done = watch_bound(&s, rv, o.pods, &bound);
    let elapsed = done.duration_since(t0);
    let cpu = s.cpu();
    let (rss, hwm) = s.mem();
    std::thread::sleep(Duration::from_secs(2));
    let (settled_rss, settled_hwm) = s.mem();
    let cpu_settled = s.cpu();
    let pods = s.get("/api/v1/namespaces/bench/pods")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let nodes = s.get("/api/v1/nodes")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let problems = check_placements(&pods, &nodes);
    let used_nodes = pods
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect::<HashSet<_>>()
        .len();
    s.stop();
    Run {
        listening,
        elapsed,
        cpu,
        cpu_settled,
        rss,
        hwm,
        settled_rss,
        settled_hwm,
        placed: pods.len(),
        used_nodes,
        problems,
    }
}

/// Copies a directory tree (the controller's data directory: files and directories).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()))
    {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}
