//! Watches: replay from a revision then live events, filters, compaction (Gone), many
//! watchers, and the end of watches when the store closes.

use flotilla_store::{Event, EventKind, Key, Store, StoreError, StoreOptions, Watcher};
use std::time::Duration;
use tempfile::TempDir;

fn open_with(dir: &TempDir, options: StoreOptions) -> Store {
    Store::open(&dir.path().join("store.redb"), options).unwrap()
}

fn pod(ns: &str, name: &str) -> Key {
    Key::new("pods", ns, name)
}

/// The next event, failing the test if none arrives in 10 s.
async fn next(w: &mut Watcher) -> Event {
    smol::future::or(
        async { w.next().await.expect("watch ended early") },
        async {
            smol::Timer::after(Duration::from_secs(10)).await;
            panic!("no event within 10 s")
        },
    )
    .await
}

/// Creates `n` pods in namespace `ns` from 16 threads (group commits keep it quick).
fn create_many(store: &Store, ns: &str, n: usize) {
    std::thread::scope(|s| {
        for t in 0..16 {
            s.spawn(move || {
                for i in (t..n).step_by(16) {
                    store
                        .create_blocking(pod(ns, &i.to_string()), b"".to_vec())
                        .unwrap();
                }
            });
        }
    });
}

/// Asserts that nothing arrives within 200 ms.
async fn quiet(w: &mut Watcher) {
    let got = smol::future::or(async { Some(w.next().await) }, async {
        smol::Timer::after(Duration::from_millis(200)).await;
        None
    })
    .await;
    assert!(got.is_none(), "unexpected event {got:?}");
}

#[test]
fn watch_replays_history_then_streams_live() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    smol::block_on(async {
        // (from = 0 would mean "from now", so history starts at revision 2 here)
        store
            .create(Key::cluster("nodes", "first"), b"n".to_vec())
            .await
            .unwrap();
        let r1 = store.create(pod("a", "x"), b"1".to_vec()).await.unwrap();
        let r2 = store
            .update(pod("a", "x"), b"2".to_vec(), Some(r1))
            .await
            .unwrap();
        store
            .create(Key::cluster("nodes", "n"), b"n".to_vec())
            .await
            .unwrap();
        let r4 = store.delete(&pod("a", "x"), None).await.unwrap().revision;

        let mut w = store.watch("pods", None, Some(r1 - 1)).unwrap();
        let e = next(&mut w).await;
        assert_eq!(
            (e.kind, e.object.revision, &e.object.value[..]),
            (EventKind::Added, r1, &b"1"[..])
        );
        let e = next(&mut w).await;
        assert_eq!(
            (e.kind, e.object.revision, &e.object.value[..]),
            (EventKind::Modified, r2, &b"2"[..])
        );
        let e = next(&mut w).await;
        assert_eq!(
            (e.kind, e.object.revision, &e.object.value[..]),
            (EventKind::Deleted, r4, &b"2"[..])
        );
        assert_eq!(e.object.key, pod("a", "x"));

        let r5 = store.create(pod("b", "y"), b"5".to_vec()).await.unwrap();
        let e = next(&mut w).await;
        assert_eq!((e.kind, e.object.revision), (EventKind::Added, r5));
        quiet(&mut w).await;

        // From a revision in the middle: only later events.
        let mut w = store.watch("pods", None, Some(r2)).unwrap();
        assert_eq!(next(&mut w).await.object.revision, r4);
        assert_eq!(next(&mut w).await.object.revision, r5);
    });
}

#[test]
fn watch_from_now_and_filters() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    smol::block_on(async {
        store.create(pod("a", "old"), b"o".to_vec()).await.unwrap();
        let mut all = store.watch("pods", None, None).unwrap();
        let mut ns_a = store.watch("pods", Some("a"), Some(0)).unwrap();
        let mut nodes = store.watch("nodes", Some(""), None).unwrap();
        store.create(pod("b", "1"), b"".to_vec()).await.unwrap();
        store.create(pod("a", "2"), b"".to_vec()).await.unwrap();
        store
            .create(Key::cluster("nodes", "n1"), b"".to_vec())
            .await
            .unwrap();
        store
            .create(Key::new("podsx", "a", "3"), b"".to_vec())
            .await
            .unwrap();

        assert_eq!(next(&mut all).await.object.key, pod("b", "1"));
        assert_eq!(next(&mut all).await.object.key, pod("a", "2"));
        quiet(&mut all).await;
        assert_eq!(next(&mut ns_a).await.object.key, pod("a", "2"));
        quiet(&mut ns_a).await;
        assert_eq!(
            next(&mut nodes).await.object.key,
            Key::cluster("nodes", "n1")
        );
        quiet(&mut nodes).await;
    });
}

#[test]
fn watch_from_a_future_revision_waits_for_it() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    smol::block_on(async {
        // Revisions 2, 3 and 4 are coming; the watch wants what follows 3.
        let mut w = store.watch("pods", None, Some(3)).unwrap();
        for i in 0..3 {
            store
                .create(pod("a", &i.to_string()), b"".to_vec())
                .await
                .unwrap();
        }
        assert_eq!(next(&mut w).await.object.revision, 4);
        quiet(&mut w).await;
    });
}

#[test]
fn compacted_history_is_gone() {
    let dir = TempDir::new().unwrap();
    let options = StoreOptions {
        history_revisions: 5,
        ..StoreOptions::default()
    };
    let store = open_with(&dir, options.clone());
    for i in 0..20 {
        store
            .create_blocking(pod("a", &i.to_string()), b"".to_vec())
            .unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.revision, 21);
    assert_eq!(stats.compacted, 16);
    match store.watch("pods", None, Some(3)) {
        Err(StoreError::Gone { oldest }) => assert_eq!(oldest, 16),
        other => panic!("expected Gone, got {other:?}"),
    }
    // The window itself still replays.
    let mut w = store.watch("pods", None, Some(16)).unwrap();
    smol::block_on(async {
        for rev in 17..=21 {
            assert_eq!(next(&mut w).await.object.revision, rev);
        }
    });
    drop(w);
    // The compaction mark is persisted.
    drop(store);
    let store = open_with(&dir, options);
    assert_eq!(store.stats().compacted, 16);
    assert!(matches!(
        store.watch("pods", None, Some(15)),
        Err(StoreError::Gone { oldest: 16 })
    ));
}

#[test]
fn history_expires_by_age_while_idle() {
    let dir = TempDir::new().unwrap();
    let store = open_with(
        &dir,
        StoreOptions {
            history_age: Duration::from_secs(2),
            compaction_interval: Duration::from_millis(50),
            ..StoreOptions::default()
        },
    );
    for i in 0..3 {
        store
            .create_blocking(pod("a", &i.to_string()), b"".to_vec())
            .unwrap();
    }
    assert!(store.watch("pods", None, Some(1)).is_ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.stats().compacted < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "history never expired: {:?}",
            store.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(
        store.watch("pods", None, Some(1)),
        Err(StoreError::Gone { oldest: 4 })
    ));
    // Watching from the current revision still works: nothing after it is missing.
    let mut w = store.watch("pods", None, Some(4)).unwrap();
    store
        .create_blocking(pod("a", "new"), b"".to_vec())
        .unwrap();
    smol::block_on(async { assert_eq!(next(&mut w).await.object.revision, 5) });
}

#[test]
fn hundred_watchers_each_see_every_event() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    const EVENTS: u64 = 300;
    smol::block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let mut w = store.watch("pods", None, None).unwrap();
            tasks.push(smol::spawn(async move {
                let mut revs = Vec::new();
                while (revs.len() as u64) < EVENTS {
                    revs.push(next(&mut w).await.object.revision);
                }
                revs
            }));
        }
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                smol::spawn(async move {
                    for i in 0..EVENTS / 4 {
                        store
                            .create(pod("a", &format!("{t}-{i}")), vec![b'x'; 200])
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await;
        }
        let expected: Vec<u64> = (2..=EVENTS + 1).collect();
        for t in tasks {
            assert_eq!(t.await, expected);
        }
    });
}

#[test]
fn a_lagging_watcher_is_cut_off_and_can_resume() {
    let dir = TempDir::new().unwrap();
    let store = open_with(
        &dir,
        StoreOptions {
            watch_queue: 10,
            ..StoreOptions::default()
        },
    );
    let mut w = store.watch("pods", None, None).unwrap();
    for i in 0..30 {
        store
            .create_blocking(pod("a", &i.to_string()), b"".to_vec())
            .unwrap();
    }
    smol::block_on(async {
        let mut last = 1;
        while let Some(e) = w.next().await {
            assert_eq!(e.object.revision, last + 1);
            last = e.object.revision;
        }
        // It held exactly its queue's length of events (revisions 2..=11).
        assert_eq!(last, 11, "a watcher with a 10-event queue");
        // Resume from the last revision seen: the rest arrive, in order.
        let mut w = store.watch("pods", None, Some(last)).unwrap();
        for rev in last + 1..=31 {
            assert_eq!(next(&mut w).await.object.revision, rev);
        }
    });
}

#[test]
fn watches_end_when_the_store_closes() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    let mut w = store.watch("pods", None, None).unwrap();
    store.create_blocking(pod("a", "x"), b"".to_vec()).unwrap();
    drop(store);
    smol::block_on(async {
        assert_eq!(next(&mut w).await.object.revision, 2);
        assert!(w.next().await.is_none());
    });
}

#[test]
fn a_replay_overtaken_by_compaction_ends_with_gone() {
    let dir = TempDir::new().unwrap();
    let store = open_with(
        &dir,
        StoreOptions {
            history_revisions: 1000,
            ..StoreOptions::default()
        },
    );
    create_many(&store, "a", 900);
    let mut w = store.watch("pods", None, Some(10)).unwrap();
    smol::block_on(async {
        assert_eq!(next(&mut w).await.object.revision, 11);
        // 1,000 more writes compact everything up to revision 800 — past where the
        // replay stands, so it cannot go on without a gap.
        create_many(&store, "b", 1000);
        let mut last = 11;
        while let Some(e) = w.next().await {
            assert_eq!(e.object.revision, last + 1, "no gap before the end");
            last = e.object.revision;
        }
        assert!(last < 800, "replay read past the compaction point: {last}");
        assert!(
            matches!(w.error(), Some(StoreError::Gone { oldest: 901 })),
            "{:?}",
            w.error()
        );
    });
}

#[test]
fn watches_started_during_writes_have_no_gap_or_duplicate() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Four writers keep committing while watches start: the seam between replay
        // (from the log) and live events (from the queue) is crossed under load.
        for t in 0..4 {
            let (store, stop) = (&store, &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store
                        .create_blocking(pod("a", &format!("{t}-{i}")), b"".to_vec())
                        .unwrap();
                    i += 1;
                }
            });
        }
        smol::block_on(async {
            for round in 0..30u64 {
                while store.revision() < 20 + round * 5 {
                    smol::Timer::after(Duration::from_millis(1)).await;
                }
                let from = store.revision() - 10 - round % 7;
                let mut w = store.watch("pods", None, Some(from)).unwrap();
                let until = store.revision() + 20;
                let mut expect = from + 1;
                while expect <= until {
                    let e = next(&mut w).await;
                    assert_eq!(e.object.revision, expect, "round {round}: gap or duplicate");
                    expect += 1;
                }
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

#[test]
fn list_then_watch_from_its_revision_misses_nothing_even_on_a_new_store() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    let page = store.list("pods", None, None, None).unwrap();
    assert!(page.items.is_empty());
    assert_ne!(page.revision, 0, "0 would mean 'from now' to watch");
    // A write lands between the list and the watch.
    let rev = store.create_blocking(pod("a", "x"), b"".to_vec()).unwrap();
    let mut w = store.watch("pods", None, Some(page.revision)).unwrap();
    smol::block_on(async { assert_eq!(next(&mut w).await.object.revision, rev) });
}

#[test]
fn progress_advances_past_other_writes_but_not_past_pending_events() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    let mut w = store.watch("pods", Some("quiet"), None).unwrap();
    let start = w.progress();
    for i in 0..5 {
        store
            .create_blocking(pod("busy", &i.to_string()), b"".to_vec())
            .unwrap();
    }
    // Nothing for this watcher happened: it may resume from the current revision.
    assert_eq!(w.progress(), store.revision());
    assert!(w.progress() > start);

    let mine = store
        .create_blocking(pod("quiet", "a"), b"".to_vec())
        .unwrap();
    store
        .create_blocking(pod("busy", "x"), b"".to_vec())
        .unwrap();
    // An event is queued but not yet read: progress must stay before it.
    assert!(
        w.progress() < mine,
        "progress {} passed a pending event {mine}",
        w.progress()
    );
    smol::block_on(async {
        assert_eq!(next(&mut w).await.object.revision, mine);
    });
    assert_eq!(w.progress(), store.revision());

    // Resuming from progress misses nothing.
    let resume = w.progress();
    drop(w);
    let later = store
        .create_blocking(pod("quiet", "b"), b"".to_vec())
        .unwrap();
    let mut w = store.watch("pods", Some("quiet"), Some(resume)).unwrap();
    smol::block_on(async { assert_eq!(next(&mut w).await.object.revision, later) });
}

/// The value and previous value of an event, as text.
fn values(e: &Event) -> (EventKind, String, Option<String>) {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    (e.kind, text(&e.object.value), e.prev.as_deref().map(text))
}

#[test]
fn modifications_carry_the_state_they_replaced_live_and_in_replay() {
    let dir = TempDir::new().unwrap();
    let store = open_with(&dir, StoreOptions::default());
    let start = store.revision();
    let mut live = store.watch("pods", None, None).unwrap();
    let r1 = store.create_blocking(pod("a", "x"), b"1".to_vec()).unwrap();
    let r2 = store
        .update_blocking(pod("a", "x"), b"2".to_vec(), Some(r1))
        .unwrap();
    store
        .update_blocking(pod("a", "x"), b"3".to_vec(), Some(r2))
        .unwrap();
    store.delete_blocking(&pod("a", "x"), None).unwrap();
    let expected = [
        (EventKind::Added, "1".to_owned(), None),
        (EventKind::Modified, "2".to_owned(), Some("1".to_owned())),
        (EventKind::Modified, "3".to_owned(), Some("2".to_owned())),
        (EventKind::Deleted, "3".to_owned(), None),
    ];
    smol::block_on(async {
        for want in &expected {
            assert_eq!(&values(&next(&mut live).await), want);
        }
        // The same history replayed from the change log.
        let mut replay = store.watch("pods", None, Some(start)).unwrap();
        for want in &expected {
            assert_eq!(&values(&next(&mut replay).await), want);
        }
        // A replay starting after the replaced state still finds it in the log.
        let mut late = store.watch("pods", None, Some(r2)).unwrap();
        assert_eq!(&values(&next(&mut late).await), &expected[2]);
    });
}

#[test]
fn a_replayed_modification_whose_previous_state_was_compacted_has_none() {
    let dir = TempDir::new().unwrap();
    let options = StoreOptions {
        history_revisions: 3,
        ..StoreOptions::default()
    };
    let store = open_with(&dir, options);
    let r1 = store.create_blocking(pod("a", "x"), b"1".to_vec()).unwrap();
    for i in 0..5 {
        store
            .create_blocking(pod("a", &format!("filler{i}")), b"".to_vec())
            .unwrap();
    }
    assert!(store.stats().compacted >= r1, "{:?}", store.stats());
    let from = store.revision();
    let mut live = store.watch("pods", None, None).unwrap();
    let mut replay = store.watch("pods", None, Some(from)).unwrap();
    store
        .update_blocking(pod("a", "x"), b"2".to_vec(), Some(r1))
        .unwrap();
    smol::block_on(async {
        // Live: the committer had the old value in hand.
        let want = (EventKind::Modified, "2".to_owned(), Some("1".to_owned()));
        assert_eq!(values(&next(&mut live).await), want);
        assert_eq!(values(&next(&mut replay).await), want);
        // Replayed from the log, the record of revision r1 is gone.
        drop(replay);
        let mut replay = store.watch("pods", None, Some(from)).unwrap();
        assert_eq!(
            values(&next(&mut replay).await),
            (EventKind::Modified, "2".to_owned(), None)
        );
    });
}

/// A store written by format 1 (modifications logged without the previous revision)
/// opens, replays, and is marked as the current format so older builds refuse it.
#[test]
fn a_format_1_store_opens_and_is_upgraded() {
    use redb::{ReadableDatabase, TableDefinition};
    const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    // Key encoding: resource NUL namespace NUL name.
    let key = b"pods\0a\0x".to_vec();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = |kind: u8, value: &[u8]| {
        let mut r = vec![kind];
        r.extend_from_slice(&now.to_le_bytes());
        r.extend_from_slice(&(key.len() as u32).to_le_bytes());
        r.extend_from_slice(&key);
        r.extend_from_slice(value);
        r
    };
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut objects = txn.open_table(OBJECTS).unwrap();
            let mut object = 3u64.to_le_bytes().to_vec();
            object.extend_from_slice(b"2");
            objects.insert(key.as_slice(), object.as_slice()).unwrap();
            let mut log = txn.open_table(LOG).unwrap();
            log.insert(2, record(1, b"1").as_slice()).unwrap();
            log.insert(3, record(2, b"2").as_slice()).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format", 1).unwrap();
            meta.insert("revision", 3).unwrap();
            meta.insert("compacted", 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open_with(&dir, StoreOptions::default());
    assert_eq!(store.revision(), 3);
    smol::block_on(async {
        let mut w = store.watch("pods", None, Some(1)).unwrap();
        assert_eq!(
            values(&next(&mut w).await),
            (EventKind::Added, "1".to_owned(), None)
        );
        // Format 1 did not say which state a modification replaced.
        assert_eq!(
            values(&next(&mut w).await),
            (EventKind::Modified, "2".to_owned(), None)
        );
        let r4 = store
            .update(pod("a", "x"), b"4".to_vec(), Some(3))
            .await
            .unwrap();
        let mut w = store.watch("pods", None, Some(3)).unwrap();
        let e = next(&mut w).await;
        assert_eq!(e.object.revision, r4);
        assert_eq!(
            values(&e),
            (EventKind::Modified, "4".to_owned(), Some("2".to_owned()))
        );
    });
    drop(store);
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    assert_eq!(meta.get("format").unwrap().unwrap().value(), 2);
}
