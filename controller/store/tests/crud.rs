//! CRUD, optimistic concurrency, revisions across reopen, lists and large values.

use flotilla_store::{Key, Store, StoreError, StoreOptions};
use tempfile::TempDir;

fn open(dir: &TempDir) -> Store {
    Store::open(&dir.path().join("store.redb"), StoreOptions::default()).unwrap()
}

fn pod(ns: &str, name: &str) -> Key {
    Key::new("pods", ns, name)
}

#[test]
fn create_get_update_delete() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    assert_eq!(store.revision(), 1, "a new store starts at revision 1");
    let k = pod("default", "web");
    assert_eq!(store.get(&k).unwrap(), None);

    let r1 = store
        .create_blocking(k.clone(), b"{\"v\":1}".to_vec())
        .unwrap();
    assert_eq!(r1, 2);
    assert_eq!(store.revision(), 2);
    let got = store.get(&k).unwrap().unwrap();
    assert_eq!((got.revision, &got.value[..]), (2, &b"{\"v\":1}"[..]));

    assert!(matches!(
        store.create_blocking(k.clone(), b"{}".to_vec()),
        Err(StoreError::AlreadyExists)
    ));
    // A failed write takes no revision.
    assert_eq!(store.revision(), 2);

    let r2 = store
        .update_blocking(k.clone(), b"{\"v\":2}".to_vec(), Some(r1))
        .unwrap();
    assert!(r2 > r1);
    assert_eq!(&store.get(&k).unwrap().unwrap().value[..], b"{\"v\":2}");
    let r3 = store
        .update_blocking(k.clone(), b"{\"v\":3}".to_vec(), None)
        .unwrap();
    assert!(r3 > r2);

    let gone = store.delete_blocking(&k, Some(r3)).unwrap();
    assert!(gone.revision > r3);
    assert_eq!(
        &gone.value[..],
        b"{\"v\":3}",
        "delete returns the last state"
    );
    assert_eq!(store.get(&k).unwrap(), None);
    assert!(matches!(
        store.delete_blocking(&k, None),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.update_blocking(k.clone(), b"{}".to_vec(), None),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn stale_revision_conflicts_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let k = pod("default", "web");
    let r1 = store.create_blocking(k.clone(), b"a".to_vec()).unwrap();
    let r2 = store
        .update_blocking(k.clone(), b"b".to_vec(), Some(r1))
        .unwrap();

    match store.update_blocking(k.clone(), b"c".to_vec(), Some(r1)) {
        Err(StoreError::Conflict { current }) => assert_eq!(current, r2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store.delete_blocking(&k, Some(r1)) {
        Err(StoreError::Conflict { current }) => assert_eq!(current, r2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let now = store.get(&k).unwrap().unwrap();
    assert_eq!((now.revision, &now.value[..]), (r2, &b"b"[..]));
    assert_eq!(store.revision(), r2);
    // Failed writes cost no commit (no fsync).
    let commits = store.stats().commits;
    assert!(
        store
            .update_blocking(k.clone(), b"d".to_vec(), Some(r1))
            .is_err()
    );
    assert!(store.create_blocking(k.clone(), b"d".to_vec()).is_err());
    assert_eq!(store.stats().commits, commits);
}

#[test]
fn revisions_strictly_increase_across_reopen() {
    let dir = TempDir::new().unwrap();
    let last = {
        let store = open(&dir);
        let mut last = 0;
        for i in 0..5 {
            let r = store
                .create_blocking(pod("a", &format!("p{i}")), b"x".to_vec())
                .unwrap();
            assert!(r > last);
            last = r;
        }
        // Deleting the newest object must not let its revision be handed out again.
        last = store
            .delete_blocking(&pod("a", "p4"), None)
            .unwrap()
            .revision;
        last
    };
    let store = open(&dir);
    assert_eq!(store.revision(), last);
    let r = store
        .create_blocking(pod("a", "p4"), b"y".to_vec())
        .unwrap();
    assert!(r > last, "revision {r} after reopen must exceed {last}");
    assert_eq!(store.get(&pod("a", "p0")).unwrap().unwrap().revision, 2);
}

#[test]
fn second_open_of_the_same_file_fails_clearly() {
    let dir = TempDir::new().unwrap();
    let _store = open(&dir);
    let err = Store::open(&dir.path().join("store.redb"), StoreOptions::default()).unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("already open"),
        "{err}"
    );
}

#[test]
fn list_by_namespace_with_pages() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    for ns in ["default", "kube-system", "zeta"] {
        for i in 0..7 {
            store
                .create_blocking(
                    pod(ns, &format!("p{i:02}")),
                    format!("{ns}/{i}").into_bytes(),
                )
                .unwrap();
        }
    }
    store
        .create_blocking(Key::cluster("nodes", "n1"), b"node".to_vec())
        .unwrap();
    store
        .create_blocking(Key::new("podsx", "default", "other"), b"x".to_vec())
        .unwrap();

    let all = store.list("pods", None, None, None).unwrap();
    assert_eq!(all.items.len(), 21);
    assert!(!all.more);
    assert_eq!(all.revision, store.revision());
    let keys: Vec<_> = all.items.iter().map(|o| o.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let ks = store.list("pods", Some("kube-system"), None, None).unwrap();
    assert_eq!(ks.items.len(), 7);
    assert!(ks.items.iter().all(|o| o.key.namespace == "kube-system"));
    assert_eq!(&ks.items[3].value[..], b"kube-system/3");

    // Paging through all namespaces, 5 at a time, yields every pod once, in order.
    let mut seen = Vec::new();
    let mut after: Option<Key> = None;
    loop {
        let page = store.list("pods", None, after.as_ref(), Some(5)).unwrap();
        assert!(page.items.len() <= 5);
        seen.extend(page.items.iter().map(|o| o.key.clone()));
        after = page.items.last().map(|o| o.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, keys);

    let nodes = store.list("nodes", Some(""), None, None).unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert!(
        store
            .list("services", None, None, None)
            .unwrap()
            .items
            .is_empty()
    );

    let err = store
        .list("pods", Some("default"), Some(&pod("zeta", "p01")), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey(_)), "{err}");
}

#[test]
fn list_page_is_a_snapshot() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    for i in 0..10 {
        store
            .create_blocking(pod("d", &format!("p{i}")), b"x".to_vec())
            .unwrap();
    }
    let page = store.list("pods", None, None, Some(4)).unwrap();
    assert_eq!(page.revision, 11);
    assert!(page.items.iter().all(|o| o.revision <= page.revision));
    store
        .create_blocking(pod("d", "p00"), b"x".to_vec())
        .unwrap();
    let page = store.list("pods", None, None, None).unwrap();
    assert_eq!((page.revision, page.items.len()), (12, 11));
}

#[test]
fn large_values_round_trip() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    // 1.5 MB: the largest object Kubernetes accepts (etcd's default request limit).
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let k = Key::new("configmaps", "default", "big");
    let r = store.create_blocking(k.clone(), big.clone()).unwrap();
    let got = store.get(&k).unwrap().unwrap();
    assert_eq!(got.revision, r);
    assert!(got.value[..] == big[..]);
    let bigger = [big.clone(), big].concat();
    store
        .update_blocking(k.clone(), bigger.clone(), Some(r))
        .unwrap();
    drop(store);
    let store = open(&dir);
    assert!(store.get(&k).unwrap().unwrap().value[..] == bigger[..]);
}

#[test]
fn invalid_keys_are_refused_before_writing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let err = store
        .create_blocking(Key::new("pods", "default", ""), b"x".to_vec())
        .unwrap_err();
    assert!(err.to_string().contains("empty object name"), "{err}");
    let err = store
        .create_blocking(Key::new("pods", "a\0b", "x"), b"x".to_vec())
        .unwrap_err();
    assert!(err.to_string().contains("NUL"), "{err}");
    assert_eq!(store.revision(), 1);
    assert!(store.list("", None, None, None).is_err());
}

#[test]
fn list_each_streams_pages_without_copying() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    for i in 0..12 {
        store
            .create_blocking(pod("d", &format!("p{i:02}")), format!("v{i}").into_bytes())
            .unwrap();
    }
    let mut seen = Vec::new();
    let summary = store
        .list_each("pods", Some("d"), Some(&pod("d", "p03")), Some(5), |o| {
            seen.push(format!(
                "{}={}",
                o.key.name,
                String::from_utf8_lossy(o.value)
            ));
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, ["p04=v4", "p05=v5", "p06=v6", "p07=v7", "p08=v8"]);
    assert_eq!(
        (summary.count, summary.more, summary.revision),
        (5, true, 13)
    );
    assert_eq!(summary.last, Some(pod("d", "p08")));

    // An error from the callback stops the scan and comes back.
    let mut calls = 0;
    let err = store
        .list_each("pods", None, None, None, |_| {
            calls += 1;
            if calls == 3 {
                Err(StoreError::InvalidKey("stop".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey(ref m) if m == "stop"));
    assert_eq!(calls, 3);
}

#[test]
fn list_until_stops_where_the_callback_says_and_continues_from_there() {
    use std::ops::ControlFlow;
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    for i in 0..10 {
        store
            .create_blocking(pod("d", &format!("p{i:02}")), format!("v{i}").into_bytes())
            .unwrap();
    }
    // Take the even-numbered pods, at most 2 per page, as a filtered list does.
    let page = |after: Option<&Key>| {
        let mut taken = Vec::new();
        let summary = store
            .list_until("pods", Some("d"), after, None, |o| {
                let n: u32 = o.key.name[1..].parse().unwrap();
                if n % 2 == 1 {
                    return Ok(ControlFlow::Continue(()));
                }
                if taken.len() == 2 {
                    return Ok(ControlFlow::Break(()));
                }
                taken.push(o.key.name.clone());
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
        (taken, summary)
    };
    let (first, s1) = page(None);
    assert_eq!(first, ["p00", "p02"]);
    // p03 was passed over, p04 stopped the scan without being counted.
    assert!(s1.more);
    assert_eq!((s1.count, s1.last.clone()), (4, Some(pod("d", "p03"))));
    let (second, s2) = page(s1.last.as_ref());
    assert_eq!(second, ["p04", "p06"]);
    let (third, s3) = page(s2.last.as_ref());
    assert_eq!(third, ["p08"]);
    assert!(!s3.more, "the last page says there is no more");
    assert_eq!(s3.last, Some(pod("d", "p09")));
}

#[test]
fn a_file_of_an_unknown_format_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    drop(open(&dir));
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("format", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("format 99"), "{err}");
}

#[test]
fn open_errors_name_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("missing-dir").join("store.redb");
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");

    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, vec![0x5a; 10_000]).unwrap();
    let err = Store::open(&junk, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("junk.redb"), "{err}");
}

#[test]
fn reopening_with_file_compaction_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    let revision = {
        let store = open(&dir);
        std::thread::scope(|s| {
            for t in 0..8 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..12 {
                        let k = pod("c", &format!("{t}-{i}"));
                        store.create_blocking(k.clone(), vec![b'x'; 5_000]).unwrap();
                        if i % 4 != 0 {
                            store.delete_blocking(&k, None).unwrap();
                        }
                    }
                });
            }
        });
        store.revision()
    };
    let options = StoreOptions {
        compact_file_on_open: true,
        ..StoreOptions::default()
    };
    let store = Store::open(&path, options).unwrap();
    assert_eq!(store.revision(), revision);
    let page = store.list("pods", Some("c"), None, None).unwrap();
    assert_eq!(page.items.len(), 24);
    assert!(page.items.iter().all(|o| o.value.len() == 5_000));
    let r = store
        .create_blocking(pod("c", "after"), b"y".to_vec())
        .unwrap();
    assert_eq!(r, revision + 1);
}
