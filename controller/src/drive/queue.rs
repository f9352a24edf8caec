//! A work queue of object keys (client-go's rate-limited queue): a key waits at most
//! once, can be re-added after a delay, and failing keys back off exponentially.

use super::cache::ObjKey;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    ready: VecDeque<ObjKey>,
    queued: HashSet<ObjKey>,
    delayed: BTreeMap<(Instant, u64), ObjKey>,
    delayed_at: HashMap<ObjKey, (Instant, u64)>,
    seq: u64,
    failures: HashMap<ObjKey, u32>,
}

/// Keys waiting to be reconciled.
pub struct Queue {
    state: Mutex<State>,
    wake_tx: smol::channel::Sender<()>,
    wake_rx: smol::channel::Receiver<()>,
}

impl Default for Queue {
    fn default() -> Queue {
        let (wake_tx, wake_rx) = smol::channel::bounded(1);
        Queue {
            state: Mutex::new(State::default()),
            wake_tx,
            wake_rx,
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now (no-op if it already waits).
    pub fn add(&self, key: ObjKey) {
        let mut s = self.lock();
        if let Some(at) = s.delayed_at.remove(&key) {
            s.delayed.remove(&at);
        }
        if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
        }
        drop(s);
        let _ = self.wake_tx.try_send(());
    }

    /// Queues `key` after `delay` (an earlier pending time wins).
    pub fn add_after(&self, key: ObjKey, delay: Duration) {
        let at = Instant::now() + delay;
        let mut s = self.lock();
        if s.queued.contains(&key) {
            return;
        }
        if let Some(prev) = s.delayed_at.get(&key) {
            if prev.0 <= at {
                return;
            }
            let prev = *prev;
            s.delayed.remove(&prev);
        }
        s.seq += 1;
        let slot = (at, s.seq);
        s.delayed.insert(slot, key.clone());
        s.delayed_at.insert(key, slot);
        drop(s);
        let _ = self.wake_tx.try_send(());
    }

    /// Re-queues a key whose reconcile failed, after its next back-off.
    pub fn retry(&self, key: ObjKey) {
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << (n - 1).min(16))
            .min(MAX_BACKOFF);
        self.add_after(key, delay);
    }

    /// Forgets a key's failures after a successful reconcile.
    pub fn forget(&self, key: &ObjKey) {
        self.lock().failures.remove(key);
    }

    /// The next key, if one is due now.
    pub fn try_next(&self) -> Option<ObjKey> {
        let mut s = self.lock();
        let now = Instant::now();
        while let Some((&slot, _)) = s.delayed.first_key_value() {
            if slot.0 > now {
                break;
            }
            let key = s.delayed.remove(&slot).expect("present");
            s.delayed_at.remove(&key);
            if s.queued.insert(key.clone()) {
                s.ready.push_back(key);
            }
        }
        let key = s.ready.pop_front()?;
        s.queued.remove(&key);
        Some(key)
    }

    /// Waits for the next due key.
    pub async fn next(&self) -> ObjKey {
        loop {
            if let Some(k) = self.try_next() {
                return k;
            }
            let next_at = self.lock().delayed.first_key_value().map(|(s, _)| s.0);
            let wake = async {
                let _ = self.wake_rx.recv().await;
            };
            match next_at {
                Some(at) => {
                    let timer = async {
                        smol::Timer::at(at).await;
                    };
                    futures_lite::future::or(wake, timer).await
                }
                None => wake.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> ObjKey {
        ("ns".into(), n.into())
    }

    #[test]
    fn keys_wait_once_and_in_order() {
        let q = Queue::default();
        q.add(k("a"));
        q.add(k("b"));
        q.add(k("a"));
        assert_eq!(q.try_next(), Some(k("a")));
        assert_eq!(q.try_next(), Some(k("b")));
        assert_eq!(q.try_next(), None);
    }

    #[test]
    fn delayed_keys_come_due() {
        let q = Queue::default();
        q.add_after(k("a"), Duration::from_millis(30));
        q.add_after(k("a"), Duration::from_secs(60));
        assert_eq!(q.try_next(), None);
        let got = smol::block_on(q.next());
        assert_eq!(got, k("a"));
        assert_eq!(q.try_next(), None, "the later duplicate was dropped");
    }

    #[test]
    fn an_immediate_add_overrides_a_delay() {
        let q = Queue::default();
        q.add_after(k("a"), Duration::from_secs(60));
        q.add(k("a"));
        assert_eq!(q.try_next(), Some(k("a")));
        assert_eq!(q.try_next(), None);
    }
}
