//! store-vs-etcd: flotilla-store next to etcd, the store Kubernetes runs on, in one run.
//!
//! Same workload on both: 64 concurrent writers each creating pods (a create-if-absent
//! transaction on etcd, as the kube-apiserver does), then lists of every pod, then
//! resident memory. etcd (Debian's etcd-server, `/usr/bin/etcd` or `$ETCD`) is started on
//! 127.0.0.1 with a temporary data dir and stopped by PID at the end; it is reached
//! through its JSON gateway, so its figures include HTTP and base64 — what a client of
//! etcd pays — while flotilla-store is called in-process, as the controller calls it.
//! Run: `cargo run --release -p flotilla-store --example store-vs-etcd [-- --pods N]`.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{median, pod_json, rss_kib, rss_kib_of};
use flotilla_store::{Key, Store, StoreOptions};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRITERS: usize = 64;

struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    fn start() -> Etcd {
        let bin = std::env::var("ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let dir = tempfile::TempDir::new().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&bin)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (apt-get install etcd-server): {e}"));
        let etcd = Etcd {
            child,
            url,
            _dir: dir,
        };
        let agent = ureq::Agent::new_with_defaults();
        let deadline = Instant::now() + Duration::from_secs(30);
        while etcd
            .post(&agent, "/v3/kv/range", r#"{"key":"AA=="}"#)
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    fn post(&self, agent: &ureq::Agent, path: &str, body: &str) -> Result<String, ureq::Error> {
        agent
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .send(body)?
            .into_body()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
    }

    /// Create-if-absent, like the kube-apiserver's create.
    fn create(&self, agent: &ureq::Agent, key: &str, value: &[u8]) {
        let k = B64.encode(key);
        let body = format!(
            r#"{{"compare":[{{"key":"{k}","result":"EQUAL","target":"MOD","mod_revision":"0"}}],"success":[{{"request_put":{{"key":"{k}","value":"{}"}}}}]}}"#,
            B64.encode(value)
        );
        let reply = self.post(agent, "/v3/kv/txn", &body).unwrap();
        assert!(
            reply.contains(r#""succeeded":true"#),
            "etcd create failed: {reply}"
        );
    }

    /// Every value under `prefix`, decoded.
    fn list(&self, agent: &ureq::Agent, prefix: &str) -> usize {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = format!(
            r#"{{"key":"{}","range_end":"{}"}}"#,
            B64.encode(prefix),
            B64.encode(&end)
        );
        let reply = self.post(agent, "/v3/kv/range", &body).unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let kvs = v["kvs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for kv in kvs {
            let value = B64.decode(kv["value"].as_str().unwrap()).unwrap();
            assert!(!value.is_empty());
        }
        kvs.len()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f(writer, index)` for `count` items over WRITERS threads; returns seconds.
fn concurrently(count: usize, f: impl Fn(usize, usize) + Sync) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let f = &f;
            s.spawn(move || {
                for i in (w..count).step_by(WRITERS) {
                    f(w, i);
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn main() {
    let mut pods = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods" => pods = args.next().and_then(|v| v.parse().ok()).expect("--pods N"),
            "--bench" => {}
            other => panic!("unknown argument {other:?} (use --pods N)"),
        }
    }
    println!("store-vs-etcd: {pods} pods, {WRITERS} writers, medians of 3 rounds (lists: 9)");

    // flotilla-store
    let rss0 = rss_kib();
    let dir = tempfile::TempDir::new().unwrap();
    let store = Store::open(&dir.path().join("store.redb"), StoreOptions::default()).unwrap();
    let mut ours_create = Vec::new();
    for round in 0..3 {
        let secs = concurrently(pods, |_, i| {
            let name = format!("web-{i:06}");
            let value = pod_json("bench", &name);
            store
                .create_blocking(Key::new("pods", format!("r{round}"), name), value)
                .unwrap();
        });
        ours_create.push(pods as f64 / secs);
    }
    let mut ours_list = Vec::new();
    for _ in 0..9 {
        let start = Instant::now();
        let page = store.list("pods", Some("r2"), None, None).unwrap();
        assert_eq!(page.items.len(), pods);
        ours_list.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let ours_rss = rss_kib().saturating_sub(rss0);
    drop(store);

    // etcd
    let etcd = Etcd::start();
    let agents: Vec<_> = (0..WRITERS)
        .map(|_| ureq::Agent::new_with_defaults())
        .collect();
    let mut etcd_create = Vec::new();
    for round in 0..3 {
        let secs = concurrently(pods, |w, i| {
            let name = format!("web-{i:06}");
            let value = pod_json("bench", &name);
            etcd.create(
                &agents[w],
                &format!("/registry/pods/r{round}/{name}"),
                &value,
            );
        });
        etcd_create.push(pods as f64 / secs);
    }
    let mut etcd_list = Vec::new();
    for _ in 0..9 {
        let start = Instant::now();
        assert_eq!(etcd.list(&agents[0], "/registry/pods/r2/"), pods);
        etcd_list.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let etcd_rss = rss_kib_of(etcd.child.id());

    let (oc, ec) = (median(ours_create), median(etcd_create));
    let (ol, el) = (median(ours_list), median(etcd_list));
    println!("                         flotilla-store        etcd   ratio");
    println!(
        "durable creates/s        {oc:>14.0} {ec:>11.0} {:>6.1}x",
        oc / ec
    );
    println!(
        "list {pods} pods (ms)    {ol:>14.1} {el:>11.1} {:>6.1}x",
        el / ol
    );
    println!(
        "RSS (MiB)                {:>14.1} {:>11.1} {:>6.1}x",
        ours_rss as f64 / 1024.0,
        etcd_rss as f64 / 1024.0,
        etcd_rss as f64 / ours_rss.max(1) as f64
    );
    println!(
        "(flotilla-store RSS: growth of this process, bench threads included; etcd: its VmRSS)"
    );
}
