//! The controller's async executor: a smol `Executor` run by one thread per core, so
//! request handling (JSON work) uses every core of a small board; and the allocator
//! settings that keep its memory small (glibc: few malloc arenas, free pages handed
//! back after big responses).

use std::future::Future;
use std::sync::{Arc, LazyLock};

static EXECUTOR: LazyLock<Arc<smol::Executor<'static>>> = LazyLock::new(|| {
    limit_malloc_arenas();
    let ex = Arc::new(smol::Executor::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1);
    for i in 0..threads {
        std::thread::Builder::new()
            .name(format!("flotilla-exec-{i}"))
            .spawn({
                let ex = ex.clone();
                move || smol::block_on(ex.run(std::future::pending::<()>()))
            })
            .expect("spawning an executor thread");
    }
    ex
});

/// Runs a task in the background.
pub fn spawn<F: Future<Output = ()> + Send + 'static>(f: F) {
    EXECUTOR.spawn(f).detach();
}

/// The shared executor (for hyper's HTTP/2 tasks).
pub fn executor() -> Arc<smol::Executor<'static>> {
    EXECUTOR.clone()
}

/// Most glibc malloc arenas. glibc gives each thread that meets contention its own arena
/// (up to 8 per core) and never merges them, so the executor, committer and blocking
/// threads would each keep their own high-water mark of freed memory; two arenas hold
/// the controller's RSS to what it uses, at no measurable cost in throughput here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: i32 = 2;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;

    /// `M_ARENA_MAX` from glibc's malloc.h.
    pub const M_ARENA_MAX: c_int = -8;

    unsafe extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
        pub fn malloc_trim(pad: usize) -> c_int;
    }
}

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`], unless `MALLOC_ARENA_MAX` is set in
/// the environment (glibc reads it itself). musl's malloc has no arenas: nothing to do.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any
        // time from any thread.
        unsafe {
            glibc::mallopt(glibc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Hands memory that malloc holds free back to the system (glibc keeps the pages of
/// freed large buffers otherwise). Worth it after a request that allocated megabytes;
/// takes a few milliseconds, so call it from a blocking thread.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; safe from any thread.
    unsafe {
        glibc::malloc_trim(0);
    }
}
