//! Pseudo-terminals: created inside the container (init) or on the host (exec), handed
//! to a console socket like runc does, or proxied to our own stdio by `run`/`exec`.

use crate::error::{Error, Result};
use crate::sync;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn os(what: &str) -> Error {
    Error::io(what.to_string(), std::io::Error::last_os_error())
}

/// Opens a new pty pair from `ptmx`: (master, slave).
pub fn open_pty(ptmx: &str) -> Result<(OwnedFd, OwnedFd)> {
    let path = std::ffi::CString::new(ptmx).map_err(|_| Error::Init("bad ptmx path".into()))?;
    // SAFETY: plain libc calls on descriptors we own.
    unsafe {
        let m = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err(os(&format!("opening {ptmx}")));
        }
        let master = OwnedFd::from_raw_fd(m);
        let mut unlock: libc::c_int = 0;
        if libc::ioctl(m, libc::TIOCSPTLCK, &mut unlock) < 0 {
            return Err(os("unlocking the pty"));
        }
        // TIOCGPTPEER opens the slave relative to the master's devpts instance.
        let s = libc::ioctl(
            m,
            libc::TIOCGPTPEER as _,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(os("opening the pty slave"));
        }
        Ok((master, OwnedFd::from_raw_fd(s)))
    }
}

/// Makes `fd` the controlling terminal and the stdio of the calling process.
pub fn make_controlling(fd: RawFd) -> Result<()> {
    // SAFETY: plain syscalls.
    unsafe {
        libc::setsid();
        if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
            return Err(os("setting the controlling terminal"));
        }
        for i in 0..3 {
            if libc::dup2(fd, i) < 0 {
                return Err(os("attaching the terminal to stdio"));
            }
        }
    }
    Ok(())
}

/// In the container's init, after pivot_root: creates the pty from the container's
/// devpts, attaches it and sends the master to the parent.
pub fn setup_in_container(sock: RawFd) -> Result<()> {
    let (master, slave) = open_pty("/dev/ptmx")?;
    make_controlling(slave.as_raw_fd())?;
    sync::send(sock, sync::CONSOLE, b"", Some(master.as_raw_fd()))
        .map_err(|e| Error::io("sending the pty master", e))
}

/// Sends the pty master to a runc-style console socket.
pub fn send_to_console_socket(path: &std::path::Path, master: &OwnedFd) -> Result<()> {
    let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        Error::io(
            format!("connecting to console socket {}", path.display()),
            e,
        )
    })?;
    sync::send(s.as_raw_fd(), b'/', b"dev/ptmx", Some(master.as_raw_fd()))
        .map_err(|e| Error::io("sending the pty master to the console socket", e))
}

/// Copies our stdin to the pty and the pty to our stdout until the other side hangs up.
/// Puts our terminal in raw mode meanwhile.
pub fn proxy(master: OwnedFd) {
    let saved = raw_mode(0);
    let m = master.as_raw_fd();
    let m_in = m;
    std::thread::spawn(move || copy(0, m_in));
    copy(m, 1);
    if let Some(t) = saved {
        // SAFETY: restoring the attributes read earlier.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
    drop(master);
}

fn copy(from: RawFd, to: RawFd) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: valid buffer.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        let mut off = 0;
        while off < n as usize {
            // SAFETY: valid slice of buf.
            let w = unsafe { libc::write(to, buf[off..].as_ptr().cast(), n as usize - off) };
            if w <= 0 {
                return;
            }
            off += w as usize;
        }
    }
}

fn raw_mode(fd: RawFd) -> Option<libc::termios> {
    // SAFETY: termios calls on a descriptor we hold.
    unsafe {
        if libc::isatty(fd) != 1 {
            return None;
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) < 0 {
            return None;
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        Some(saved)
    }
}
