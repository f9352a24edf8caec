//! The real `kubectl` and a real `flotilla-controller serve` on loopback, for the
//! end-to-end tests that drive the API (tests/api.rs, tests/controllers.rs).

use crate::process::Process;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `kubectl --kubeconfig KUBECONFIG ARGS…`, feeding `stdin` when given, and
/// returns its output whatever its exit status.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("kubectl runs (is /usr/bin/kubectl installed?)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect("kubectl finishes")
}

/// Starts `flotilla-controller serve` with its data in `DIR/data`, listening on
/// 127.0.0.1:`port`, with extra environment variables `env`. Its agent hub listens on
/// a free loopback port unless `--hub-listen` is among the arguments, so concurrent
/// test controllers never compete for 6444.
pub fn spawn_controller(dir: &Path, port: u16, env: &[(String, String)]) -> Process {
    spawn_controller_with(dir, port, env, &[])
}

/// [`spawn_controller`] with extra `serve` arguments (`--controllers=*,-scheduler`).
pub fn spawn_controller_with(
    dir: &Path,
    port: u16,
    env: &[(String, String)],
    args: &[String],
) -> Process {
    let mut cmd = Command::new(crate::bin("flotilla-controller"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args);
    if !args.iter().any(|a| a.starts_with("--hub-listen")) {
        cmd.args(["--hub-listen", "127.0.0.1:0"]);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    Process::spawn(cmd).named("flotilla-controller")
}
