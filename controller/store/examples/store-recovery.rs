//! store-recovery: what a crash costs. A child process writes pods from 64 writers and is
//! killed with SIGKILL once it has acknowledged N of them; the parent then times the
//! reopen (redb repairs the file after an unclean stop) and checks every acknowledged
//! pod is there. Done with redb's quick-repair off and on (the default), side by side.
//! Run: `cargo run --release -p flotilla-store --example store-recovery [-- --pods N]`.

mod common;

use common::pod_json;
use flotilla_store::{Key, Store, StoreOptions};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

fn options(quick_repair: bool) -> StoreOptions {
    StoreOptions {
        quick_repair,
        ..StoreOptions::default()
    }
}

/// Child: write until killed, printing each acknowledged pod's name.
fn child(path: &str, quick_repair: bool) {
    let store = Store::open(path.as_ref(), options(quick_repair)).unwrap();
    std::thread::scope(|s| {
        for w in 0..64 {
            let store = &store;
            s.spawn(move || {
                for i in 0.. {
                    let name = format!("web-{w:02}-{i:06}");
                    let value = pod_json("crash", &name);
                    store
                        .create_blocking(Key::new("pods", "crash", name.as_str()), value)
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{name}").unwrap();
                }
            });
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], args[3] == "true");
    }
    let mut pods = 20_000usize;
    if let Some(i) = args.iter().position(|a| a == "--pods") {
        pods = args[i + 1].parse().expect("--pods N");
    }
    println!("store-recovery: SIGKILL after {pods} acknowledged creates (64 writers)");
    println!("quick_repair  creates/s  reopen after crash  clean reopen   file");
    for quick_repair in [false, true] {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("store.redb");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--child", path.to_str().unwrap(), &quick_repair.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut acked = Vec::with_capacity(pods);
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            acked.push(line.unwrap());
            if acked.len() == pods {
                break;
            }
        }
        let rate = pods as f64 / started.elapsed().as_secs_f64();
        child.kill().unwrap(); // SIGKILL, by PID
        child.wait().unwrap();

        let start = Instant::now();
        let store = Store::open(&path, options(quick_repair)).unwrap();
        let crash_open = start.elapsed().as_secs_f64() * 1000.0;
        for name in &acked {
            assert!(
                store
                    .get(&Key::new("pods", "crash", name.as_str()))
                    .unwrap()
                    .is_some(),
                "acknowledged pod {name} lost"
            );
        }
        drop(store);
        let start = Instant::now();
        let store = Store::open(&path, options(quick_repair)).unwrap();
        let clean_open = start.elapsed().as_secs_f64() * 1000.0;
        drop(store);
        let size = std::fs::metadata(&path).unwrap().len() / (1 << 20);
        println!(
            "{quick_repair:<12} {rate:>10.0} {crash_open:>16.0} ms {clean_open:>10.0} ms {size:>5} MiB"
        );
    }
    println!("(every acknowledged create was found after each crash)");
}
