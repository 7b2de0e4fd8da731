//! What the kernel knows about a unix socket that the socket itself does
//! not say: whether it was shut down (`SO_ACCEPTCONN` keeps reading 1 on a
//! shut-down unix listener), and which file it was bound to. Asked through
//! `sock_diag` (`NETLINK_SOCK_DIAG`, as `ss -x` does), by the socket's
//! inode, without touching the socket: a probe `connect` would hand a
//! worker an empty connection every time.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_VFS` (linux/unix_diag.h): the file the socket is bound to.
const UDIAG_SHOW_VFS: u32 = 0x2;
/// `UNIX_DIAG_VFS` and `UNIX_DIAG_SHUTDOWN` attributes (linux/unix_diag.h);
/// the kernel adds the shutdown state to every answer.
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
/// `INET_DIAG_NOCOOKIE`: find the socket by inode alone.
const NO_COOKIE: u32 = !0;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `RCV_SHUTDOWN` in `sk_shutdown`: `shutdown(SHUT_RD)` or `SHUT_RDWR`.
const RCV_SHUTDOWN: u8 = 1;

/// What `sock_diag` says about one unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UnixDiag {
    /// `shutdown(SHUT_RD)` (or `SHUT_RDWR`) was called on it.
    pub shut_down: bool,
    /// The device and inode of the file it was bound to, as `stat` shows
    /// them; `None` for an abstract or unnamed socket.
    pub file: Option<(u64, u64)>,
}

/// Ask the kernel about the unix socket whose inode (`fstat`'s `st_ino`)
/// is `inode`.
pub(super) fn unix_diag(inode: u64) -> io::Result<UnixDiag> {
    let inode = u32::try_from(inode).map_err(|_| io::Error::other("inode out of range"))?;
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // The kernel answers at once; never let a surprise block the loop.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval, passed with its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let request = request(inode);
    // SAFETY: sends a local buffer on our own socket (to the kernel: no
    // address means port id 0).
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 4096];
    // SAFETY: receives into a local buffer of the given length.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            answer.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse(&answer[..n as usize])
}

/// `nlmsghdr` + `unix_diag_req` for one socket, by inode.
fn request(inode: u32) -> Vec<u8> {
    const HEADER: usize = 16;
    const BODY: usize = 24;
    let mut out = Vec::with_capacity(HEADER + BODY);
    out.extend_from_slice(&((HEADER + BODY) as u32).to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    out.push(libc::AF_UNIX as u8); // sdiag_family
    out.push(0); // sdiag_protocol
    out.extend_from_slice(&0u16.to_ne_bytes()); // pad
    out.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    out.extend_from_slice(&inode.to_ne_bytes());
    out.extend_from_slice(&UDIAG_SHOW_VFS.to_ne_bytes());
    out.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    out.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    out
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Read the kernel's answer: an error, or `unix_diag_msg` and attributes.
fn parse(answer: &[u8]) -> io::Result<UnixDiag> {
    let short = || io::Error::other("a short sock_diag answer");
    let length = u32_at(answer, 0).ok_or_else(short)? as usize;
    let kind = u16_at(answer, 4).ok_or_else(short)?;
    let message = answer.get(..length).ok_or_else(short)?;
    if kind == NLMSG_ERROR {
        let code = u32_at(message, 16).ok_or_else(short)? as i32;
        return Err(io::Error::from_raw_os_error(-code));
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(io::Error::other(format!(
            "unexpected sock_diag message type {kind}"
        )));
    }
    // 16 bytes of nlmsghdr, 16 of unix_diag_msg, then attributes.
    let mut at = 32;
    let mut diag = UnixDiag {
        shut_down: false,
        file: None,
    };
    while let (Some(len), Some(ty)) = (u16_at(message, at), u16_at(message, at + 2)) {
        let len = usize::from(len);
        if len < 4 {
            break;
        }
        let payload = message.get(at + 4..at + len).ok_or_else(short)?;
        match ty {
            UNIX_DIAG_VFS => {
                let ino = u32_at(payload, 0).ok_or_else(short)?;
                let dev = u32_at(payload, 4).ok_or_else(short)?;
                diag.file = Some((user_dev(dev), u64::from(ino)));
            }
            UNIX_DIAG_SHUTDOWN => {
                diag.shut_down = payload.first().is_some_and(|s| s & RCV_SHUTDOWN != 0);
            }
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    Ok(diag)
}

/// The kernel's own device number (major << 20 | minor) as `stat` shows it.
fn user_dev(dev: u32) -> u64 {
    libc::makedev(dev >> 20, dev & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixListener;

    use super::*;

    fn inode(listener: &UnixListener) -> u64 {
        let fd = listener.as_fd().try_clone_to_owned().unwrap();
        std::fs::File::from(fd).metadata().unwrap().ino()
    }

    #[test]
    fn sees_the_file_and_a_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let diag = unix_diag(inode(&listener)).unwrap();
        assert_eq!(
            diag,
            UnixDiag {
                shut_down: false,
                file: Some((meta.dev(), meta.ino()))
            }
        );
        // SAFETY: shutdown on our own socket.
        assert_eq!(
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) },
            0
        );
        assert!(unix_diag(inode(&listener)).unwrap().shut_down);
    }

    #[test]
    fn an_unknown_inode_is_an_error() {
        assert!(unix_diag(1).is_err());
    }
}
