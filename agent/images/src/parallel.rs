//! A small work pool for per-layer jobs: runs `job(i)` for every index on up to
//! `threads` threads, taking the next index as each finishes, and stops handing out
//! work at the first error, which it returns.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

/// Runs `job(0..count)` on up to `threads` scoped threads; the first error wins.
pub fn for_each(
    count: usize,
    threads: usize,
    job: impl Fn(usize) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None::<anyhow::Error>);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, count.max(1)) {
            s.spawn(|| {
                while first_error.lock().unwrap().is_none() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    if let Err(e) = job(i) {
                        first_error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_index_once() {
        let seen = Mutex::new(Vec::new());
        for_each(50, 4, |i| {
            seen.lock().unwrap().push(i);
            Ok(())
        })
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn stops_at_the_first_error() {
        let ran = AtomicUsize::new(0);
        let err = for_each(1000, 1, |i| {
            ran.fetch_add(1, Ordering::Relaxed);
            if i == 3 {
                anyhow::bail!("layer {i} is broken")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "layer 3 is broken");
        assert_eq!(ran.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn nothing_to_do_is_fine() {
        for_each(0, 8, |_| unreachable!()).unwrap();
    }
}
