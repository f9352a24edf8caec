//! Optional phase timing for profiling container start-up: with
//! `FLOTILLA_RUNTIME_TRACE=1`, each phase prints its offset from process start to stderr.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Option<&'static Instant> {
    static START: OnceLock<Option<Instant>> = OnceLock::new();
    START
        .get_or_init(|| std::env::var_os("FLOTILLA_RUNTIME_TRACE").map(|_| Instant::now()))
        .as_ref()
}

/// Marks the start of timing (call first thing in a command).
pub fn init() {
    let _ = start();
}

/// Prints `phase` with the time elapsed since [`init`], when tracing is on.
pub fn phase(phase: &str) {
    if let Some(t) = start() {
        eprintln!("[{:8.3} ms] {phase}", t.elapsed().as_secs_f64() * 1000.0);
    }
}
