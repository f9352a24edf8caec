//! The runtime's library API, one method per container operation: create, start, state,
//! kill, wait, exec, usage, delete. The CLI is a thin layer over it and the agent's pod
//! manager calls it directly.

use crate::cgroups::{Cgroup, JoinPlan, Usage};
use crate::config::{Plan, ProcessPlan};
use crate::error::{Context, Error, Result};
use crate::hooks::{self, Point};
use crate::init::{ExecArgs, InitArgs};
use crate::namespaces::{KINDS, NamespacePlan};
use crate::seccomp::Filter;
use crate::state::{EXEC_FIFO, OciState, Persisted, Status};
use crate::sync;
use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where container state lives unless told otherwise.
pub const DEFAULT_ROOT: &str = "/run/flotilla/runtime";

/// A runtime rooted at a state directory.
#[derive(Clone, Debug)]
pub struct Runtime {
    root: PathBuf,
}

/// Options of `create`.
#[derive(Default)]
pub struct CreateOptions {
    /// stdin, stdout, stderr of the container (None: inherit ours).
    pub stdio: [Option<OwnedFd>; 3],
    /// runc-style console socket that receives the pty master when `process.terminal`.
    pub console_socket: Option<PathBuf>,
}

/// How a container's (or exec'd) process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit(code).
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
    /// Killed by the kernel's OOM killer (memory limit reached).
    OomKilled,
}

impl ExitStatus {
    /// Shell-style code: the exit code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
            ExitStatus::OomKilled => 128 + libc::SIGKILL,
        }
    }
}

/// A container known to the runtime.
pub struct Container {
    root: PathBuf,
    state: Persisted,
    /// Our end of the sync socket, while we are the process that created it.
    sync: Option<OwnedFd>,
    /// pty master received from init (when no console socket was given).
    console: Option<OwnedFd>,
    /// Whether start goes through exec.fifo (create) or the sync socket (run).
    via_fifo: bool,
    /// The cgroup, once opened.
    cgroup: std::cell::OnceCell<Cgroup>,
}

/// A process started by [`Container::exec`].
pub struct ExecProcess {
    /// Its pid.
    pub pid: i32,
    /// pty master when a terminal was requested.
    pub console: Option<OwnedFd>,
}

impl ExecProcess {
    /// Waits for it to end.
    pub fn wait(&self) -> Result<ExitStatus> {
        waitpid(self.pid)
    }
}

fn waitpid(pid: i32) -> Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io(format!("waiting for process {pid}"), e));
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        ExitStatus::Exited(libc::WEXITSTATUS(status))
    })
}

/// Undoes a half-done create when dropped.
struct Cleanup {
    dir: PathBuf,
    cgroup: Option<Cgroup>,
    pids: Vec<i32>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for &pid in &self.pids {
            // SAFETY: these are our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        if let Some(c) = &self.cgroup {
            let _ = c.remove();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// fork(2)-like clone3 whose child starts in the cgroup directory `dir`; returns the
/// pid (0 in the child), or -1 with errno set.
fn clone_into_cgroup(dir: &OwnedFd) -> i32 {
    /// `struct clone_args` of clone3(2): every field is a 64-bit value on every arch.
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: a fork-style clone (no new stack) of this single-threaded process; the
    // child only runs the container set-up and never returns.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        ) as i32
    }
}

/// Waits for the child's message `tag`; its error message or its exit become the error.
fn expect(sock: &OwnedFd, tag: u8) -> Result<()> {
    loop {
        match sync::recv(sock).ctx(|| "reading from the container process".into())? {
            Some(m) if m.tag == tag => return Ok(()),
            Some(m) if m.tag == sync::ERROR => return Err(Error::Init(m.text())),
            Some(_) => {}
            None => {
                return Err(Error::Init(
                    "the container process exited during set-up".into(),
                ));
            }
        }
    }
}

fn open_ns(path: &Path, flag: CloneFlags) -> Result<(CloneFlags, OwnedFd)> {
    let f = std::fs::File::open(path).ctx(|| format!("opening namespace {}", path.display()))?;
    Ok((flag, OwnedFd::from(f)))
}

impl Runtime {
    /// A runtime keeping state under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates container `id` from `spec` (bundle `bundle`); its process waits for
    /// [`Container::start`], which may come from another process (`exec.fifo`).
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
        opts: CreateOptions,
    ) -> Result<Container> {
        self.create_inner(id, bundle, spec, opts, true)
    }

    /// Like [`Runtime::create`], but only this `Container` value can start it (no FIFO):
    /// the fast path of `run`.
    pub fn create_for_run(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
        opts: CreateOptions,
    ) -> Result<Container> {
        self.create_inner(id, bundle, spec, opts, false)
    }

    fn create_inner(
        &self,
        id: &str,
        bundle: &Path,
        spec: Spec,
        opts: CreateOptions,
        via_fifo: bool,
    ) -> Result<Container> {
        let plan = Plan::new(id, bundle, spec)?;
        crate::trace::phase("config validated");
        if let Err(e) = std::fs::create_dir_all(&self.root) {
            return Err(Error::io(
                format!("creating state root {}", self.root.display()),
                e,
            ));
        }
        let dir = Persisted::dir(&self.root, id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(id.to_string()));
            }
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        let mut cleanup = Cleanup {
            dir: dir.clone(),
            cgroup: None,
            pids: Vec::new(),
            armed: true,
        };
        let fifo = if via_fifo {
            let path = dir.join(EXEC_FIFO);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .ctx(|| format!("creating {}", path.display()))?;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .ctx(|| format!("opening {}", path.display()))?;
            Some(OwnedFd::from(f))
        } else {
            None
        };
        let cgroup = Cgroup::open(&plan.cgroups_path)?;
        crate::trace::phase("cgroup manager opened");
        let join = plan
            .namespaces
            .join
            .iter()
            .map(|(flag, path)| open_ns(path, *flag))
            .collect::<Result<Vec<_>>>()?;
        let (psock, csock) = sync::pair().ctx(|| "creating the sync socket".into())?;
        let cgroup_mount = cgroup.mount_source();
        let cgroup_join = cgroup.join_plan();
        // On pure v2 the init is born in its cgroup (clone3 with CLONE_INTO_CGROUP): no
        // migration and no global lock. Kernels without it fall back to a parent join.
        let at_birth = JoinPlan::AtBirth;
        let into = match cgroup_join {
            JoinPlan::ByParent => Some(cgroup.create_unified()?),
            _ => None,
        };
        let mut args = InitArgs {
            plan: &plan,
            sock: csock.as_raw_fd(),
            fifo: fifo.as_ref().map(|f| f.as_raw_fd()),
            join: &join,
            cgroup_mount: &cgroup_mount,
            cgroup: if into.is_some() {
                &at_birth
            } else {
                &cgroup_join
            },
            last_cap: crate::capabilities::last_cap(),
            stdio: [0, 1, 2].map(|i| opts.stdio[i].as_ref().map(|f| f.as_raw_fd())),
        };
        // The pid namespace applies to children: the init is forked straight into it
        // (pid 1), after which this thread's own setting is restored.
        let pid_join = join
            .iter()
            .find(|(f, _)| *f == CloneFlags::CLONE_NEWPID)
            .map(|(_, fd)| fd);
        let new_pid_ns = plan.namespaces.create.contains(CloneFlags::CLONE_NEWPID);
        let restore = if pid_join.is_some() || new_pid_ns {
            Some(
                open_ns(
                    Path::new("/proc/thread-self/ns/pid"),
                    CloneFlags::CLONE_NEWPID,
                )?
                .1,
            )
        } else {
            None
        };
        if let Some(fd) = pid_join {
            nix::sched::setns(fd, CloneFlags::CLONE_NEWPID)
                .ctx(|| "joining the pid namespace".into())?;
        } else if new_pid_ns {
            nix::sched::unshare(CloneFlags::CLONE_NEWPID)
                .ctx(|| "creating the pid namespace".into())?;
        }
        let mut pid = -1;
        let mut fork_err = None;
        if let Some(dir) = &into {
            pid = clone_into_cgroup(dir);
            if pid == 0 {
                drop(psock);
                crate::init::container_child(&args);
            }
            if pid < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)
                ) {
                    args.cgroup = &cgroup_join;
                } else {
                    fork_err = Some(e);
                }
            }
        }
        if pid < 0 && fork_err.is_none() {
            // SAFETY: the child only runs the container set-up and never returns.
            pid = unsafe { libc::fork() };
            if pid == 0 {
                drop(psock);
                crate::init::container_child(&args);
            }
            if pid < 0 {
                fork_err = Some(std::io::Error::last_os_error());
            }
        }
        let joined = args.cgroup;
        if let Some(fd) = &restore {
            // Without this the caller's next child would land in the container.
            if let Err(e) = nix::sched::setns(fd, CloneFlags::CLONE_NEWPID) {
                if pid > 0 {
                    cleanup.pids.push(pid);
                }
                return Err(Error::errno("restoring the caller's pid namespace", e));
            }
        }
        if let Some(e) = fork_err {
            if into.is_some() {
                // Only removed if empty: another container may share the path.
                let _ = std::fs::remove_dir(cgroup.unified_dir());
            }
            return Err(Error::io("forking the container process", e));
        }
        drop(csock);
        crate::trace::phase("forked");
        cleanup.pids.push(pid);
        cleanup.cgroup = Some(cgroup);
        let cgroup = cleanup.cgroup.as_ref().expect("set above");
        // While the init enters its cgroup and creates its namespaces, build the cgroup
        // manager; the resources are applied once the cgroup exists.
        cgroup.prepare()?;
        match joined {
            JoinPlan::V1(_) => expect(&psock, sync::JOINED)?,
            JoinPlan::ByParent => cgroup.join(pid)?,
            JoinPlan::AtBirth => {}
        }
        crate::trace::phase("cgroup joined");
        if let Some(res) = plan
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
        {
            cgroup.apply(res)?;
        }
        crate::trace::phase("resources applied");
        // Each GO carries the init's pid. A child that failed already has its error
        // queued: the loop below reports it.
        let go = pid.to_string();
        let go = go.as_bytes();
        if let JoinPlan::ByParent = joined {
            let _ = sync::send(psock.as_raw_fd(), sync::GO, go, None);
        }
        let runtime_hooks = crate::init::has_runtime_hooks(&plan);
        if runtime_hooks {
            expect(&psock, sync::NAMESPACES)?;
            let state = hooks::state_json(&plan.spec, id, "creating", pid, &plan.bundle);
            hooks::run(&plan.spec, Point::Prestart, &state)?;
            hooks::run(&plan.spec, Point::CreateRuntime, &state)?;
        }
        if runtime_hooks || !matches!(joined, JoinPlan::ByParent) {
            let _ = sync::send(psock.as_raw_fd(), sync::GO, go, None);
        }
        let mut ready = false;
        let mut failure: Option<String> = None;
        let mut console = None;
        while !ready {
            match sync::recv(&psock).ctx(|| "reading from the container init".into())? {
                Some(m) if m.tag == sync::READY => {
                    crate::trace::phase("init ready");
                    ready = true
                }
                Some(m) if m.tag == sync::CONSOLE => console = m.fd,
                Some(m) if m.tag == sync::ERROR => {
                    failure.get_or_insert(m.text());
                }
                Some(_) => {}
                None => break,
            }
        }
        if let Some(f) = failure {
            return Err(Error::Init(f));
        }
        if !ready {
            return Err(Error::Init(
                "the container process exited during set-up".into(),
            ));
        }
        if let (Some(sock), Some(master)) = (&opts.console_socket, &console) {
            crate::tty::send_to_console_socket(sock, master)?;
            console = None;
        }
        let pid_start = crate::state::proc_stat(pid)
            .map(|(_, s)| s)
            .ok_or_else(|| Error::Init("the container process exited during set-up".into()))?;
        let state = Persisted {
            id: id.to_string(),
            pid,
            pid_start,
            bundle: plan.bundle.clone(),
            rootfs: plan.rootfs.clone(),
            created: crate::state::now_rfc3339(),
            cgroups_path: cgroup.path().to_path_buf(),
            config: plan.spec,
        };
        state.save(&dir)?;
        cleanup.armed = false;
        let cell = std::cell::OnceCell::new();
        if let Some(cg) = cleanup.cgroup.take() {
            let _ = cell.set(cg);
        }
        Ok(Container {
            root: self.root.clone(),
            state,
            sync: Some(psock),
            console,
            via_fifo,
            cgroup: cell,
        })
    }

    /// Loads an existing container.
    pub fn load(&self, id: &str) -> Result<Container> {
        crate::config::validate_id(id)?;
        let state = Persisted::load(&self.root, id)?;
        let via_fifo = true;
        Ok(Container {
            root: self.root.clone(),
            state,
            sync: None,
            console: None,
            via_fifo,
            cgroup: std::cell::OnceCell::new(),
        })
    }

    /// States of every container, sorted by id.
    pub fn list(&self) -> Result<Vec<OciState>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", self.root.display()), e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(s) = Persisted::load(&self.root, &name) {
                out.push(s.oci(&self.root));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

impl Container {
    /// Container id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Init pid.
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    /// Live status.
    pub fn status(&self) -> Status {
        self.state.status(&self.root)
    }

    /// OCI state document.
    pub fn state(&self) -> OciState {
        self.state.oci(&self.root)
    }

    /// Takes the pty master received from the container (terminal without console socket).
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    fn cgroup(&self) -> Result<&Cgroup> {
        if let Some(c) = self.cgroup.get() {
            return Ok(c);
        }
        let c = Cgroup::open(&self.state.cgroups_path)?;
        Ok(self.cgroup.get_or_init(|| c))
    }

    fn wrong(&self, status: Status, what: &str) -> Error {
        Error::WrongState {
            id: self.state.id.clone(),
            status: status.to_string(),
            what: what.to_string(),
        }
    }

    /// Runs the user program.
    pub fn start(&mut self) -> Result<()> {
        if self.via_fifo {
            let status = self.status();
            if status != Status::Created {
                return Err(self.wrong(status, "only a created container can be started"));
            }
            let path = Persisted::dir(&self.root, &self.state.id).join(EXEC_FIFO);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| {
                    Error::io(
                        format!(
                            "container {:?}: its init is not waiting for start",
                            self.state.id
                        ),
                        e,
                    )
                })?;
            // SAFETY: writing one byte from a valid buffer.
            let n = unsafe { libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(Error::io(
                    "writing exec.fifo",
                    std::io::Error::last_os_error(),
                ));
            }
            drop(f);
            std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
        } else {
            let Some(sock) = &self.sync else {
                return Err(self.wrong(self.status(), "already started"));
            };
            sync::send(sock.as_raw_fd(), sync::START, b"", None)
                .ctx(|| "signalling the container init".into())?;
        }
        // If we created it, wait until the program is executed (socket closes on exec).
        if let Some(sock) = self.sync.take() {
            loop {
                match sync::recv(&sock) {
                    Ok(Some(m)) if m.tag == sync::ERROR => return Err(Error::Init(m.text())),
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
        self.run_hooks_warn(Point::Poststart, "running");
        Ok(())
    }

    /// Runs the (warn-only) hooks at `point` with the container's state.
    fn run_hooks_warn(&self, point: Point, status: &str) {
        let c = &self.state.config;
        if !hooks::of(c, point).is_empty() {
            let s = &self.state;
            let state = hooks::state_json(c, &s.id, status, s.pid, &s.bundle);
            hooks::run_warn(c, point, &state);
        }
    }

    /// Sends `signal` to the init process, or to every process of the container.
    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong(status, "cannot send a signal to a stopped container"));
        }
        if all {
            for pid in self.cgroup()?.pids()? {
                // SAFETY: plain kill.
                unsafe { libc::kill(pid, signal) };
            }
            return Ok(());
        }
        // SAFETY: plain kill of the verified init pid.
        if unsafe { libc::kill(self.state.pid, signal) } < 0 {
            return Err(Error::io(
                format!("sending signal {signal} to {}", self.state.pid),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Waits for the init process to end (the caller must be its parent, as after
    /// `create` in this process). Reports an OOM kill as such.
    pub fn wait(&self) -> Result<ExitStatus> {
        let st = waitpid(self.state.pid)?;
        if st == ExitStatus::Signaled(libc::SIGKILL)
            && self.cgroup().is_ok_and(|c| c.oom_kills() > 0)
        {
            return Ok(ExitStatus::OomKilled);
        }
        Ok(st)
    }

    /// Resource usage (cpu, memory, pids, OOM kills).
    pub fn usage(&self) -> Result<Usage> {
        self.cgroup()?.usage()
    }

    /// The cgroups path.
    pub fn cgroups_path(&self) -> &Path {
        &self.state.cgroups_path
    }

    /// The config it was created from.
    pub fn config(&self) -> &Spec {
        &self.state.config
    }

    /// Removes the container: its cgroup and its state. A running container needs
    /// `force` (it is killed first).
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        if status == Status::Running && !force {
            return Err(self.wrong(status, "stop it first or use --force"));
        }
        if status != Status::Stopped {
            // SAFETY: plain kill of the verified init pid.
            unsafe { libc::kill(self.state.pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while crate::state::process_alive(self.state.pid, self.state.pid_start) {
                // Reap it if it is our child; otherwise its parent will.
                // SAFETY: non-blocking wait on a specific pid.
                unsafe { libc::waitpid(self.state.pid, std::ptr::null_mut(), libc::WNOHANG) };
                if Instant::now() > deadline {
                    return Err(Error::Init(format!(
                        "process {} did not die after SIGKILL",
                        self.state.pid
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.cgroup()?.remove()?;
        let dir = Persisted::dir(&self.root, &self.state.id);
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        self.run_hooks_warn(Point::Poststop, "stopped");
        Ok(())
    }

    /// Starts `process` inside the running container: same namespaces, cgroup and
    /// seccomp filter; its own user, capabilities, env and cwd. `tty` gives it a new pty.
    pub fn exec(&self, process: &ProcessPlan, tty: bool) -> Result<ExecProcess> {
        let status = self.status();
        if status == Status::Stopped {
            return Err(self.wrong(status, "cannot exec in a stopped container"));
        }
        let linux = self.state.config.linux().clone().unwrap_or_default();
        let ns = NamespacePlan::new(linux.namespaces().as_deref().unwrap_or(&[]))?;
        let seccomp = linux.seccomp().as_ref().map(Filter::compile).transpose()?;
        let mut join = Vec::new();
        for (flag, name) in KINDS {
            if ns.has(flag) {
                join.push(open_ns(
                    &PathBuf::from(format!("/proc/{}/ns/{name}", self.state.pid)),
                    flag,
                )?);
            }
        }
        let pty = if tty {
            Some(crate::tty::open_pty("/dev/ptmx")?)
        } else {
            None
        };
        let cgroup = self.cgroup()?;
        let cgroup_join = cgroup.join_plan();
        let (psock, csock) = sync::pair().ctx(|| "creating the sync socket".into())?;
        let args = ExecArgs {
            process,
            sock: csock.as_raw_fd(),
            join: &join,
            seccomp: seccomp.as_ref(),
            cgroup: &cgroup_join,
            last_cap: crate::capabilities::last_cap(),
            tty: pty.as_ref().map(|(_, s)| s.as_raw_fd()),
        };
        // SAFETY: the child only runs the exec intermediate and never returns.
        let interm = unsafe { libc::fork() };
        if interm < 0 {
            return Err(Error::io("fork", std::io::Error::last_os_error()));
        }
        if interm == 0 {
            drop(psock);
            crate::init::exec_intermediate(&args);
        }
        drop(csock);
        let reap = |pid: i32, kill: bool| unsafe {
            if kill {
                libc::kill(pid, libc::SIGKILL);
            }
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        };
        if let JoinPlan::ByParent = cgroup_join
            && let Err(e) = cgroup.join(interm)
        {
            reap(interm, true);
            return Err(e);
        }
        sync::send(psock.as_raw_fd(), sync::GO, b"", None)
            .ctx(|| "signalling the exec process".into())?;
        let mut pid = None;
        let mut failure = None;
        loop {
            match sync::recv(&psock) {
                Ok(Some(m)) if m.tag == sync::PID => pid = m.text().parse::<i32>().ok(),
                Ok(Some(m)) if m.tag == sync::ERROR => {
                    failure.get_or_insert(m.text());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        reap(interm, false);
        if let Some(f) = failure {
            if let Some(p) = pid {
                reap(p, false);
            }
            return Err(Error::Init(f));
        }
        let pid = pid.ok_or_else(|| Error::Init("the exec process could not be started".into()))?;
        Ok(ExecProcess {
            pid,
            console: pty.map(|(m, _)| m),
        })
    }
}
