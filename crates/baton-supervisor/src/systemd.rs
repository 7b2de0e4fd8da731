//! baton's own side of the sd_notify protocol, towards systemd.
//!
//! This is not the per-generation `NOTIFY_SOCKET` baton gives its workers
//! (see [`crate::readiness`]): it is the socket systemd gave baton, when baton
//! runs as a `Type=notify` service. baton tells systemd when it is ready,
//! when a reload starts and ends, what it is doing (`STATUS=`, shown by
//! `systemctl status`), that it is stopping, that its event loop is alive
//! (`WATCHDOG=1`), and hands it copies of its listening sockets for the
//! file descriptor store (`FDSTORE=1`).
//!
//! baton stays the main process of its unit: it never sends `MAINPID=`.
//! Without `NOTIFY_SOCKET` every method is a no-op that succeeds, so the
//! driver calls them unconditionally.
//!
//! The protocol itself (the address forms, the datagrams, `WATCHDOG_*`)
//! is `baton_sd`'s; this module says what baton tells systemd, and when.

use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use baton_sd::{Notifier, NotifyError, is_fd_name};
use nix::time::{ClockId, clock_gettime};

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// `NOTIFY_SOCKET` holds something baton cannot send to.
    #[error(
        "NOTIFY_SOCKET='{0}' is not an absolute path nor an @abstract socket name; baton cannot tell systemd anything"
    )]
    BadAddress(String),
    /// A name for the file descriptor store is not valid.
    #[error(
        "'{0}' cannot name a stored file descriptor: use 1-255 printable ASCII characters without ':'"
    )]
    BadFdName(String),
    /// A system call failed.
    #[error("cannot notify systemd ({what}): {source}")]
    Io {
        /// The message, or the step, that failed.
        what: String,
        /// The error.
        source: io::Error,
    },
}

/// How long a notification may block when systemd's queue is full.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// baton's notify connection to systemd; a no-op when systemd gave none.
#[derive(Debug)]
pub struct SystemdNotifier {
    target: Option<Notifier>,
    watchdog: Option<Duration>,
}

impl SystemdNotifier {
    /// The notifier systemd asked for in baton's own environment
    /// (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`). Without
    /// `NOTIFY_SOCKET` it is disabled and every method does nothing.
    pub fn from_env() -> Result<Self, SystemdError> {
        Self::from_lookup(|name| std::env::var_os(name), std::process::id())
    }

    /// As [`SystemdNotifier::from_env`], with the variables read through
    /// `lookup` and `pid` standing for baton's own pid (for tests).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
        pid: u32,
    ) -> Result<Self, SystemdError> {
        let Some(target) = Notifier::from_lookup(&lookup)? else {
            return Ok(Self::disabled());
        };
        // systemd reads its notify socket promptly; should its queue be full,
        // wait a little rather than block the event loop for good.
        target.set_send_timeout(Some(SEND_TIMEOUT))?;
        Ok(SystemdNotifier {
            target: Some(target),
            watchdog: baton_sd::watchdog_interval(&lookup, pid),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        SystemdNotifier {
            target: None,
            watchdog: None,
        }
    }

    /// Whether systemd listens (baton's environment had `NOTIFY_SOCKET`).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Where the notifications go (`/run/systemd/notify`, `@name`), if anywhere.
    pub fn address(&self) -> Option<&str> {
        self.target.as_ref().map(Notifier::address)
    }

    /// baton serves: the first generation is ready. `READY=1` + `STATUS=`.
    pub fn ready(&self, status: &str) -> Result<(), SystemdError> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// A reload starts: `RELOADING=1` with `MONOTONIC_USEC=` (now, on
    /// `CLOCK_MONOTONIC`) in the same datagram, and `STATUS=`. systemd
    /// ignores `RELOADING=1` without `MONOTONIC_USEC=`, which can leave
    /// `systemctl reload` hanging. Follow with [`SystemdNotifier::reload_done`].
    pub fn reloading(&self, status: &str) -> Result<(), SystemdError> {
        if self.target.is_none() {
            return Ok(());
        }
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={}",
            monotonic_usec()?,
            one_line(status)
        ))
    }

    /// A reload ended: `READY=1` either way (baton serves on), with
    /// `STATUS=` the text given, after `reload failed: ` when `ok` is false
    /// (so pass the reason, e.g. "generation 4 exited with status 1
    /// before it was ready").
    pub fn reload_done(&self, ok: bool, status: &str) -> Result<(), SystemdError> {
        let status = if ok {
            one_line(status)
        } else {
            format!("reload failed: {}", one_line(status))
        };
        self.send(&format!("READY=1\nSTATUS={status}"))
    }

    /// What baton is doing, for `systemctl status`: `STATUS=`.
    pub fn status(&self, text: &str) -> Result<(), SystemdError> {
        self.send(&format!("STATUS={}", one_line(text)))
    }

    /// baton shuts down: `STOPPING=1` + `STATUS=`.
    pub fn stopping(&self, status: &str) -> Result<(), SystemdError> {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// baton's event loop is alive: `WATCHDOG=1`.
    pub fn watchdog(&self) -> Result<(), SystemdError> {
        self.send("WATCHDOG=1")
    }

    /// The watchdog interval systemd set for baton (`WATCHDOG_USEC=`, when
    /// `WATCHDOG_PID=` is unset or is baton's pid), or `None`. Ping with
    /// [`SystemdNotifier::watchdog`] about twice per interval.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Push copies of these sockets into systemd's file descriptor store,
    /// each under its name (`FDSTORE=1`, `FDNAME=`, `SCM_RIGHTS`); systemd
    /// hands them back in `LISTEN_FDS`/`LISTEN_FDNAMES` when it restarts
    /// baton. One datagram per descriptor, since `FDNAME=` names every
    /// descriptor of its datagram. systemd accepts them only when the unit
    /// sets `FileDescriptorStoreMax=`, and says nothing when it refuses.
    /// Storing a descriptor that is in the store already is harmless:
    /// systemd keeps one copy.
    pub fn store_fds(&self, fds: &[(&str, BorrowedFd<'_>)]) -> Result<(), SystemdError> {
        for (name, _) in fds {
            if !is_fd_name(name) {
                return Err(SystemdError::BadFdName((*name).to_string()));
            }
        }
        let Some(target) = &self.target else {
            return Ok(());
        };
        for (name, fd) in fds {
            target.send_with_fds(&format!("FDSTORE=1\nFDNAME={name}"), &[*fd])?;
        }
        Ok(())
    }

    /// Send one datagram of `KEY=VALUE` lines as it is.
    pub fn send(&self, message: &str) -> Result<(), SystemdError> {
        match &self.target {
            Some(target) => Ok(target.send(message)?),
            None => Ok(()),
        }
    }
}

impl From<NotifyError> for SystemdError {
    fn from(error: NotifyError) -> Self {
        match error {
            NotifyError::BadAddress(address) => SystemdError::BadAddress(address),
            NotifyError::Socket {
                socket,
                what,
                source,
            } => SystemdError::Io {
                what: format!("{what} for {socket}"),
                source,
            },
            NotifyError::Send {
                socket,
                message,
                source,
            } => SystemdError::Io {
                what: format!("{} to {socket}", message.replace('\n', " ")),
                source,
            },
        }
    }
}

/// `STATUS=` and other values end at a newline: keep the text on one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn monotonic_usec() -> Result<u64, SystemdError> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(|e| SystemdError::Io {
        what: "reading CLOCK_MONOTONIC".into(),
        source: e.into(),
    })?;
    Ok(now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{self, MsgFlags};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    /// A stand-in for systemd's notify socket.
    struct Manager {
        socket: UnixDatagram,
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    impl Manager {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            Manager {
                socket,
                _dir: dir,
                path,
            }
        }

        fn notifier(&self) -> SystemdNotifier {
            let path = self.path.clone();
            SystemdNotifier::from_lookup(
                move |name| (name == "NOTIFY_SOCKET").then(|| path.clone().into_os_string()),
                std::process::id(),
            )
            .unwrap()
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        /// One datagram and the descriptors that came with it.
        fn recv_with_fds(&self) -> (String, Vec<OwnedFd>) {
            let mut buf = [0u8; 4096];
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let msg = socket::recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .unwrap();
            let mut fds = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let socket::ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors for us.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            (String::from_utf8(buf[..n].to_vec()).unwrap(), fds)
        }
    }

    #[test]
    fn without_notify_socket_everything_is_a_quiet_no_op() {
        let n = SystemdNotifier::from_lookup(|_| None, 1).unwrap();
        assert!(!n.is_enabled());
        n.ready("x").unwrap();
        n.reloading("x").unwrap();
        n.reload_done(false, "x").unwrap();
        n.stopping("x").unwrap();
        n.watchdog().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        n.store_fds(&[("http", l.as_fd())]).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        // An empty NOTIFY_SOCKET counts as unset, as in sd_notify(3).
        let n = SystemdNotifier::from_lookup(|_| Some(OsString::new()), 1).unwrap();
        assert!(!n.is_enabled());
    }

    #[test]
    fn messages_are_exact_and_in_order() {
        let m = Manager::new();
        let n = m.notifier();
        assert!(n.is_enabled());
        n.ready("generation 1 (pid 10) ready").unwrap();
        let before = monotonic_usec().unwrap();
        n.reloading("reloading: starting generation 2").unwrap();
        let after = monotonic_usec().unwrap();
        n.reload_done(true, "generation 2 (pid 11) ready").unwrap();
        n.reloading("reloading").unwrap();
        n.reload_done(false, "generation 3 exited with status 1\nbefore ready")
            .unwrap();
        n.status("generation 2 serving").unwrap();
        n.watchdog().unwrap();
        n.stopping("stopping: draining generation 2").unwrap();

        assert_eq!(m.recv(), "READY=1\nSTATUS=generation 1 (pid 10) ready");
        let reloading = m.recv();
        let lines: Vec<&str> = reloading.lines().collect();
        assert_eq!(lines.len(), 3, "{reloading:?}");
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC in the same datagram")
            .parse()
            .unwrap();
        assert!(
            (before..=after).contains(&usec),
            "{before} <= {usec} <= {after}"
        );
        assert_eq!(lines[2], "STATUS=reloading: starting generation 2");
        assert_eq!(m.recv(), "READY=1\nSTATUS=generation 2 (pid 11) ready");
        assert!(m.recv().starts_with("RELOADING=1\nMONOTONIC_USEC="));
        assert_eq!(
            m.recv(),
            "READY=1\nSTATUS=reload failed: generation 3 exited with status 1 before ready"
        );
        assert_eq!(m.recv(), "STATUS=generation 2 serving");
        assert_eq!(m.recv(), "WATCHDOG=1");
        assert_eq!(
            m.recv(),
            "STOPPING=1\nSTATUS=stopping: draining generation 2"
        );
    }

    #[test]
    fn never_sends_mainpid() {
        let m = Manager::new();
        let n = m.notifier();
        n.ready("a").unwrap();
        n.reloading("b").unwrap();
        n.reload_done(true, "c").unwrap();
        n.stopping("d").unwrap();
        for _ in 0..4 {
            assert!(!m.recv().contains("MAINPID"));
        }
    }

    #[test]
    fn abstract_socket_names_work() {
        let name = format!("baton-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let variable = format!("@{name}");
        let n = SystemdNotifier::from_lookup(|_| Some(variable.clone().into()), 1).unwrap();
        assert_eq!(n.address(), Some(variable.as_str()));
        n.status("abstract").unwrap();
        let mut buf = [0u8; 64];
        let len = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=abstract");
    }

    #[test]
    fn relative_or_odd_addresses_are_refused() {
        for bad in ["notify.sock", "vsock:2:1234"] {
            let err = SystemdNotifier::from_lookup(|_| Some(bad.into()), 1).unwrap_err();
            assert!(matches!(err, SystemdError::BadAddress(_)), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn a_missing_manager_is_an_error_naming_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let n = SystemdNotifier::from_lookup(|_| Some(path.clone().into()), 1).unwrap();
        let err = n.ready("x").unwrap_err().to_string();
        assert!(err.contains("READY=1"), "{err}");
        assert!(err.contains("gone"), "{err}");
    }

    #[test]
    fn store_fds_sends_one_named_descriptor_per_datagram() {
        let m = Manager::new();
        let n = m.notifier();
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        n.store_fds(&[("http", http.as_fd()), ("admin", admin.as_fd())])
            .unwrap();
        for (name, original) in [("http", &http), ("admin", &admin)] {
            let (text, fds) = m.recv_with_fds();
            assert_eq!(text, format!("FDSTORE=1\nFDNAME={name}"));
            assert_eq!(fds.len(), 1, "{name}");
            // The same socket: same inode, and it still listens on the same address.
            let stored = std::net::TcpListener::from(fds.into_iter().next().unwrap());
            assert_eq!(stored.local_addr().unwrap(), original.local_addr().unwrap());
            let ino = |fd: BorrowedFd<'_>| {
                std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .unwrap()
                    .ino()
            };
            assert_eq!(ino(stored.as_fd()), ino(original.as_fd()));
        }
    }

    #[test]
    fn bad_fd_names_are_refused_before_anything_is_sent() {
        let m = Manager::new();
        let n = m.notifier();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        for bad in ["", "a:b", "with space", &"x".repeat(256)] {
            let err = n
                .store_fds(&[("good", l.as_fd()), (bad, l.as_fd())])
                .unwrap_err();
            assert!(matches!(err, SystemdError::BadFdName(_)), "{bad:?}: {err}");
        }
        m.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            m.socket.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing was sent"
        );
    }

    #[test]
    fn watchdog_interval_honours_watchdog_pid() {
        // The rules themselves are baton_sd's (and tested there); this is
        // the hand-over to the notifier.
        let m = Manager::new();
        let lookup = |name: &str| match name {
            "NOTIFY_SOCKET" => Some(m.path.clone().into()),
            "WATCHDOG_USEC" => Some("2000000".into()),
            "WATCHDOG_PID" => Some("42".into()),
            _ => None,
        };
        let n = SystemdNotifier::from_lookup(lookup, 42).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        let n = SystemdNotifier::from_lookup(lookup, 43).unwrap();
        assert_eq!(n.watchdog_interval(), None, "meant for another process");
    }
}
