//! The parent ↔ child channel used while a container or exec process is being set up:
//! a SOCK_SEQPACKET socketpair carrying one-byte tags with small payloads, and file
//! descriptors (the pty master) as SCM_RIGHTS.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Parent → child: the cgroup is joined and its resources applied, go on.
pub const GO: u8 = b'G';
/// Init → parent: it created and joined its (v1) cgroup itself.
pub const JOINED: u8 = b'J';
/// Init → parent: its namespaces exist (the caller runs createRuntime hooks now).
pub const NAMESPACES: u8 = b'N';
/// Intermediate → parent: pid of the process it cloned (payload: decimal pid).
pub const PID: u8 = b'P';
/// Init → parent: set-up done, waiting for start.
pub const READY: u8 = b'R';
/// Parent → init: execute the user program now.
pub const START: u8 = b'S';
/// Child → parent: set-up failed (payload: message).
pub const ERROR: u8 = b'E';
/// Init → parent: here is the pty master (fd attached).
pub const CONSOLE: u8 = b'C';

/// Creates a close-on-exec socketpair: (parent end, child end).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid out array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message (tag + payload), optionally with a file descriptor.
pub fn send(fd: RawFd, tag: u8, payload: &[u8], pass: Option<RawFd>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let n = payload.len().min(buf.len() - 1);
    buf[0] = tag;
    buf[1..=n].copy_from_slice(&payload[..n]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: n + 1,
    };
    // Room for one fd of control data, aligned for cmsghdr.
    let mut cmsg = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(pfd) = pass {
        // SAFETY: the control buffer is large and aligned enough for one SCM_RIGHTS fd.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), pfd);
        }
    }
    loop {
        // SAFETY: msg points to live buffers.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A received message.
#[derive(Debug)]
pub struct Message {
    /// Tag byte.
    pub tag: u8,
    /// Payload.
    pub payload: Vec<u8>,
    /// Attached descriptor, if any.
    pub fd: Option<OwnedFd>,
}

impl Message {
    /// Payload as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Receives one message; `None` at end of stream (every peer closed its end).
pub fn recv(fd: &impl AsRawFd) -> io::Result<Option<Message>> {
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: zeroed msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    let n = loop {
        // SAFETY: msg points to live buffers.
        let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        // A peer that exits with our messages unread leaves ECONNRESET pending, reported
        // before what it sent last (its error message): the error is cleared once read.
        if e.kind() != io::ErrorKind::Interrupted && e.kind() != io::ErrorKind::ConnectionReset {
            return Err(e);
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let mut passed = None;
    // SAFETY: walking the control messages the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                passed = Some(OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some(Message {
        tag: buf[0],
        payload: buf[1..n].to_vec(),
        fd: passed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_the_pair() {
        let (a, b) = pair().unwrap();
        let (r, _w) = pair().unwrap();
        send(b.as_raw_fd(), PID, b"1234", Some(r.as_raw_fd())).unwrap();
        let m = recv(&a).unwrap().unwrap();
        assert_eq!(m.tag, PID);
        assert_eq!(m.text(), "1234");
        assert!(m.fd.is_some());
        drop(b);
        assert!(recv(&a).unwrap().is_none(), "EOF once the peer is closed");
    }
}
