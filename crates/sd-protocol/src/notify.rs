//! sd_notify: datagrams of `KEY=VALUE` lines to the socket `NOTIFY_SOCKET`
//! names, and the watchdog interval systemd asks for. The semantics are in
//! the [crate documentation](crate).

use std::ffi::{OsStr, OsString};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};
use nix::sys::time::TimeVal;

/// What went wrong talking to `NOTIFY_SOCKET`.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The address is neither `/path` nor `@name`.
    #[error(
        "NOTIFY_SOCKET={0:?} is neither an absolute path nor an @abstract socket name (nor short enough for a unix socket address)"
    )]
    BadAddress(String),
    /// Opening or setting up the sending socket failed.
    #[error("cannot open a socket to NOTIFY_SOCKET={socket:?} ({what}): {source}")]
    Socket {
        /// The value of `NOTIFY_SOCKET`.
        socket: String,
        /// The step that failed, e.g. `SO_SNDTIMEO`.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A message could not be sent.
    #[error("sending {message:?} to NOTIFY_SOCKET={socket:?} failed: {source}")]
    Send {
        /// The value of `NOTIFY_SOCKET`.
        socket: String,
        /// The message, e.g. `READY=1`.
        message: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// An unbound datagram socket aimed at `NOTIFY_SOCKET`'s address.
#[derive(Debug)]
pub struct Notifier {
    socket: OwnedFd,
    address: UnixAddr,
    shown: String,
}

impl Notifier {
    /// The notifier this process's `NOTIFY_SOCKET` asks for, if any.
    pub fn from_env() -> Result<Option<Self>, NotifyError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The notifier `NOTIFY_SOCKET` (read through `lookup`) asks for:
    /// `None` when it is unset or empty.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Option<Self>, NotifyError> {
        match lookup("NOTIFY_SOCKET") {
            Some(address) if !address.is_empty() => Self::open(&address).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for `address`: `/path` or `@abstract-name`. The socket is
    /// close-on-exec and sends without a timeout until
    /// [`Notifier::set_send_timeout`] sets one.
    pub fn open(address: &OsStr) -> Result<Self, NotifyError> {
        let shown = address.to_string_lossy().into_owned();
        let bad = || NotifyError::BadAddress(shown.clone());
        let bytes = address.as_bytes();
        let address = match bytes {
            [b'@', name @ ..] if !name.is_empty() => {
                UnixAddr::new_abstract(name).map_err(|_| bad())?
            }
            [b'/', ..] => UnixAddr::new(Path::new(address)).map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        let socket = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| NotifyError::Socket {
            socket: shown.clone(),
            what: "socket",
            source: e.into(),
        })?;
        Ok(Notifier {
            socket,
            address,
            shown,
        })
    }

    /// `NOTIFY_SOCKET` as given (`/run/systemd/notify`, `@name`).
    pub fn address(&self) -> &str {
        &self.shown
    }

    /// How long a send may block while the receiver's queue is full; `None`
    /// (or zero) blocks until there is room. A send that times out fails
    /// with [`io::ErrorKind::WouldBlock`].
    pub fn set_send_timeout(&self, timeout: Option<Duration>) -> Result<(), NotifyError> {
        let timeout = timeout.unwrap_or(Duration::ZERO);
        let timeval = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
        socket::setsockopt(&self.socket, sockopt::SendTimeout, &timeval).map_err(|e| {
            NotifyError::Socket {
                socket: self.shown.clone(),
                what: "SO_SNDTIMEO",
                source: e.into(),
            }
        })
    }

    /// Send `message` (newline-separated `KEY=VALUE` lines) as one datagram.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        self.send_raw(message, &[])
    }

    /// Send `message` with copies of `fds` attached (`SCM_RIGHTS`), e.g.
    /// `FDSTORE=1\nFDNAME=http` and one socket for systemd's store.
    pub fn send_with_fds(&self, message: &str, fds: &[BorrowedFd<'_>]) -> Result<(), NotifyError> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        self.send_raw(message, &raw)
    }

    fn send_raw(&self, message: &str, fds: &[RawFd]) -> Result<(), NotifyError> {
        let fail = |source: io::Error| NotifyError::Send {
            socket: self.shown.clone(),
            message: message.to_owned(),
            source,
        };
        let iov = [IoSlice::new(message.as_bytes())];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        let sent = socket::sendmsg(
            self.socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            Some(&self.address),
        )
        .map_err(|e| fail(e.into()))?;
        // A datagram goes whole or not at all; this only guards that promise.
        if sent != message.len() {
            return Err(fail(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", message.len()),
            )));
        }
        Ok(())
    }
}

/// The watchdog interval systemd set for the process `own_pid`:
/// `WATCHDOG_USEC` when it is a positive number of microseconds and
/// `WATCHDOG_PID` is unset, empty or `own_pid`. Anything else is `None`:
/// the watchdog is optional, so a value that makes no sense turns it off
/// rather than stopping the service. Ping (`WATCHDOG=1`) about twice per
/// interval.
pub fn watchdog_interval(
    lookup: impl Fn(&str) -> Option<OsString>,
    own_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = lookup("WATCHDOG_PID").filter(|p| !p.is_empty())
        && pid.to_str()?.parse::<u32>().ok()? != own_pid
    {
        return None;
    }
    let usec: u64 = lookup("WATCHDOG_USEC")?.to_str()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests;
