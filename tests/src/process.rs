//! Child processes started by tests: stdout and stderr captured to log files,
//! readiness waits with timeouts (a log line, a TCP port, any condition), the logs
//! printed into the test output when the test panics, and stop by PID (SIGTERM, then
//! SIGKILL after a grace period, always reaped) — also on drop.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::command::describe;

/// How long [`Process::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// At most this much of each log is printed on failure (its tail).
const PRINT_LIMIT: usize = 64 * 1024;

/// A started child process; stopped by PID and reaped on drop.
pub struct Process {
    name: String,
    child: Child,
    logs: tempfile::TempDir,
    netns: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` (stdin closed, stdout/stderr to log files). Panics when it cannot
    /// be started, naming the command.
    pub fn spawn(cmd: Command) -> Process {
        Self::try_spawn(cmd, None).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `cmd` as [`Process::spawn`] does; `netns` is the network namespace it
    /// runs in (for [`Process::wait_for_tcp`]), `None` for the test's own.
    pub fn try_spawn(mut cmd: Command, netns: Option<&Path>) -> Result<Process> {
        let line = describe(&cmd);
        let name = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".to_string());
        let logs = tempfile::Builder::new()
            .prefix(&format!("flotilla-test-logs-{name}-"))
            .tempdir()
            .context("cannot create a log directory")?;
        let stdout = fs::File::create(logs.path().join("stdout"))?;
        let stderr = fs::File::create(logs.path().join("stderr"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        Ok(Process {
            name,
            child,
            logs,
            netns: netns.map(Path::to_path_buf),
            status: None,
        })
    }

    /// Renames the process in messages and printed logs.
    pub fn named(mut self, name: &str) -> Process {
        self.name = name.to_string();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.read_log("stdout")
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.read_log("stderr")
    }

    /// stdout followed by stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// The directory holding the `stdout` and `stderr` log files.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    fn read_log(&self, which: &str) -> String {
        let bytes = fs::read(self.logs.path().join(which)).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The exit status if the process has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits until `ready()` returns true, checking every 50 ms; fails after `timeout`
    /// or as soon as the process exits, naming `what` it was waiting for.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Process) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                // One last look: it may have become ready just before exiting.
                if ready(self) {
                    return Ok(());
                }
                bail!("{} exited ({status}) while waiting for {what}", self.name);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?}: waited for {what}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until stdout or stderr contains `pattern`.
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("log line containing {pattern:?}"), timeout, |p| {
            p.stdout().contains(pattern) || p.stderr().contains(pattern)
        })
    }

    /// Waits until a TCP connection to `addr` succeeds, made from the process's
    /// network namespace (its node's, when started with [`crate::sandbox::Node::spawn`]).
    pub fn wait_for_tcp(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let netns = self.netns.clone();
        self.wait_until(&format!("TCP {addr}"), timeout, |_| {
            let connect = move || TcpStream::connect_timeout(&addr, Duration::from_millis(500));
            match &netns {
                Some(ns) => crate::sandbox::in_netns_path(ns, connect)
                    .map(|r| r.is_ok())
                    .unwrap_or(false),
                None => connect().is_ok(),
            }
        })
    }

    /// Waits for the process to exit by itself within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process (by PID; not once it has been reaped).
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.try_wait().is_some() {
            bail!("{} has already exited", self.name);
        }
        kill(Pid::from_raw(self.child.id() as i32), signal)
            .with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// Stops the process: SIGTERM, then SIGKILL if it is still running after
    /// [`STOP_GRACE`]; returns its exit status. Calling it again returns the same status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with_grace(STOP_GRACE)
    }

    /// [`Process::stop`] with a chosen grace period.
    pub fn stop_with_grace(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let _ = self.signal(Signal::SIGTERM);
        if let Ok(status) = self.wait_exit(grace) {
            return status;
        }
        self.kill()
    }

    /// Kills the process with SIGKILL at once (a crash) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let _ = self.child.kill();
        if let Ok(status) = self.wait_exit(Duration::from_secs(2)) {
            return status;
        }
        // SIGKILL waits while the process is frozen (a paused test cgroup): thaw it.
        crate::cgroup::thaw_test_cgroups_of(self.pid());
        let status = self.child.wait().expect("cannot reap a killed child");
        self.status = Some(status);
        status
    }

    /// Prints the captured logs (tails) to stderr, which the test output shows.
    pub fn print_logs(&self) {
        eprintln!("----- {} (pid {}) stdout -----", self.name, self.pid());
        eprintln!("{}", tail(&self.stdout()));
        eprintln!("----- {} (pid {}) stderr -----", self.name, self.pid());
        eprintln!("{}", tail(&self.stderr()));
        eprintln!("----- end of {} -----", self.name);
    }
}

fn tail(text: &str) -> &str {
    if text.len() <= PRINT_LIMIT {
        return text;
    }
    let mut start = text.len() - PRINT_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FLOTILLA_PRINT_LOGS").is_some() {
            self.print_logs();
        }
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut p = Process::spawn(cmd);
        let status = p.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.stdout(), "out\n");
        assert_eq!(p.stderr(), "err\n");
    }

    #[test]
    fn wait_for_log_fails_early_when_the_process_exits() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo starting; exit 1"]);
        let mut p = Process::spawn(cmd);
        let started = Instant::now();
        let err = p
            .wait_for_log("ready", Duration::from_secs(30))
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("exited"), "{err}");
    }

    #[test]
    fn stop_uses_sigkill_when_sigterm_is_ignored() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo trapped; while :; do sleep 1; done",
        ]);
        let mut p = Process::spawn(cmd);
        p.wait_for_log("trapped", Duration::from_secs(10)).unwrap();
        let status = p.stop_with_grace(Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(!Path::new(&format!("/proc/{}", p.pid())).exists());
    }

    #[test]
    fn wait_for_tcp_sees_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut p = Process::spawn(cmd);
        p.wait_for_tcp(addr, Duration::from_secs(5)).unwrap();
        drop(listener);
        let status = p.stop();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
    }
}
