//! The last steps before the user program runs, shared by a container's init and by
//! exec'd processes: PATH lookup, rlimits, umask, user and groups, capabilities,
//! no_new_privs, seccomp, then execve.

use crate::config::ProcessPlan;
use crate::error::{Error, Result};
use crate::seccomp::Filter;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Finds the program to run, using PATH from the process environment like execvp.
pub fn find_executable(p: &ProcessPlan) -> Result<PathBuf> {
    let name = &p.args[0];
    let check = |path: &Path| -> Option<PathBuf> {
        let m = std::fs::metadata(path).ok()?;
        (m.is_file() && m.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
    };
    if name.contains('/') {
        let path = if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            p.cwd.join(name)
        };
        return check(&path).ok_or_else(|| {
            Error::Init(format!(
                "executable {name:?} not found or not executable in the container"
            ))
        });
    }
    let path_var = p
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .find_map(|d| check(&Path::new(d).join(name)))
        .ok_or_else(|| {
            Error::Init(format!(
                "executable {name:?} not found in $PATH ({path_var})"
            ))
        })
}

/// Sets the resource limits.
pub fn apply_rlimits(p: &ProcessPlan) -> Result<()> {
    for &(res, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: valid rlimit struct.
        if unsafe { libc::setrlimit(res as _, &lim) } < 0 {
            return Err(Error::io(
                format!("setrlimit({res}, {soft}, {hard})"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

fn os(what: &str) -> Error {
    Error::io(what.to_string(), std::io::Error::last_os_error())
}

/// Switches user, capabilities and security settings, then executes the program.
/// Only returns on failure.
pub fn finalize_and_exec(
    p: &ProcessPlan,
    exe: &Path,
    seccomp: Option<&Filter>,
    last_cap: u32,
) -> Error {
    // Everything that allocates happens before the seccomp filter is in place.
    let exe_c = match CString::new(exe.as_os_str().as_bytes()) {
        Ok(c) => c,
        Err(_) => return Error::Init("executable path contains NUL".into()),
    };
    let args: Vec<CString> = p
        .args
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let env: Vec<CString> = p
        .env
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    if let Err(e) = finalize(p, seccomp, last_cap) {
        return e;
    }
    // Every descriptor we did not mean to pass is closed on exec.
    // SAFETY: close_range only changes flags of our own descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            4u32, /* CLOSE_RANGE_CLOEXEC */
        );
    }
    // SAFETY: argv and envp are NUL-terminated arrays of valid C strings.
    unsafe { libc::execve(exe_c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Error::io(
        format!("executing {}", exe.display()),
        std::io::Error::last_os_error(),
    )
}

fn finalize(p: &ProcessPlan, seccomp: Option<&Filter>, last_cap: u32) -> Result<()> {
    let gids: Vec<libc::gid_t> = p
        .additional_gids
        .iter()
        .map(|g| *g as libc::gid_t)
        .collect();
    if let Some(m) = p.umask {
        // SAFETY: plain syscall.
        unsafe { libc::umask(m as libc::mode_t) };
    }
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it.
    if !p.no_new_privileges
        && let Some(f) = seccomp
    {
        f.install()
            .map_err(|e| Error::io("installing the seccomp filter", e))?;
    }
    if let Some(c) = &p.capabilities {
        c.apply_bounding(last_cap)
            .map_err(|e| Error::io("dropping bounding capabilities", e))?;
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } < 0 {
            return Err(os("PR_SET_KEEPCAPS"));
        }
    }
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        if libc::setgroups(gids.len() as _, gids.as_ptr()) < 0 {
            return Err(os("setgroups"));
        }
        if libc::setresgid(p.gid, p.gid, p.gid) < 0 {
            return Err(os(&format!("setting gid {}", p.gid)));
        }
        if libc::setresuid(p.uid, p.uid, p.uid) < 0 {
            return Err(os(&format!("setting uid {}", p.uid)));
        }
    }
    if let Some(c) = &p.capabilities {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } < 0 {
            return Err(os("PR_SET_KEEPCAPS"));
        }
        c.apply_sets(last_cap)
            .map_err(|e| Error::io("setting capabilities", e))?;
    }
    if p.no_new_privileges {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(os("PR_SET_NO_NEW_PRIVS"));
        }
        if let Some(f) = seccomp {
            f.install()
                .map_err(|e| Error::io("installing the seccomp filter", e))?;
        }
    }
    Ok(())
}
