//! api-bench: drives a real `flotilla-controller serve` (started here on loopback,
//! fresh data directory) and prints figures against the targets of issue 5:
//! 10,000 durable pod creates from 64 clients (rate, p50/p99 latency), a list of
//! 10,000 pods, 100 concurrent watchers each seeing every event, and the controller's
//! RSS idle and holding 10,000 pods.
//!
//! Every figure is printed next to its target with PASS or FAIL. Memory is the
//! controller's VmRSS (and its high-water mark VmHWM) read from /proc: idle, after the
//! creates, and after the lists.
//!
//! Usage: api-bench [--controller PATH] [--pods N] [--clients N] [--watchers N]
//! [--watch-events N] [--controller-arg ARG]... [--controller-env NAME=VALUE]...

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

struct Opts {
    controller: PathBuf,
    pods: usize,
    clients: usize,
    watchers: usize,
    watch_events: usize,
    /// Extra arguments for `flotilla-controller serve` (e.g. `--controllers=-scheduler`).
    controller_args: Vec<String>,
    /// Extra environment of the controller (e.g. `MALLOC_ARENA_MAX=2`).
    controller_env: Vec<(String, String)>,
}

fn opts() -> Opts {
    let mut o = Opts {
        controller: PathBuf::from("target/release/flotilla-controller"),
        pods: 10_000,
        clients: 64,
        watchers: 100,
        watch_events: 1_000,
        controller_args: Vec::new(),
        controller_env: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--controller" => o.controller = PathBuf::from(v),
            "--pods" => o.pods = v.parse().expect("--pods N"),
            "--clients" => o.clients = v.parse().expect("--clients N"),
            "--watchers" => o.watchers = v.parse().expect("--watchers N"),
            "--watch-events" => o.watch_events = v.parse().expect("--watch-events N"),
            "--controller-arg" => o.controller_args.push(v),
            "--controller-env" => {
                let (k, val) = v.split_once('=').expect("--controller-env NAME=VALUE");
                o.controller_env.push((k.to_owned(), val.to_owned()));
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    o
}

struct Server {
    child: Child,
    base: String,
    token: String,
    agent: Agent,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(o: &Opts) -> Server {
    let dir = std::env::temp_dir().join(format!("api-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let child = Command::new(&o.controller)
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        // The agent hub listens on 0.0.0.0:6444 by default; keep it on loopback and
        // off any controller already running there.
        .args(["--hub-listen", &format!("127.0.0.1:{}", free_port())])
        .args(&o.controller_args)
        .envs(o.controller_env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", o.controller.display()));
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "controller did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = std::fs::read(dir.join("data/ca.crt")).unwrap();
    let tokens = std::fs::read_to_string(dir.join("data/tokens.csv")).unwrap();
    let token = tokens
        .lines()
        .find(|l| l.contains(",admin,"))
        .and_then(|l| l.split(',').next())
        .unwrap()
        .to_owned();
    let cert = Certificate::from_pem(&ca).unwrap();
    let agent: Agent = Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[cert]))
                .build(),
        )
        .http_status_as_error(false)
        .max_idle_connections(512)
        .max_idle_connections_per_host(512)
        .build()
        .into();
    Server {
        child,
        base: format!("https://127.0.0.1:{port}"),
        token,
        agent,
        dir,
    }
}

impl Server {
    fn post(&self, path: &str, body: &str) -> u16 {
        let mut r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .content_type("application/json")
            .send(body)
            .expect("POST");
        let _ = r.body_mut().read_to_string();
        r.status().as_u16()
    }

    fn get(&self, path: &str) -> String {
        let mut r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .expect("GET");
        r.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .expect("body")
    }

    /// The controller's memory now: VmRSS and VmHWM (peak RSS so far), in KiB.
    fn mem(&self) -> Mem {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Mem {
            rss: field("VmRSS:"),
            hwm: field("VmHWM:"),
        }
    }
}

/// VmRSS and VmHWM in KiB.
#[derive(Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
}

fn pod(ns: &str, i: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"pod-{i}","namespace":"{ns}","labels":{{"app":"bench"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox:1.36","command":["sleep","3600"],"ports":[{{"containerPort":80}}]}}]}}}}"#
    )
}

fn namespace(s: &Server, name: &str) {
    let code = s.post(
        "/api/v1/namespaces",
        &format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}}}}"#),
    );
    assert_eq!(code, 201, "creating namespace {name}");
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Median time of `n` GETs of `path`, with the body of the last one.
fn timed_gets(s: &Server, path: &str, n: usize) -> (Duration, String) {
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..n {
        let t = Instant::now();
        body = s.get(path);
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], body)
}

fn main() {
    let o = opts();
    let s = Arc::new(start(&o));
    std::thread::sleep(Duration::from_secs(2));
    let idle = s.mem();
    namespace(&s, "bench");
    namespace(&s, "bench-watch");

    // 1. Creates from concurrent clients.
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(o.pods)));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..o.clients)
        .map(|_| {
            let (s, next, lat, n) = (s.clone(), next.clone(), lat.clone(), o.pods);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let body = pod("bench", i);
                    let t = Instant::now();
                    let code = s.post("/api/v1/namespaces/bench/pods", &body);
                    mine.push(t.elapsed());
                    assert_eq!(code, 201, "create pod-{i}");
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let create_time = t0.elapsed();
    let mut lat = lat.lock().unwrap().clone();
    lat.sort();
    let rate = o.pods as f64 / create_time.as_secs_f64();
    // Let the scheduler finish its writes for the new (unschedulable) pods.
    std::thread::sleep(Duration::from_secs(3));
    let created = s.mem();

    // 2. List all pods.
    let (list_median, body) = timed_gets(&s, "/api/v1/namespaces/bench/pods", 7);
    let count = body.matches("\"kind\":\"Pod\"").count();
    assert_eq!(count, o.pods, "the list returns every pod");
    drop(body);
    let (selector_median, body) = timed_gets(
        &s,
        "/api/v1/namespaces/bench/pods?labelSelector=app%3Dbench",
        3,
    );
    assert_eq!(
        body.matches("\"kind\":\"Pod\"").count(),
        o.pods,
        "the selector list returns every pod"
    );
    drop(body);
    // What `kubectl get pods` asks for: Table pages of 500.
    let t = Instant::now();
    let mut rows = 0;
    let mut token = String::new();
    loop {
        let r = s
            .agent
            .get(&format!(
                "{}/api/v1/namespaces/bench/pods?limit=500{token}",
                s.base
            ))
            .header("Authorization", &format!("Bearer {}", s.token))
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .call()
            .expect("GET table");
        let v: serde_json::Value = serde_json::from_str(
            &r.into_body()
                .with_config()
                .limit(1 << 30)
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        rows += v["rows"].as_array().map_or(0, Vec::len);
        match v["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => token = format!("&continue={c}"),
            _ => break,
        }
    }
    let table_time = t.elapsed();
    assert_eq!(rows, o.pods, "the table pages hold every pod");
    std::thread::sleep(Duration::from_secs(1));
    let listed = s.mem();

    // 3. Watchers, each must see every event.
    let rv: String = {
        let body = s.get("/api/v1/namespaces/bench-watch/pods?limit=1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ready = Arc::new(Barrier::new(o.watchers + 1));
    let done_at = Arc::new(Mutex::new(Vec::new()));
    let watchers: Vec<_> = (0..o.watchers)
        .map(|_| {
            let (s, ready, done_at, rv, want) = (
                s.clone(),
                ready.clone(),
                done_at.clone(),
                rv.clone(),
                o.watch_events,
            );
            std::thread::spawn(move || {
                let r = s
                    .agent
                    .get(&format!(
                        "{}/api/v1/namespaces/bench-watch/pods?watch=true&resourceVersion={rv}",
                        s.base
                    ))
                    .header("Authorization", &format!("Bearer {}", s.token))
                    .call()
                    .expect("watch");
                ready.wait();
                let mut reader = BufReader::new(r.into_body().into_reader());
                let mut seen = 0;
                let mut line = String::new();
                while seen < want {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if line.contains("\"type\":\"ADDED\"") {
                        seen += 1;
                    }
                }
                done_at.lock().unwrap().push((Instant::now(), seen));
            })
        })
        .collect();
    ready.wait();
    let w0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (s, next, n) = (s.clone(), next.clone(), o.watch_events);
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    assert_eq!(
                        s.post(
                            "/api/v1/namespaces/bench-watch/pods",
                            &pod("bench-watch", i)
                        ),
                        201
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let writes_done = w0.elapsed();
    for w in watchers {
        w.join().unwrap();
    }
    let done = done_at.lock().unwrap().clone();
    let all_saw = done.iter().all(|(_, n)| *n == o.watch_events);
    let last = done.iter().map(|(t, _)| *t).max().unwrap();
    let fanout = last.duration_since(w0);
    let delivered = (o.watchers * o.watch_events) as f64 / fanout.as_secs_f64();

    println!(
        "flotilla-controller API benchmark ({} on loopback, HTTP/1.1 + TLS)",
        o.controller.display()
    );
    println!("{:<52} {:>14}   target", "measure", "result");
    println!(
        "{:<52} {:>10.0} /s   >= 2000 /s ({})",
        format!(
            "durable pod creates, {} clients, {} pods",
            o.clients, o.pods
        ),
        rate,
        verdict(rate >= 2000.0)
    );
    println!(
        "{:<52} {:>11.1} ms",
        "  create latency p50",
        ms(pct(&lat, 0.50))
    );
    println!(
        "{:<52} {:>11.1} ms",
        "  create latency p99",
        ms(pct(&lat, 0.99))
    );
    println!(
        "{:<52} {:>11.1} ms   <= 150 ms ({})",
        format!("list of {} pods (median of 7)", o.pods),
        ms(list_median),
        verdict(ms(list_median) <= 150.0)
    );
    println!(
        "{:<52} {:>11.1} ms",
        "  same, with labelSelector=app=bench (median of 3)",
        ms(selector_median)
    );
    println!(
        "{:<52} {:>11.1} ms",
        "  same, as Table in pages of 500 (kubectl get)",
        ms(table_time)
    );
    println!(
        "{:<52} {:>11}      every watcher sees every event ({})",
        format!("{} watchers x {} events", o.watchers, o.watch_events),
        if all_saw { "all seen" } else { "LOST" },
        verdict(all_saw)
    );
    println!("{:<52} {:>11.1} ms", "  writes done after", ms(writes_done));
    println!(
        "{:<52} {:>11.1} ms",
        "  last watcher saw the last event after",
        ms(fanout)
    );
    println!("{:<52} {:>10.0} /s", "  events delivered", delivered);
    println!(
        "{:<52} {:>10.1} MiB   <= 16 MiB ({})",
        "controller VmRSS idle",
        mib(idle.rss),
        verdict(idle.rss <= 16 * 1024)
    );
    for (what, m) in [("after the creates", created), ("after the lists", listed)] {
        println!(
            "{:<52} {:>10.1} MiB   <= 64 MiB ({})",
            format!("controller VmRSS holding {} pods, {what}", o.pods),
            mib(m.rss),
            verdict(m.rss <= 64 * 1024)
        );
        println!("{:<52} {:>10.1} MiB", "  VmHWM (peak so far)", mib(m.hwm));
    }
    let end = s.mem();
    println!(
        "{:<52} {:>10.1} MiB   <= 64 MiB ({})",
        format!(
            "controller VmRSS holding {} pods, after the watchers",
            o.pods + o.watch_events
        ),
        mib(end.rss),
        verdict(end.rss <= 64 * 1024)
    );
    println!("{:<52} {:>10.1} MiB", "  VmHWM (peak so far)", mib(end.hwm));
    println!("(k3s's server needs about 1.6 GB for comparison; not run here: no k3s offline)");
}
