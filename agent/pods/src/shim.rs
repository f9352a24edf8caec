//! The per-container shim (`flotilla-agent shim run …`, a hidden subcommand) and the
//! exec helper (`flotilla-agent shim exec …`). Both start as fresh processes, so the
//! multi-threaded agent never forks. The shim detaches (setsid), creates and starts the
//! container as the parent of its init, copies its stdout/stderr into a CRI log file,
//! waits for it and writes the exit status (code, signal, OOM) to a file, so containers
//! outlive agent restarts. The exec helper runs a process in a container with the
//! helper's stdio (or a pty relayed to it, resized through fd 4), reports readiness on
//! fd 3 and exits with the process's shell-style code.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_runtime::{CreateOptions, ExitStatus, Runtime};
use serde::{Deserialize, Serialize};

use crate::cri::LineWriter;

/// How an attempt ended, as the shim records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    /// 0: not killed by a signal.
    pub signal: i32,
    pub oom_killed: bool,
    /// Unix seconds.
    pub finished_at: i64,
}

impl ExitRecord {
    /// Reads an exit file (None: not written yet).
    pub fn read(path: &Path) -> Option<ExitRecord> {
        let data = std::fs::read(path).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// Paths of one attempt's files.
#[derive(Debug, Clone)]
pub struct AttemptFiles {
    pub log: PathBuf,
    pub exit: PathBuf,
    pub shim_log: PathBuf,
}

impl AttemptFiles {
    /// Files of attempt `index` in container dir `dir`.
    pub fn new(dir: &Path, index: u32) -> AttemptFiles {
        AttemptFiles {
            log: dir.join(format!("{index}.log")),
            exit: dir.join(format!("{index}.exit")),
            shim_log: dir.join(format!("{index}.shim.log")),
        }
    }
}

/// Entry point of `flotilla-agent shim <run|exec> …`.
pub fn main(args: Vec<String>) -> ExitCode {
    let r = match args.first().map(String::as_str) {
        Some("run") => run_main(&args[1..]),
        Some("exec") => exec_main(&args[1..]),
        _ => Err(anyhow!("usage: flotilla-agent shim <run|exec> …")),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("flotilla-agent shim: {e:#}");
            ExitCode::from(125)
        }
    }
}

/// Parsed `--key value` flags.
type Flags = Vec<(String, String)>;

/// `--key value` flags up to `--`, and what follows it.
fn flags(args: &[String]) -> Result<(Flags, Vec<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            return Ok((out, args[i + 1..].to_vec()));
        }
        let key = a
            .strip_prefix("--")
            .ok_or_else(|| anyhow!("unexpected argument {a:?}"))?;
        if key == "tty" {
            out.push((key.to_string(), "1".into()));
            i += 1;
            continue;
        }
        let v = args
            .get(i + 1)
            .ok_or_else(|| anyhow!("--{key} needs a value"))?;
        out.push((key.to_string(), v.clone()));
        i += 2;
    }
    Ok((out, Vec::new()))
}

fn flag<'a>(f: &'a [(String, String)], key: &str) -> Result<&'a str> {
    f.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| anyhow!("missing --{key}"))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((r, w))
}

fn dup_onto(fd: &impl AsRawFd, target: i32) -> Result<()> {
    // SAFETY: dup2 onto a standard descriptor.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn run_main(args: &[String]) -> Result<u8> {
    let (f, _) = flags(args)?;
    let root = PathBuf::from(flag(&f, "root")?);
    let id = flag(&f, "id")?.to_string();
    let bundle = PathBuf::from(flag(&f, "bundle")?);
    let files = AttemptFiles {
        log: PathBuf::from(flag(&f, "log")?),
        exit: PathBuf::from(flag(&f, "exit")?),
        shim_log: PathBuf::from(flag(&f, "shim-log")?),
    };
    let log_max: u64 = match flag(&f, "log-max") {
        Ok(v) => v.parse().context("--log-max")?,
        Err(_) => crate::cri::DEFAULT_LOG_MAX,
    };
    let (ready_r, ready_w) = pipe()?;
    // SAFETY: this process is single-threaded here (fresh exec, no threads started).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid > 0 {
        drop(ready_w);
        let mut msg = String::new();
        File::from(ready_r).read_to_string(&mut msg)?;
        if let Some(rest) = msg.strip_prefix("ok ") {
            print!("{}", rest);
            return Ok(0);
        }
        let mut err = msg.trim().to_string();
        if err.is_empty() {
            err = format!(
                "the shim exited during set-up: {}",
                std::fs::read_to_string(&files.shim_log)
                    .unwrap_or_default()
                    .trim()
            );
        }
        eprintln!("{err}");
        return Ok(1);
    }
    drop(ready_r);
    let mut ready = File::from(ready_w);
    match shim_child(&root, &id, &bundle, &files, log_max, &mut ready) {
        Ok(()) => Ok(0),
        Err(e) => {
            let _ = write!(ready, "{e:#}");
            eprintln!("{e:#}");
            Ok(1)
        }
    }
}

fn shim_child(
    root: &Path,
    id: &str,
    bundle: &Path,
    files: &AttemptFiles,
    log_max: u64,
    ready: &mut File,
) -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let shim_log = File::options()
        .create(true)
        .append(true)
        .open(&files.shim_log)
        .with_context(|| format!("opening {}", files.shim_log.display()))?;
    dup_onto(&null, 0)?;
    dup_onto(&null, 1)?;
    dup_onto(&shim_log, 2)?;
    let log = crate::cri::RotatingLog::open(&files.log, log_max)
        .with_context(|| format!("opening {}", files.log.display()))?;
    let spec = flotilla_runtime::load_spec(bundle).map_err(|e| anyhow!("{e}"))?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let runtime = Runtime::new(root);
    let opts = CreateOptions {
        stdio: [
            Some(OwnedFd::from(null.try_clone()?)),
            Some(out_w),
            Some(err_w),
        ],
        console_socket: None,
    };
    let mut container = runtime
        .create_for_run(id, bundle, spec, opts)
        .map_err(|e| anyhow!("creating container {id}: {e}"))?;
    let console = container.take_console();
    container
        .start()
        .map_err(|e| anyhow!("starting container {id}: {e}"))?;
    writeln!(ready, "ok {} {}", std::process::id(), container.pid())?;
    drop(std::mem::replace(ready, null.try_clone()?));
    let log = Arc::new(Mutex::new(log));
    let mut copiers = Vec::new();
    let sources: Vec<(OwnedFd, &'static str)> = match console {
        Some(master) => vec![(master, "stdout")],
        None => vec![(out_r, "stdout"), (err_r, "stderr")],
    };
    for (fd, stream) in sources {
        let log = log.clone();
        copiers.push(std::thread::spawn(move || copy_lines(fd, stream, &log)));
    }
    let status = container.wait().map_err(|e| anyhow!("waiting: {e}"))?;
    // Output still in the pipes is copied; a leftover process holding them (with
    // hostPID there is no pid namespace to end it) must not keep the exit unrecorded.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while copiers.iter().any(|c| !c.is_finished()) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let rec = match status {
        ExitStatus::Exited(code) => ExitRecord {
            exit_code: code,
            signal: 0,
            oom_killed: false,
            finished_at: now(),
        },
        ExitStatus::Signaled(sig) => ExitRecord {
            exit_code: 128 + sig,
            signal: sig,
            oom_killed: false,
            finished_at: now(),
        },
        ExitStatus::OomKilled => ExitRecord {
            exit_code: 137,
            signal: libc::SIGKILL,
            oom_killed: true,
            finished_at: now(),
        },
    };
    crate::sandbox::write_atomic(&files.exit, &serde_json::to_vec(&rec)?, 0o644)?;
    Ok(())
}

fn copy_lines(fd: OwnedFd, stream: &'static str, log: &Mutex<crate::cri::RotatingLog>) {
    let mut src = File::from(fd);
    let mut w = LineWriter::new(stream);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
                let _ = w.feed(&buf[..n], &mut *f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: the pty's last writer is gone.
            Err(_) => break,
        }
    }
    let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
    let _ = w.flush(&mut *f);
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Starts a shim for a container whose bundle (with config.json) is ready; returns
/// (shim pid, init pid) once the container runs.
pub fn spawn(
    exe: &Path,
    runtime_root: &Path,
    id: &str,
    bundle: &Path,
    files: &AttemptFiles,
    log_max: u64,
) -> Result<(i32, i32)> {
    let out = std::process::Command::new(exe)
        .arg("shim")
        .arg("run")
        .arg("--root")
        .arg(runtime_root)
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(bundle)
        .arg("--log")
        .arg(&files.log)
        .arg("--exit")
        .arg(&files.exit)
        .arg("--shim-log")
        .arg(&files.shim_log)
        .arg("--log-max")
        .arg(log_max.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("starting the shim {}", exe.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        bail!("{err}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|s| s.parse::<i32>());
    match (it.next(), it.next()) {
        (Some(Ok(shim)), Some(Ok(init))) => Ok((shim, init)),
        _ => bail!("the shim answered {text:?}"),
    }
}

fn exec_main(args: &[String]) -> Result<u8> {
    let (f, argv) = flags(args)?;
    let root = PathBuf::from(flag(&f, "root")?);
    let id = flag(&f, "id")?;
    let tty = f.iter().any(|(k, _)| k == "tty");
    // SAFETY: fd 3 (and 4 with a tty) were set up by the agent for this helper.
    let mut status = unsafe { File::from_raw_fd(3) };
    let r = (|| -> Result<flotilla_runtime::ExecProcess> {
        if argv.is_empty() {
            bail!("no command given");
        }
        let runtime = Runtime::new(&root);
        let c = runtime
            .load(id)
            .map_err(|e| anyhow!("container {id}: {e}"))?;
        let process = c
            .config()
            .process()
            .as_ref()
            .ok_or_else(|| anyhow!("container {id} has no process"))?;
        let mut plan =
            flotilla_runtime::process_plan(process, "process").map_err(|e| anyhow!("{e}"))?;
        plan.args = argv.clone();
        plan.terminal = tty;
        c.exec(&plan, tty).map_err(|e| anyhow!("{e}"))
    })();
    let proc = match r {
        Ok(p) => {
            writeln!(status, "ok")?;
            drop(status);
            p
        }
        Err(e) => {
            let _ = write!(status, "{e:#}");
            return Ok(126);
        }
    };
    let mut relays = Vec::new();
    if let Some(master) = proc.console.as_ref() {
        let master_fd = master.as_raw_fd();
        // SAFETY: fd 4 is the resize pipe the agent set up.
        let resize = unsafe { File::from_raw_fd(4) };
        std::thread::spawn(move || {
            for line in BufReader::new(resize).lines() {
                let Ok(line) = line else { break };
                let mut it = line.split_whitespace().map(|v| v.parse::<u16>());
                if let (Some(Ok(w)), Some(Ok(h))) = (it.next(), it.next()) {
                    let ws = libc::winsize {
                        ws_row: h,
                        ws_col: w,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ on the pty master with a valid winsize.
                    unsafe { libc::ioctl(master_fd, libc::TIOCSWINSZ as _, &ws) };
                }
            }
        });
        let mut to_master = File::from(master.try_clone()?);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_master);
        });
        let mut from_master = File::from(master.try_clone()?);
        relays.push(std::thread::spawn(move || {
            let mut out = std::io::stdout().lock();
            let mut buf = [0u8; 8192];
            while let Ok(n) = from_master.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = out.flush();
            }
        }));
    }
    let st = proc.wait().map_err(|e| anyhow!("{e}"))?;
    for r in relays {
        let _ = r.join();
    }
    Ok(st.code().clamp(0, 255) as u8)
}
