//! The end-to-end test harness (see ARCHITECTURE.md): everything an e2e test in
//! `tests/tests/*.rs` needs to drive the real Flotilla binaries safely.
//!
//! - [`require_root!`]: skip without root, fail instead under CI=true / FLOTILLA_E2E=1;
//! - [`bin`]: the path of a built workspace binary; [`free_port`];
//! - [`fixtures`]: a deterministic, cached busybox rootfs and OCI images;
//! - [`process`]: child processes with captured logs, readiness waits, stop by PID;
//! - [`sandbox`]: network namespaces per simulated node, a LAN bridge between them,
//!   private mount namespaces, and a snapshot of the root namespace to compare;
//! - [`cgroup`]: a per-test cgroup parent, removed on drop;
//! - [`cluster`]: a real controller and real agents, each node in its own namespace on a LAN;
//! - [`kube`]: the real kubectl and a controller on loopback;
//! - [`registry`]: a test OCI registry (Debian's docker-registry) filled by skopeo;
//! - [`dns`]: a stub DNS server answering from a fixed table;
//! - [`command`]: helper tools run to completion with timeouts and clear errors.
//!
//! Everything created is torn down on drop, also when the test panics, and nothing in
//! the root network namespace is ever changed. Declare sandboxes, cgroups and the
//! registry before the processes that use them: locals drop in reverse order, so the
//! processes stop first and the cgroup then removes whatever they left in it.
//!
//! Loopback addresses are per namespace: a server on the test's 127.0.0.1 is not
//! reachable from inside a [`sandbox::Node`]. Put it in a node on the LAN instead:
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use flotilla_tests::registry::{Options, Registry};
//! use flotilla_tests::sandbox::{Lan, Node};
//!
//! #[test]
//! fn node_reaches_a_registry_on_the_lan() {
//!     flotilla_tests::require_root!();
//!     let lan = Lan::new();
//!     let depot = Node::new("depot");
//!     let node = Node::new("node1");
//!     depot.attach(&lan, "10.99.0.10/24").unwrap();
//!     node.attach(&lan, "10.99.0.2/24").unwrap();
//!     let registry =
//!         Registry::start_with(Options::default().in_node(&depot, "10.99.0.10".parse().unwrap()));
//!     let image = registry.push_busybox("busybox:1"); // "10.99.0.10:<port>/busybox:1"
//!     let mut agent = Command::new(flotilla_tests::bin("flotilla-agent"));
//!     agent.args(["image", "pull", &image]);
//!     let mut agent = node.spawn(agent); // its logs are printed if the test panics
//!     agent.wait_exit(Duration::from_secs(60)).unwrap();
//! }
//! ```

pub mod cgroup;
pub mod cluster;
pub mod command;
pub mod dns;
pub mod fixtures;
pub mod kube;
mod naming;
pub mod process;
pub mod registry;
pub mod sandbox;

use std::path::PathBuf;

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when end-to-end tests must run rather than skip: `CI=true` or `FLOTILLA_E2E=1`.
pub fn e2e_required() -> bool {
    let set = |name: &str, yes: &[&str]| {
        std::env::var(name)
            .map(|v| yes.contains(&v.trim().to_ascii_lowercase().as_str()))
            .unwrap_or(false)
    };
    set("CI", &["true", "1", "yes"]) || set("FLOTILLA_E2E", &["1", "true", "yes"])
}

/// First line of every end-to-end test.
///
/// Without root the test reports itself skipped and returns; when `CI=true` or
/// `FLOTILLA_E2E=1` it panics instead, so a CI run can never pass by skipping.
/// `require_root!()` returns `()`; in a test returning a value, pass it:
///
/// ```no_run
/// #[test]
/// fn needs_root() -> anyhow::Result<()> {
///     flotilla_tests::require_root!(Ok(()));
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!(())
    };
    ($skipped:expr) => {
        if !$crate::is_root() {
            if $crate::e2e_required() {
                panic!(
                    "{} (line {}): this end-to-end test needs root, and CI=true or \
                     FLOTILLA_E2E=1 forbids skipping it",
                    module_path!(),
                    line!()
                );
            }
            eprintln!(
                "SKIPPED {} (line {}): end-to-end test needs root \
                 (set CI=true or FLOTILLA_E2E=1 to make this a failure)",
                module_path!(),
                line!()
            );
            return $skipped;
        }
    };
}

/// The path of a built workspace binary, e.g. `bin("flotilla-agent")`.
///
/// Looks in `FLOTILLA_BIN_DIR` if set, else in the profile directory of the target dir
/// this test executable was built into (`<target>/debug/deps/x` → `<target>/debug/`).
/// Panics with a clear message when the binary is not there: build it first with
/// `cargo build --workspace` and the same `CARGO_TARGET_DIR`.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("FLOTILLA_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir(),
    };
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary {name:?} is not built at {}: run `cargo build --workspace` with the same \
             CARGO_TARGET_DIR (or set FLOTILLA_BIN_DIR) before the end-to-end tests",
            path.display()
        );
    }
    path
}

/// The cargo profile directory (`<target>/<profile>`) this test executable lives in.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the path of the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has no parent directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// The directory where built fixtures are cached between tests and test executables:
/// `FLOTILLA_FIXTURE_CACHE` if set, else `<target>/flotilla-fixtures`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_FIXTURE_CACHE") {
        return PathBuf::from(dir);
    }
    let profile = profile_dir();
    match profile.parent() {
        Some(target) => target.join("flotilla-fixtures"),
        None => std::env::temp_dir().join("flotilla-fixtures"),
    }
}

/// A TCP port that is free on 127.0.0.1 right now (the OS picks it; another process
/// may still take it before you bind, so retry on "address in use").
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
}
