//! Group commit and crash safety: concurrent writers share commits, and a write that
//! returned survives SIGKILL of the process right after.

use flotilla_store::{Key, Store, StoreOptions};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use tempfile::TempDir;

#[test]
fn concurrent_creates_share_group_commits() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&dir.path().join("store.redb"), StoreOptions::default()).unwrap();
    const WRITERS: usize = 64;
    const EACH: usize = 20;
    let threads: Vec<_> = (0..WRITERS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut revs = Vec::new();
                for i in 0..EACH {
                    let key = Key::new("pods", "bench", format!("w{t}-{i}"));
                    revs.push(store.create_blocking(key, vec![b'x'; 512]).unwrap());
                }
                revs
            })
        })
        .collect();
    let mut revs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    revs.sort();
    let total = (WRITERS * EACH) as u64;
    assert_eq!(
        revs,
        (2..=total + 1).collect::<Vec<_>>(),
        "every write got its own revision"
    );
    let stats = store.stats();
    assert_eq!(stats.writes, total);
    assert!(
        stats.commits * 4 <= total,
        "{} writes took {} commits: concurrent writes are not being batched",
        total,
        stats.commits
    );
    assert_eq!(
        store
            .list("pods", Some("bench"), None, None)
            .unwrap()
            .items
            .len() as u64,
        total
    );
}

#[test]
fn batches_are_bounded_by_count_and_bytes() {
    let run = |options: StoreOptions, value_len: usize| {
        let dir = TempDir::new().unwrap();
        let store = Store::open(&dir.path().join("store.redb"), options).unwrap();
        std::thread::scope(|s| {
            for t in 0..16 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..4 {
                        let key = Key::new("pods", "b", format!("{t}-{i}"));
                        store.create_blocking(key, vec![b'v'; value_len]).unwrap();
                    }
                });
            }
        });
        let stats = store.stats();
        assert_eq!(stats.writes, 64);
        stats.commits
    };
    // At most 4 writes per commit.
    let commits = run(
        StoreOptions {
            max_batch: 4,
            ..StoreOptions::default()
        },
        10,
    );
    assert!(commits >= 16, "64 writes in {commits} commits of at most 4");
    // 64 KiB values, 128 KiB per batch: at most 2 writes per commit.
    let commits = run(
        StoreOptions {
            max_batch_bytes: 128 << 10,
            ..StoreOptions::default()
        },
        64 << 10,
    );
    assert!(
        commits >= 32,
        "64 writes of 64 KiB in {commits} commits of at most 128 KiB"
    );
}

const CHILD_ENV: &str = "FLOTILLA_STORE_CRASH_CHILD";

/// Run by `acknowledged_writes_survive_sigkill` in a child process: writes from 8
/// threads and prints each acknowledged key until it is killed.
#[test]
#[ignore = "helper: runs only as the child of acknowledged_writes_survive_sigkill"]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(path.as_ref(), StoreOptions::default()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let name = format!("t{t}-{i}");
                    let rev = store
                        .create_blocking(
                            Key::new("pods", "crash", name.clone()),
                            name.clone().into_bytes(),
                        )
                        .unwrap();
                    println!("acked {name} {rev}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("acked ") {
            let (name, rev) = rest.split_once(' ').unwrap();
            acked.push((name.to_owned(), rev.parse::<u64>().unwrap()));
            if acked.len() == 300 {
                // SIGKILL, by PID, the moment the 300th acknowledgement is read.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(
        acked.len(),
        300,
        "the child stopped before acknowledging 300 writes"
    );

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    for (name, rev) in &acked {
        let obj = store
            .get(&Key::new("pods", "crash", name.as_str()))
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write {name} (revision {rev}) lost"));
        assert_eq!(obj.revision, *rev);
        assert_eq!(&obj.value[..], name.as_bytes());
    }
    let max_acked = acked.iter().map(|(_, r)| *r).max().unwrap();
    assert!(store.revision() >= max_acked);
    // Writes go on after the crash, with fresh revisions.
    let newest = store
        .list("pods", Some("crash"), None, None)
        .unwrap()
        .items
        .iter()
        .map(|o| o.revision)
        .max()
        .unwrap();
    let r = store
        .create_blocking(Key::new("pods", "crash", "after"), b"x".to_vec())
        .unwrap();
    assert!(
        r > newest,
        "revision {r} after the crash must exceed {newest}"
    );
}
