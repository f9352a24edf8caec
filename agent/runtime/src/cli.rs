//! `flotilla-agent runtime …`: a runc-compatible command line over the library, so the
//! same bundle runs under runc, crun and Flotilla.

use crate::config::{load_spec, process_plan};
use crate::container::{CreateOptions, DEFAULT_ROOT, Runtime};
use crate::error::{Error, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, Ordering};

/// Arguments of `flotilla-agent runtime`.
#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// Directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Accepted for runc compatibility; errors go to stderr.
    #[arg(long, global = true, hide = true)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, hide = true)]
    log_format: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, hide = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Bundle directory (holds config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the pty master when process.terminal is true.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// File to write the container's pid to.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Container id.
    id: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Create and start a container, wait for it and remove it; exits with its code.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once the program runs, without waiting or removing.
        #[arg(short, long)]
        detach: bool,
    },
    /// Print the OCI state of a container as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal (default SIGTERM) to a container.
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        /// Container id.
        id: String,
        /// Signal name (TERM, SIGKILL) or number.
        signal: Option<String>,
    },
    /// Remove a container's cgroup and state.
    Delete {
        /// Kill it first if it runs.
        #[arg(short, long)]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Run a new process inside a running container.
    Exec(ExecCli),
    /// Print resource usage (cpu, memory, pids, OOM kills) as JSON, like `runc events --stats`.
    Events {
        /// Print one stats sample and exit (the only mode supported).
        #[arg(long)]
        stats: bool,
        /// Container id.
        id: String,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Args, Debug)]
struct ExecCli {
    /// JSON file with the process to run (runtime-spec `process`).
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Extra environment variable KEY=value.
    #[arg(short, long)]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    user: Option<String>,
    /// Supplementary group id.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// Extra capability to add.
    #[arg(short, long = "cap")]
    cap: Vec<String>,
    /// Set no_new_privs.
    #[arg(long)]
    no_new_privs: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Do not wait for the process.
    #[arg(short, long)]
    detach: bool,
    /// File to write the process's pid to.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Container id.
    id: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs the command.
pub fn main(args: RuntimeArgs) -> ExitCode {
    crate::trace::init();
    match dispatch(args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("flotilla-agent runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a signal given as a name (`TERM`, `SIGTERM`) or a number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::Usage(format!("signal {n} is out of range 1-64")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| Error::Usage(format!("unknown signal {s:?}")))
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forwards the usual terminal/job-control signals to `pid`, like runc run does.
fn forward_signals(pid: i32) {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installing a handler that only calls kill.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn write_pid_file(path: &Option<PathBuf>, pid: i32) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, pid.to_string())
            .map_err(|e| Error::io(format!("writing pid file {}", p.display()), e))?;
    }
    Ok(())
}

fn dispatch(args: RuntimeArgs) -> Result<i32> {
    let rt = Runtime::new(&args.root);
    match args.command {
        Command::Create(c) => {
            let spec = load_spec(&c.bundle)?;
            let opts = CreateOptions {
                console_socket: c.console_socket.clone(),
                ..Default::default()
            };
            let mut ct = rt.create(&c.id, &c.bundle, spec, opts)?;
            if ct.take_console().is_some() {
                let _ = rt.load(&c.id).and_then(|c| c.delete(true));
                return Err(Error::Usage(
                    "process.terminal is true: create needs --console-socket".into(),
                ));
            }
            write_pid_file(&c.pid_file, ct.pid())?;
            Ok(0)
        }
        Command::Start { id } => {
            rt.load(&id)?.start()?;
            Ok(0)
        }
        Command::Run { create: c, detach } => run(&rt, c, detach),
        Command::State { id } => {
            let s = rt.load(&id)?.state();
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("state serializes")
            );
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("TERM"))?;
            rt.load(&id)?.kill(sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            rt.load(&id)?.delete(force)?;
            Ok(0)
        }
        Command::Exec(e) => exec(&rt, e),
        Command::Events { stats, id } => {
            if !stats {
                return Err(Error::Usage(
                    "only `events --stats` (one sample) is supported".into(),
                ));
            }
            let usage = rt.load(&id)?.usage()?;
            let doc = serde_json::json!({"type": "stats", "id": id, "data": usage});
            println!("{doc}");
            Ok(0)
        }
        Command::List { format, quiet } => {
            let list = rt.list()?;
            if quiet {
                for s in &list {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&list).expect("serializes"));
            } else if format == "table" {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for s in &list {
                    println!(
                        "{:<20} {:<8} {:<10} {:<40} {}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created
                    );
                }
            } else {
                return Err(Error::Usage(format!(
                    "unknown format {format:?}: use table or json"
                )));
            }
            Ok(0)
        }
    }
}

fn run(rt: &Runtime, c: CreateArgs, detach: bool) -> Result<i32> {
    let spec = load_spec(&c.bundle)?;
    let opts = CreateOptions {
        console_socket: c.console_socket.clone(),
        ..Default::default()
    };
    crate::trace::phase("config loaded");
    let mut ct = rt.create_for_run(&c.id, &c.bundle, spec, opts)?;
    crate::trace::phase("created");
    let console = ct.take_console();
    if let Err(e) = write_pid_file(&c.pid_file, ct.pid()).and_then(|_| ct.start()) {
        let _ = ct.delete(true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    crate::trace::phase("started");
    forward_signals(ct.pid());
    let proxy = console.map(|m| std::thread::spawn(move || crate::tty::proxy(m)));
    let status = ct.wait();
    crate::trace::phase("exited");
    FORWARD_TO.store(0, Ordering::Relaxed);
    if let Some(h) = proxy {
        let _ = h.join();
    }
    let del = ct.delete(true);
    crate::trace::phase("deleted");
    let status = status?;
    del?;
    if status == crate::ExitStatus::OomKilled {
        eprintln!("flotilla-agent runtime: container {} was OOM-killed", c.id);
    }
    Ok(status.code())
}

fn exec(rt: &Runtime, e: ExecCli) -> Result<i32> {
    let ct = rt.load(&e.id)?;
    let mut plan = match &e.process {
        Some(path) => {
            let data = std::fs::read(path)
                .map_err(|err| Error::io(format!("reading {}", path.display()), err))?;
            let de = &mut serde_json::Deserializer::from_slice(&data);
            let p: oci_spec::runtime::Process =
                serde_path_to_error::deserialize(de).map_err(|err| {
                    Error::config(
                        format!("process.{}", err.path()),
                        err.into_inner().to_string(),
                    )
                })?;
            process_plan(&p, "process")?
        }
        None => {
            if e.command.is_empty() {
                return Err(Error::Usage(
                    "exec needs a command (or --process FILE)".into(),
                ));
            }
            let mut p = ct
                .config()
                .process()
                .clone()
                .ok_or_else(|| Error::config("process", "is missing"))?;
            p.set_args(Some(e.command.clone()));
            let mut plan = process_plan(&p, "process")?;
            plan.rlimits.clear();
            plan.oom_score_adj = None;
            plan
        }
    };
    for (i, kv) in e.env.iter().enumerate() {
        let Some((k, _)) = kv.split_once('=') else {
            return Err(Error::Usage(format!("--env #{i}: {kv:?} is not KEY=value")));
        };
        plan.env
            .retain(|x| x.split_once('=').map(|(a, _)| a) != Some(k));
        plan.env.push(kv.clone());
    }
    if let Some(cwd) = e.cwd {
        if !cwd.is_absolute() {
            return Err(Error::Usage(format!(
                "--cwd {} is not absolute",
                cwd.display()
            )));
        }
        plan.cwd = cwd;
    }
    if let Some(u) = &e.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u.as_str(), None),
        };
        plan.uid = uid
            .parse()
            .map_err(|_| Error::Usage(format!("--user {u:?}: want UID[:GID] as numbers")))?;
        if let Some(g) = gid {
            plan.gid = g
                .parse()
                .map_err(|_| Error::Usage(format!("--user {u:?}: want UID[:GID] as numbers")))?;
        }
    }
    if !e.additional_gids.is_empty() {
        plan.additional_gids = e.additional_gids.clone();
    }
    for c in &e.cap {
        let name = if c.to_ascii_uppercase().starts_with("CAP_") {
            c.to_ascii_uppercase()
        } else {
            format!("CAP_{}", c.to_ascii_uppercase())
        };
        let cap = caps::Capability::from_str(&name)
            .map_err(|_| Error::Usage(format!("--cap {c:?}: unknown capability")))?;
        let caps = plan.capabilities.get_or_insert_with(Default::default);
        for set in [
            &mut caps.bounding,
            &mut caps.effective,
            &mut caps.permitted,
            &mut caps.inheritable,
            &mut caps.ambient,
        ] {
            *set |= cap.bitmask();
        }
    }
    if e.no_new_privs {
        plan.no_new_privileges = true;
    }
    let tty = e.tty || plan.terminal;
    let mut p = ct.exec(&plan, tty)?;
    write_pid_file(&e.pid_file, p.pid)?;
    if e.detach {
        return Ok(0);
    }
    forward_signals(p.pid);
    let proxy = p
        .console
        .take()
        .map(|m| std::thread::spawn(move || crate::tty::proxy(m)));
    let st = p.wait()?;
    // The copy ends when the last holder of the terminal is gone.
    if let Some(h) = proxy {
        let _ = h.join();
    }
    Ok(st.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}
