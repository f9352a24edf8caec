//! The controller's async executor: a smol `Executor` run by one thread per core, so
//! request handling (JSON work) uses every core of a small board.

use std::future::Future;
use std::sync::{Arc, LazyLock};

static EXECUTOR: LazyLock<Arc<smol::Executor<'static>>> = LazyLock::new(|| {
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
