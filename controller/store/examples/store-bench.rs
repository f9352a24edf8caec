//! store-bench: throughput and latency of flotilla-store on this machine.
//!
//! Measures durable creates from 1 and from 64 concurrent writers (group commit), list of
//! 10,000 pods, get, watch fan-out to 100 watchers, and the process RSS idle and holding
//! 10,000 pods. Run: `cargo run --release -p flotilla-store --example store-bench
//! [-- --pods N --dir PATH]`. Prints medians of several rounds.

mod common;

use common::{median, pod_json, rss_kib};
use flotilla_store::{Key, Store, StoreOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Creates `count` pods from `writers` concurrent threads; returns (seconds, commits).
fn create_round(store: &Store, ns: &str, count: usize, writers: usize) -> (f64, u64) {
    let before = store.stats().commits;
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let ns = ns.to_owned();
            std::thread::spawn(move || {
                let mut i = w;
                while i < count {
                    let name = format!("web-{i:06}");
                    let value = pod_json(&ns, &name);
                    store
                        .create_blocking(Key::new("pods", ns.as_str(), name), value)
                        .unwrap();
                    i += writers;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (
        start.elapsed().as_secs_f64(),
        store.stats().commits - before,
    )
}

fn main() {
    let mut pods = 10_000usize;
    let mut dir: Option<PathBuf> = None;
    let mut options = StoreOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods" => pods = args.next().and_then(|v| v.parse().ok()).expect("--pods N"),
            "--dir" => dir = Some(args.next().expect("--dir PATH").into()),
            "--cache-mib" => {
                options.cache_size = args
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("--cache-mib N")
                    << 20
            }
            "--bench" => {}
            other => panic!("unknown argument {other:?} (use --pods N, --dir PATH, --cache-mib N)"),
        }
    }
    let tmp = tempfile::TempDir::new_in(dir.unwrap_or_else(std::env::temp_dir)).unwrap();
    let path = tmp.path().join("store.redb");
    println!(
        "store-bench: {pods} pods of {} bytes, file {}",
        pod_json("bench", "web-000000").len(),
        path.display()
    );
    let rss_start = rss_kib();
    let store = Store::open(&path, options.clone()).unwrap();
    println!(
        "rss after open (idle):          {:>8} KiB",
        rss_kib().max(rss_start)
    );

    // Sequential durable creates: one fsync'd commit each.
    let seq = 500.min(pods);
    let (secs, commits) = create_round(&store, "seq", seq, 1);
    println!(
        "create, 1 writer:               {:>8.0} /s  ({seq} creates, {commits} commits, {:.2} ms each)",
        seq as f64 / secs,
        secs * 1000.0 / seq as f64
    );

    // 64 concurrent writers, three rounds into fresh namespaces; the last fills `bench`.
    let mut rates = Vec::new();
    let mut batches = Vec::new();
    for round in 0..3 {
        let ns = if round == 2 {
            "bench".to_string()
        } else {
            format!("round{round}")
        };
        let (secs, commits) = create_round(&store, &ns, pods, 64);
        rates.push(pods as f64 / secs);
        batches.push(pods as f64 / commits as f64);
    }
    println!(
        "create, 64 writers (median/3):  {:>8.0} /s  (avg {:.1} writes per commit)",
        median(rates),
        median(batches)
    );

    println!("rss after creates:              {:>8} KiB", rss_kib());

    // List all pods of one namespace (10,000), full snapshot read and copy.
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..15 {
        let start = Instant::now();
        let page = store.list("pods", Some("bench"), None, None).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        n = page.items.len();
    }
    println!("list {n} pods (median/15):    {:>8.2} ms", median(times));

    // Streaming list: values borrowed from the snapshot, nothing collected.
    let mut times = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        let mut bytes = 0;
        store
            .list_each("pods", Some("bench"), None, None, |o| {
                bytes += o.value.len();
                Ok(())
            })
            .unwrap();
        assert!(bytes > 0);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    println!("list_each {n} pods (median/15):{:>8.2} ms", median(times));

    // Paged list: 500 per page.
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut after = None;
        let mut total = 0;
        loop {
            let page = store
                .list("pods", Some("bench"), after.as_ref(), Some(500))
                .unwrap();
            total += page.items.len();
            after = page.items.last().map(|o| o.key.clone());
            if !page.more {
                break;
            }
        }
        assert_eq!(total, n);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    println!("list {n} pods, pages of 500:  {:>8.2} ms", median(times));
    println!("rss after lists:                {:>8} KiB", rss_kib());

    let start = Instant::now();
    let gets = 10_000;
    for i in 0..gets {
        let k = Key::new("pods", "bench", format!("web-{:06}", i % pods));
        assert!(store.get(&k).unwrap().is_some());
    }
    println!(
        "get (mean of {gets}):            {:>8.1} µs",
        start.elapsed().as_secs_f64() * 1e6 / gets as f64
    );

    // Watch fan-out: 100 watchers, each must see every update.
    let events = 2_000.min(pods);
    let watchers: Vec<_> = (0..100)
        .map(|_| {
            let mut w = store.watch("pods", Some("bench"), None).unwrap();
            std::thread::spawn(move || {
                futures_lite::future::block_on(async {
                    for _ in 0..events {
                        w.next().await.expect("watch ended");
                    }
                })
            })
        })
        .collect();
    let start = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut i = w;
                while i < events {
                    let name = format!("web-{i:06}");
                    let value = pod_json("bench", &name);
                    store
                        .update_blocking(Key::new("pods", "bench", name), value, None)
                        .unwrap();
                    i += 64;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for w in watchers {
        w.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "watch: 100 watchers x {events} updates:{:>8.0} events delivered/s ({:.0} updates/s)",
        100.0 * events as f64 / secs,
        events as f64 / secs
    );
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "rss holding {} pods:          {:>8} KiB",
        store
            .list("pods", None, None, Some(1))
            .map(|_| pods * 3 + seq)
            .unwrap(),
        rss_kib()
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("file size:                      {:>8} KiB", size / 1024);
    drop(store);
    let start = Instant::now();
    let mut store = Store::open(
        &path,
        StoreOptions {
            compact_file_on_open: true,
            ..options.clone()
        },
    )
    .unwrap();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "reopen with file compaction:    {:>8.0} ms, file {} KiB, revision {}",
        start.elapsed().as_secs_f64() * 1000.0,
        size / 1024,
        store.revision()
    );
    for compact in [true, false] {
        drop(store);
        let start = Instant::now();
        store = Store::open(
            &path,
            StoreOptions {
                compact_file_on_open: compact,
                ..options.clone()
            },
        )
        .unwrap();
        println!(
            "reopen again, compact={compact:<5}:   {:>8.0} ms, revision {}",
            start.elapsed().as_secs_f64() * 1000.0,
            store.revision()
        );
    }
}
