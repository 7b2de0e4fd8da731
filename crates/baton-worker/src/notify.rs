//! The sd_notify protocol: one datagram of `KEY=VALUE` lines to the unix
//! socket named by `NOTIFY_SOCKET`, sent by [`baton_sd::Notifier`] (the
//! same code the supervisor uses towards systemd).

use std::io;
use std::time::Duration;

use baton_sd::{Notifier, NotifyError};

use crate::Error;

/// Tells the supervisor that this process is ready to serve: sends
/// `READY=1` to `NOTIFY_SOCKET`.
///
/// Call it once the listeners are being served. Without `NOTIFY_SOCKET`
/// (not started by baton or systemd) it does nothing and returns `Ok`.
///
/// ```no_run
/// # fn main() -> Result<(), baton_worker::Error> {
/// baton_worker::notify_ready()?;
/// # Ok(()) }
/// ```
pub fn notify_ready() -> Result<(), Error> {
    notify("READY=1")
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments, e.g.
/// `"STATUS=warming caches"` or `"READY=1\nSTATUS=serving"`) as one
/// datagram to the socket named by `NOTIFY_SOCKET`.
///
/// `NOTIFY_SOCKET` may be a path (`/run/...`) or an abstract socket name
/// (`@name`). When it is unset or empty this does nothing and returns `Ok`.
/// The variable is left in place, so several messages can be sent.
pub fn notify(state: &str) -> Result<(), Error> {
    match Notifier::from_env().map_err(|e| error(state, e))? {
        None => Ok(()),
        Some(notifier) => notifier.send(state).map_err(|e| error(state, e)),
    }
}

/// The watchdog interval the supervisor asks of this process
/// (`WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or this process's pid),
/// as `sd_watchdog_enabled(3)` reads it. Send `WATCHDOG=1` with [`notify`]
/// about twice per interval while the process is healthy; a supervisor
/// that hears none within it replaces the process.
pub fn watchdog_interval() -> Option<Duration> {
    baton_sd::watchdog_interval(|name| std::env::var_os(name), std::process::id())
}

/// Sends `state` to the socket `socket` names (a path or `@abstract`).
#[cfg(test)]
fn notify_to(socket: &std::ffi::OsStr, state: &str) -> Result<(), Error> {
    let notifier = Notifier::open(socket).map_err(|e| error(state, e))?;
    notifier.send(state).map_err(|e| error(state, e))
}

/// The crate's error for a failed notification, naming socket and message.
fn error(state: &str, error: NotifyError) -> Error {
    let (socket, source) = match error {
        NotifyError::BadAddress(socket) => (
            socket,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET must be an absolute path or start with '@'",
            ),
        ),
        NotifyError::Socket { socket, source, .. } | NotifyError::Send { socket, source, .. } => {
            (socket, source)
        }
    };
    Error::Notify {
        socket,
        state: state.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    use std::time::Duration;

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(receive(&receiver), "READY=1");
        notify_to(path.as_os_str(), "STATUS=a b\nREADY=1").unwrap();
        assert_eq!(receive(&receiver), "STATUS=a b\nREADY=1");
    }

    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("baton-worker-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(receive(&receiver), "READY=1");
    }

    #[test]
    fn errors_name_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody-listens");
        let err = notify_to(path.as_os_str(), "READY=1").unwrap_err();
        assert!(matches!(err, Error::Notify { .. }));
        assert!(err.to_string().contains("nobody-listens"), "{err}");
        let err = notify_to(OsStr::new("relative"), "READY=1").unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
    }
}
