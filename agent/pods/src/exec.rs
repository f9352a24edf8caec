//! `kubectl exec` on the node: runs the exec helper (`<exe> shim exec`) with pipes for
//! the requested streams, a status pipe (fd 3) that says whether the process started,
//! and with a tty a resize pipe (fd 4); [`ExecSession::wait`] gives the exit code.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio as PStdio};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};

/// Which streams the caller wants.
pub struct Stdio {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A process running in a container.
pub struct ExecSession {
    pub stdin: Option<Box<dyn std::io::Write + Send>>,
    /// With a tty: the pty output.
    pub stdout: Option<Box<dyn std::io::Read + Send>>,
    pub stderr: Option<Box<dyn std::io::Read + Send>>,
    child: Option<Child>,
    resize: Option<Mutex<File>>,
}

impl ExecSession {
    /// Sets the terminal size (only with a tty).
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        let Some(r) = &self.resize else {
            bail!("this exec session has no terminal");
        };
        let mut f = r.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(f, "{width} {height}").context("resizing the terminal")
    }

    /// Blocks until the process ends: its shell-style exit code (128+signal).
    pub fn wait(&mut self) -> Result<i32> {
        self.stdin = None;
        let child = self
            .child
            .as_mut()
            .context("the exec session was already waited for")?;
        let st = child.wait().context("waiting for the exec helper")?;
        Ok(match (st.code(), st.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 255,
        })
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        // Reap the helper if the caller never waited (it ends with its process).
        if let Some(mut child) = self.child.take()
            && let Ok(None) = child.try_wait()
        {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Starts `command` in runtime container `id`.
pub fn start(
    exe: &Path,
    runtime_root: &Path,
    id: &str,
    command: &[String],
    io: Stdio,
) -> Result<ExecSession> {
    if command.is_empty() {
        bail!("exec needs a command");
    }
    let (status_r, status_w) = pipe()?;
    let resize = if io.tty { Some(pipe()?) } else { None };
    let mut cmd = Command::new(exe);
    cmd.arg("shim")
        .arg("exec")
        .arg("--root")
        .arg(runtime_root)
        .arg("--id")
        .arg(id);
    if io.tty {
        cmd.arg("--tty");
    }
    cmd.arg("--").args(command);
    cmd.stdin(if io.stdin {
        PStdio::piped()
    } else {
        PStdio::null()
    });
    cmd.stdout(if io.stdout {
        PStdio::piped()
    } else {
        PStdio::null()
    });
    cmd.stderr(if io.stderr && !io.tty {
        PStdio::piped()
    } else {
        PStdio::null()
    });
    let fd3 = status_w.as_raw_fd();
    let fd4 = resize.as_ref().map(|(r, _)| r.as_raw_fd());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (src, dst) in [(Some(fd3), 3), (fd4, 4)] {
                let Some(src) = src else { continue };
                if src == dst {
                    if libc::fcntl(dst, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(src, dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the exec helper {}", exe.display()))?;
    drop(status_w);
    let resize_w = resize.map(|(r, w)| {
        drop(r);
        Mutex::new(File::from(w))
    });
    let mut msg = String::new();
    File::from(status_r).read_to_string(&mut msg)?;
    if msg.trim() != "ok" {
        let _ = child.wait();
        let msg = msg.trim();
        return Err(anyhow!(if msg.is_empty() {
            "the exec helper failed before starting the process".to_string()
        } else {
            msg.to_string()
        }));
    }
    Ok(ExecSession {
        stdin: child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>),
        stdout: child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        stderr: child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child: Some(child),
        resize: resize_w,
    })
}
