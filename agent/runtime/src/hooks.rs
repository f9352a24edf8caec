//! OCI lifecycle hooks (`config.json` `hooks`): validation, and running one list of hooks
//! with the container's state JSON on stdin, its own args and env, and its timeout.
//!
//! Who runs what, as the runtime spec asks: `prestart` and `createRuntime` run in the
//! caller once the namespaces exist, `createContainer` in the init before pivot_root,
//! `startContainer` in the init just before the program, `poststart` after start, and
//! `poststop` when the container is deleted. The first four fail the operation; the
//! last two only warn.

use crate::error::{Error, Result};
use oci_spec::runtime::{Hook, Hooks, Spec};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hook lists of a spec, by lifecycle point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// `hooks.prestart` (deprecated, run with createRuntime).
    Prestart,
    /// `hooks.createRuntime`.
    CreateRuntime,
    /// `hooks.createContainer`.
    CreateContainer,
    /// `hooks.startContainer`.
    StartContainer,
    /// `hooks.poststart`.
    Poststart,
    /// `hooks.poststop`.
    Poststop,
}

impl Point {
    /// Every point, in spec order.
    pub const ALL: [Point; 6] = [
        Point::Prestart,
        Point::CreateRuntime,
        Point::CreateContainer,
        Point::StartContainer,
        Point::Poststart,
        Point::Poststop,
    ];

    /// The JSON field name.
    pub fn field(self) -> &'static str {
        match self {
            Point::Prestart => "prestart",
            Point::CreateRuntime => "createRuntime",
            Point::CreateContainer => "createContainer",
            Point::StartContainer => "startContainer",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }

    fn list(self, h: &Hooks) -> &Option<Vec<Hook>> {
        match self {
            Point::Prestart => h.prestart(),
            Point::CreateRuntime => h.create_runtime(),
            Point::CreateContainer => h.create_container(),
            Point::StartContainer => h.start_container(),
            Point::Poststart => h.poststart(),
            Point::Poststop => h.poststop(),
        }
    }
}

/// The hooks of `spec` at `point` (empty when none).
pub fn of(spec: &Spec, point: Point) -> &[Hook] {
    spec.hooks()
        .as_ref()
        .and_then(|h| point.list(h).as_deref())
        .unwrap_or(&[])
}

/// Checks every hook: absolute path, positive timeout.
pub fn validate(spec: &Spec) -> Result<()> {
    for point in Point::ALL {
        for (i, h) in of(spec, point).iter().enumerate() {
            let field = format!("hooks.{}[{i}]", point.field());
            if !h.path().is_absolute() {
                return Err(Error::config(
                    format!("{field}.path"),
                    format!("{} is not an absolute path", h.path().display()),
                ));
            }
            if h.timeout().is_some_and(|t| t <= 0) {
                return Err(Error::config(
                    format!("{field}.timeout"),
                    "must be a positive number of seconds",
                ));
            }
        }
    }
    Ok(())
}

/// The state document a hook reads on stdin.
pub fn state_json(
    spec: &Spec,
    id: &str,
    status: &str,
    pid: i32,
    bundle: &std::path::Path,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    }))
    .expect("state serializes")
}

/// Runs the hooks of `spec` at `point` in order; the first failure stops and is returned.
pub fn run(spec: &Spec, point: Point, state: &[u8]) -> Result<()> {
    for (i, h) in of(spec, point).iter().enumerate() {
        run_one(h, state).map_err(|reason| {
            Error::Init(format!(
                "hooks.{}[{i}] ({}): {reason}",
                point.field(),
                h.path().display()
            ))
        })?;
    }
    Ok(())
}

/// Runs the hooks at `point`, printing failures as warnings (poststart, poststop).
pub fn run_warn(spec: &Spec, point: Point, state: &[u8]) {
    if let Err(e) = run(spec, point, state) {
        eprintln!("flotilla-runtime: warning: {e}");
    }
}

fn run_one(h: &Hook, state: &[u8]) -> std::result::Result<(), String> {
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args().as_deref().filter(|a| !a.is_empty()) {
        cmd.arg0(&args[0]).args(&args[1..]);
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its stdin: a broken pipe is not its failure.
        let _ = stdin.write_all(state);
    }
    let timeout = h.timeout().map(|t| Duration::from_secs(t as u64));
    match wait_timeout(&mut child, timeout).map_err(|e| format!("waiting for it: {e}"))? {
        None => Err(format!(
            "timed out after {}s and was killed",
            timeout.unwrap_or_default().as_secs()
        )),
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(format!("failed ({st})")),
    }
}

/// Waits for `child` at most `timeout` (a pidfd polled once, no sleep loop); on timeout
/// kills and reaps it and returns None.
fn wait_timeout(
    child: &mut std::process::Child,
    timeout: Option<Duration>,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let Some(timeout) = timeout else {
        return child.wait().map(Some);
    };
    // SAFETY: pidfd_open on our own child's pid.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that we now own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let deadline = Instant::now() + timeout;
    let exited = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            break r > 0;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(None);
    }
    child.wait().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hooks: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"hooks":{hooks}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn validation_names_the_hook() {
        let e = validate(&spec(
            r#"{"poststop":[{"path":"/bin/true"},{"path":"rel"}]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hooks.poststop[1].path"), "{e}");
        let e = validate(&spec(
            r#"{"createRuntime":[{"path":"/bin/true","timeout":0}]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hooks.createRuntime[0].timeout"), "{e}");
    }

    #[test]
    fn hooks_get_state_args_env_and_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = spec(&format!(
            r#"{{"poststart":[{{"path":"/bin/sh","args":["sh","-c","cat > {}; echo \"$0 $1 $X\" >> {}","a0","a1"],"env":["X=y"]}}]}}"#,
            out.display(),
            out.display()
        ));
        let state = state_json(&s, "c1", "running", 42, std::path::Path::new("/b"));
        run(&s, Point::Poststart, &state).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert!(
            got.contains(r#""id":"c1""#) && got.contains(r#""pid":42"#),
            "{got}"
        );
        assert!(got.ends_with("a0 a1 y\n"), "{got}");
        let s =
            spec(r#"{"createRuntime":[{"path":"/bin/sleep","args":["sleep","5"],"timeout":1}]}"#);
        let t = Instant::now();
        let e = run(&s, Point::CreateRuntime, b"{}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hooks.createRuntime[0]") && e.contains("timed out"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(4));
        let s = spec(r#"{"startContainer":[{"path":"/bin/false"}]}"#);
        let e = run(&s, Point::StartContainer, b"{}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hooks.startContainer[0] (/bin/false): failed"),
            "{e}"
        );
    }
}
