//! Code that runs in the forked children: the container's init (forked by the caller
//! straight into the container's pid namespace, so the caller can wait for it), and for
//! exec an intermediate process that joins the namespaces and clones the new process as
//! a sibling with CLONE_PARENT.
//!
//! Children report failures to the parent over the sync socket and `_exit(1)`; they never
//! return into the caller's code.

use crate::cgroups::{CgroupMountSource, JoinPlan};
use crate::config::{Plan, ProcessPlan};
use crate::error::{Context, Error, Result};
use crate::hooks::{self, Point};
use crate::seccomp::Filter;
use crate::sync;
use nix::sched::CloneFlags;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// What the container's init needs (all prepared before fork).
pub struct InitArgs<'a> {
    /// The validated config.
    pub plan: &'a Plan,
    /// Child end of the sync socket.
    pub sock: RawFd,
    /// exec.fifo opened read-write, when `start` comes from another process.
    pub fifo: Option<RawFd>,
    /// Namespaces to join, opened.
    pub join: &'a [(CloneFlags, OwnedFd)],
    /// What a `cgroup` mount shows.
    pub cgroup_mount: &'a CgroupMountSource,
    /// How the init enters the container's cgroup.
    pub cgroup: &'a JoinPlan,
    /// Highest capability of the kernel.
    pub last_cap: u32,
    /// Descriptors to install as stdin, stdout, stderr (None: inherit).
    pub stdio: [Option<RawFd>; 3],
}

/// What an exec'd process needs.
pub struct ExecArgs<'a> {
    /// The process to run.
    pub process: &'a ProcessPlan,
    /// Child end of the sync socket.
    pub sock: RawFd,
    /// The container's namespaces, opened, in join order.
    pub join: &'a [(CloneFlags, OwnedFd)],
    /// The container's seccomp filter.
    pub seccomp: Option<&'a Filter>,
    /// How the process enters the container's cgroup.
    pub cgroup: &'a JoinPlan,
    /// Highest capability of the kernel.
    pub last_cap: u32,
    /// Slave side of a pty to use as the controlling terminal and stdio.
    pub tty: Option<RawFd>,
}

fn fail(sock: RawFd, e: &Error) -> ! {
    let msg = e.to_string();
    if sync::send(sock, sync::ERROR, msg.as_bytes(), None).is_err() {
        eprintln!("flotilla-runtime: {msg}");
    }
    // SAFETY: terminating the child without running the parent's atexit handlers.
    unsafe { libc::_exit(1) }
}

/// fork(2)-like clone whose child becomes a child of our parent.
fn clone_parent() -> std::io::Result<i32> {
    // SAFETY: a fork-style clone without a new stack; the caller is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Waits for the parent's message `tag` and returns its payload; if the parent went
/// away or failed instead, leaves quietly (it reports the failure itself).
fn wait_for(sock: RawFd, tag: u8) -> Vec<u8> {
    // SAFETY: borrowing a descriptor we own for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) };
    match sync::recv(&fd.as_raw_fd()) {
        Ok(Some(m)) if m.tag == tag => m.payload,
        // SAFETY: terminating the child without running the parent's atexit handlers.
        _ => unsafe { libc::_exit(1) },
    }
}

/// Whether the caller runs hooks once the namespaces exist (prestart, createRuntime).
pub fn has_runtime_hooks(plan: &Plan) -> bool {
    [Point::Prestart, Point::CreateRuntime]
        .iter()
        .any(|p| !hooks::of(&plan.spec, *p).is_empty())
}

/// The state document for this container's hooks, with its pid as the caller sees it.
fn hook_state(p: &Plan, status: &str, pid: i32) -> Vec<u8> {
    let id = p.id.as_str();
    hooks::state_json(&p.spec, id, status, pid, &p.bundle)
}

/// Joins the opened namespaces in order, except the kinds in `skip`.
fn join_all(join: &[(CloneFlags, OwnedFd)], skip: CloneFlags) -> Result<()> {
    for (flag, fd) in join {
        if !skip.contains(*flag) {
            nix::sched::setns(fd.as_fd(), *flag).ctx(|| format!("joining namespace {flag:?}"))?;
        }
    }
    Ok(())
}

/// The container's first process, forked by the caller already inside the new (or
/// joined) pid namespace: enters its cgroup (by itself on v1, or waits until the caller
/// has moved it), joins and creates the other namespaces, waits until the caller has
/// applied the resources, then becomes the container's init. Never returns.
pub fn container_child(a: &InitArgs) -> ! {
    let r = (|| -> Result<i32> {
        // Every GO carries the init's pid as the caller sees it (for hook states).
        let mut go = Vec::new();
        match a.cgroup {
            JoinPlan::V1(dirs) => {
                crate::cgroups::join_self(dirs, true)
                    .ctx(|| "joining the container's cgroup".into())?;
                sync::send(a.sock, sync::JOINED, b"", None)
                    .ctx(|| "reporting the cgroup joined".into())?;
            }
            JoinPlan::ByParent => go = wait_for(a.sock, sync::GO),
            JoinPlan::AtBirth => {}
        }
        join_all(a.join, CloneFlags::CLONE_NEWPID)?;
        let create =
            a.plan.namespaces.create - CloneFlags::CLONE_NEWPID - CloneFlags::CLONE_NEWCGROUP;
        nix::sched::unshare(create).ctx(|| format!("creating namespaces {create:?}"))?;
        let runtime_hooks = has_runtime_hooks(a.plan);
        if runtime_hooks {
            sync::send(a.sock, sync::NAMESPACES, b"", None)
                .ctx(|| "reporting the namespaces created".into())?;
        }
        if runtime_hooks || !matches!(a.cgroup, JoinPlan::ByParent) {
            // The parent applies linux.resources (and runs its hooks) meanwhile. Wait for
            // it: device rules are rewritten from "deny all", and our mknods must not
            // fall in between.
            go = wait_for(a.sock, sync::GO);
        }
        if a.plan
            .namespaces
            .create
            .contains(CloneFlags::CLONE_NEWCGROUP)
        {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .ctx(|| "creating the cgroup namespace".into())?;
        }
        Ok(String::from_utf8_lossy(&go).parse().unwrap_or(0))
    })();
    match r {
        Ok(pid) => {
            let e = init(a, pid);
            fail(a.sock, &e)
        }
        Err(e) => fail(a.sock, &e),
    }
}

/// The container's init (`pid` as the caller sees it): returns only the error that
/// stopped it.
fn init(a: &InitArgs, pid: i32) -> Error {
    let p = a.plan;
    let pre = (|| -> Result<std::path::PathBuf> {
        for (i, fd) in a.stdio.iter().enumerate() {
            if let Some(fd) = fd {
                // SAFETY: dup2 onto the standard descriptors.
                if unsafe { libc::dup2(*fd, i as i32) } < 0 {
                    return Err(Error::io(
                        "setting up stdio",
                        std::io::Error::last_os_error(),
                    ));
                }
            }
        }
        // SAFETY: plain syscall.
        unsafe { libc::setsid() };
        if let Some(adj) = p.process.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .ctx(|| format!("setting oom_score_adj to {adj}"))?;
        }
        crate::process::apply_rlimits(&p.process)?;
        crate::rootfs::prepare(p, a.cgroup_mount)?;
        hooks::run(
            &p.spec,
            Point::CreateContainer,
            &hook_state(p, "creating", pid),
        )?;
        crate::rootfs::pivot(&p.rootfs)?;
        crate::rootfs::finish(p)?;
        if let Some(h) = &p.hostname {
            nix::unistd::sethostname(h).ctx(|| format!("setting hostname {h:?}"))?;
        }
        if let Some(d) = &p.domainname {
            // SAFETY: valid buffer and length.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } < 0 {
                return Err(Error::io(
                    format!("setting domainname {d:?}"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        nix::unistd::chdir(&p.process.cwd)
            .ctx(|| format!("process.cwd {}", p.process.cwd.display()))?;
        let exe = crate::process::find_executable(&p.process)?;
        if p.process.terminal {
            crate::tty::setup_in_container(a.sock)?;
        }
        Ok(exe)
    })();
    let exe = match pre {
        Ok(e) => e,
        Err(e) => return e,
    };
    if sync::send(a.sock, sync::READY, b"", None).is_err() {
        // SAFETY: the parent is gone; nothing to report to.
        unsafe { libc::_exit(1) }
    }
    match a.fifo {
        Some(fifo) => {
            let mut b = [0u8; 1];
            loop {
                // SAFETY: reading one byte into a valid buffer.
                let r = unsafe { libc::read(fifo, b.as_mut_ptr().cast(), 1) };
                if r == 1 {
                    break;
                }
                if r < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return Error::Init("exec.fifo closed before start".into());
            }
        }
        // Without a FIFO, only the caller holding the container can start it (or it
        // dropped the container, and we leave).
        None => drop(wait_for(a.sock, sync::START)),
    }
    if let Err(e) = hooks::run(
        &p.spec,
        Point::StartContainer,
        &hook_state(p, "created", pid),
    ) {
        return e;
    }
    crate::process::finalize_and_exec(&p.process, &exe, p.seccomp.as_ref(), a.last_cap)
}

/// The intermediate process of `exec`. Never returns.
pub fn exec_intermediate(a: &ExecArgs) -> ! {
    let r = (|| -> Result<i32> {
        wait_for(a.sock, sync::GO);
        if let JoinPlan::V1(dirs) = a.cgroup {
            crate::cgroups::join_self(dirs, false)
                .ctx(|| "joining the container's cgroup".into())?;
        }
        join_all(a.join, CloneFlags::empty())?;
        let pid = clone_parent().ctx(|| "cloning the exec process".into())?;
        if pid == 0 {
            let e = exec_child(a);
            fail(a.sock, &e);
        }
        Ok(pid)
    })();
    match r {
        Ok(pid) => {
            let _ = sync::send(a.sock, sync::PID, pid.to_string().as_bytes(), None);
            // SAFETY: leave without touching the parent's state.
            unsafe { libc::_exit(0) }
        }
        Err(e) => fail(a.sock, &e),
    }
}

fn exec_child(a: &ExecArgs) -> Error {
    let r = (|| -> Result<std::path::PathBuf> {
        if let Some(tty) = a.tty {
            crate::tty::make_controlling(tty)?;
        }
        nix::unistd::chdir(&a.process.cwd).ctx(|| format!("cwd {}", a.process.cwd.display()))?;
        crate::process::find_executable(a.process)
    })();
    match r {
        Ok(exe) => crate::process::finalize_and_exec(a.process, &exe, a.seccomp, a.last_cap),
        Err(e) => e,
    }
}
