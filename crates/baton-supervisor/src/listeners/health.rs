//! Whether a listener still listens where it should, and its repair.
//!
//! baton never shuts its sockets down, but a worker can: `shutdown(2)` on
//! its copy of a listening socket stops the socket itself, for every
//! process that holds it, and every later connection is refused. So the
//! driver asks [`Listener::fault`] now and then and, on a fault, calls
//! [`Listener::repair`]:
//!
//! - a TCP socket that was shut down listens again after `listen()`; bound
//!   to an explicit port it keeps it, and every holder's copy works again
//!   ([`Repaired::InPlace`]). Bound to port 0 it comes back on a new port
//!   (the kernel released the old one at the shutdown), so it is
//!   [moved](Fault::Moved): a new socket is bound on the old address;
//! - a unix socket is not revived by `listen()` (and `SO_ACCEPTCONN` keeps
//!   reading 1 after a shutdown): the kernel's `sock_diag` tells its
//!   shutdown state and the file it was bound to; one that was shut down,
//!   or whose file was removed or replaced, is bound anew at its path;
//! - a socket bound anew ([`Repaired::Anew`]) must be handed to a new
//!   generation: the running ones hold the broken one.
//!
//! Only stream sockets are checked: a datagram socket has no listening
//! state to lose.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Type};

use super::diag::{UnixDiag, unix_diag};
use super::{Address, BindOptions, ListenError, Listener, ListenerSpec};

/// What is wrong with a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `shutdown(2)` was called on it (by a worker: baton never does): it
    /// takes no connection, for any process that holds it.
    ShutDown,
    /// It listens, but on another address than its own (a TCP socket bound
    /// to port 0 that was shut down and listens again).
    Moved {
        /// Where it listens now.
        now: String,
    },
    /// Its unix socket file is gone: new clients cannot reach it.
    FileGone,
    /// Another file sits at its unix socket's path.
    FileReplaced,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::ShutDown => f.write_str("shut down by a worker"),
            Fault::Moved { now } => write!(f, "listens on {now}, not on its address"),
            Fault::FileGone => f.write_str("its socket file is gone"),
            Fault::FileReplaced => f.write_str("its socket file was replaced"),
        }
    }
}

/// How a listener was repaired.
#[derive(Debug)]
pub enum Repaired {
    /// It listens again at its address: every holder's copy works again.
    InPlace,
    /// A new socket at the same address, to be put in the old one's place
    /// (the same index: fd numbers never shift) and handed to a new
    /// generation; call [`Listener::disown_file`] on the old one.
    Anew(Listener),
}

/// Warned once: a kernel without `sock_diag` for unix sockets.
static NO_DIAG: AtomicBool = AtomicBool::new(false);

impl Listener {
    /// Whether baton checks this listener at all: stream sockets only.
    pub fn is_checked(&self) -> bool {
        self.socket.r#type().is_ok_and(|t| t == Type::STREAM)
    }

    /// What is wrong with it, if anything (`None` also for a listener
    /// that is not [checked](Self::is_checked)).
    pub fn fault(&self) -> Option<Fault> {
        if !self.is_checked() {
            return None;
        }
        match self.socket.domain() {
            Ok(Domain::UNIX) => self.unix_fault(),
            Ok(_) => self.tcp_fault(),
            Err(_) => None,
        }
    }

    fn tcp_fault(&self) -> Option<Fault> {
        if !self.socket.is_listener().unwrap_or(true) {
            return Some(Fault::ShutDown);
        }
        let now = self.socket.local_addr().ok()?.as_socket()?;
        let recorded: SocketAddr = self.local.parse().ok()?;
        (now != recorded).then(|| Fault::Moved {
            now: now.to_string(),
        })
    }

    fn unix_fault(&self) -> Option<Fault> {
        let diag = match socket_inode(self).and_then(unix_diag) {
            Ok(diag) => Some(diag),
            Err(error) => {
                if !NO_DIAG.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "cannot ask the kernel (sock_diag) about unix listeners: a shutdown by a worker goes unnoticed");
                }
                None
            }
        };
        if diag.is_some_and(|d| d.shut_down) {
            return Some(Fault::ShutDown);
        }
        let path = self.path()?;
        let file = match std::fs::symlink_metadata(&path) {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Fault::FileGone),
            Err(_) => return None,
        };
        let bound = diag
            .and_then(|d: UnixDiag| d.file)
            .or_else(|| self.created.as_ref().map(|(_, dev, ino)| (*dev, *ino)))?;
        (file != bound).then_some(Fault::FileReplaced)
    }

    /// The path of a unix socket bound to one.
    fn path(&self) -> Option<PathBuf> {
        match &self.created {
            Some((path, _, _)) => Some(path.clone()),
            None => self.socket.local_addr().ok()?.as_pathname().map(Into::into),
        }
    }

    /// Repair `fault` (as [`fault`](Self::fault) found it); `options` bind
    /// a new socket (and give the backlog of an inherited one).
    pub fn repair(&self, fault: &Fault, options: BindOptions) -> Result<Repaired, ListenError> {
        let in_place = *fault == Fault::ShutDown && self.socket.domain().ok() != Some(Domain::UNIX);
        if in_place {
            let backlog = self.backlog.unwrap_or(options.listen_backlog());
            self.socket
                .listen(backlog)
                .map_err(|source| ListenError::Io {
                    address: self.local.clone(),
                    source,
                })?;
            let now = self.socket.local_addr().ok().and_then(|a| a.as_socket());
            if now.is_some_and(|now| now.to_string() == self.local) {
                return Ok(Repaired::InPlace);
            }
        }
        let spec = ListenerSpec {
            name: self.name.clone(),
            address: self.address()?,
        };
        Listener::bind(&spec, options).map(Repaired::Anew)
    }

    /// The address to bind anew: the one it had.
    fn address(&self) -> Result<Address, ListenError> {
        if self.socket.domain().ok() == Some(Domain::UNIX) {
            return self
                .path()
                .map(Address::Unix)
                .ok_or_else(|| ListenError::Io {
                    address: self.local.clone(),
                    source: io::Error::other("a unix socket without a path cannot be bound anew"),
                });
        }
        let addr: SocketAddr = self.local.parse().map_err(|_| ListenError::Io {
            address: self.local.clone(),
            source: io::Error::other("not a TCP address"),
        })?;
        let dual_stack =
            addr.is_ipv6() && addr.ip().is_unspecified() && !self.socket.only_v6().unwrap_or(true);
        Ok(if dual_stack {
            Address::AllInterfaces(addr.port())
        } else {
            Address::Tcp(addr)
        })
    }

    /// A replacement took this listener's place: dropping it must leave the
    /// socket file alone (the new file may even have the same inode number).
    pub fn disown_file(&mut self) {
        self.created = None;
    }
}

/// The socket's own inode (what `sock_diag` knows it by).
fn socket_inode(listener: &Listener) -> io::Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the buffer for a descriptor we hold.
    if unsafe { libc::fstat(listener.socket.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    Ok(unsafe { stat.assume_init() }.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shutdown(listener: &Listener, how: libc::c_int) {
        // SAFETY: shutdown on a socket the test holds.
        assert_eq!(
            unsafe { libc::shutdown(listener.socket.as_raw_fd(), how) },
            0
        );
    }

    fn bind(spec: &str) -> Listener {
        Listener::bind(
            &ListenerSpec::parse(spec, 0).unwrap(),
            BindOptions::default(),
        )
        .unwrap()
    }

    fn free_port() -> u16 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    }

    #[test]
    fn a_tcp_socket_on_a_fixed_port_is_revived_in_place() {
        for how in [libc::SHUT_RD, libc::SHUT_RDWR] {
            let listener = bind(&format!("127.0.0.1:{}", free_port()));
            assert_eq!(listener.fault(), None);
            shutdown(&listener, how);
            assert_eq!(listener.fault(), Some(Fault::ShutDown));
            let repaired = listener.repair(&Fault::ShutDown, BindOptions::default());
            assert!(matches!(repaired, Ok(Repaired::InPlace)), "{repaired:?}");
            assert_eq!(listener.fault(), None);
            std::net::TcpStream::connect(listener.local_address()).unwrap();
        }
    }

    #[test]
    fn a_tcp_socket_on_port_0_is_bound_anew_on_its_port() {
        let listener = bind("127.0.0.1:0");
        let address = listener.local_address().to_owned();
        shutdown(&listener, libc::SHUT_RD);
        let repaired = listener.repair(&Fault::ShutDown, BindOptions::default());
        let Ok(Repaired::Anew(new)) = repaired else {
            panic!("{repaired:?}");
        };
        assert_eq!(new.local_address(), address);
        assert_eq!(new.fault(), None);
        // The old one now listens elsewhere: moved, should it be checked again.
        assert!(matches!(listener.fault(), Some(Fault::Moved { .. })));
        std::net::TcpStream::connect(&address).unwrap();
    }

    #[test]
    fn a_unix_socket_shut_down_or_unlinked_is_bound_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let spec = format!("unix:{}", path.display());

        let mut listener = bind(&spec);
        assert_eq!(listener.fault(), None);
        shutdown(&listener, libc::SHUT_RD);
        // listen() does not revive it: it must be bound anew.
        assert_eq!(listener.fault(), Some(Fault::ShutDown));
        let Ok(Repaired::Anew(new)) = listener.repair(&Fault::ShutDown, BindOptions::default())
        else {
            panic!("not bound anew");
        };
        listener.disown_file();
        drop(listener);
        assert_eq!(new.fault(), None);
        std::os::unix::net::UnixStream::connect(&path).unwrap();

        std::fs::remove_file(&path).unwrap();
        assert_eq!(new.fault(), Some(Fault::FileGone));
        let Ok(Repaired::Anew(newer)) = new.repair(&Fault::FileGone, BindOptions::default()) else {
            panic!("not bound anew");
        };
        assert_eq!(newer.fault(), None);
        // The replaced one sees a file that is not its own.
        assert_eq!(new.fault(), Some(Fault::FileReplaced));
    }

    #[test]
    fn a_regular_file_in_the_way_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = bind(&format!("unix:{}", path.display()));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "mine").unwrap();
        assert_eq!(listener.fault(), Some(Fault::FileReplaced));
        let error = listener
            .repair(&Fault::FileReplaced, BindOptions::default())
            .unwrap_err();
        assert!(matches!(error, ListenError::NotASocket(_)), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }
}
