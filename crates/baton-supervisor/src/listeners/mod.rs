//! Listener specs and the sockets baton binds once and holds for its life.
//!
//! baton never accepts on these sockets and never changes their file status
//! flags (`O_NONBLOCK` is shared by every process that holds the socket); it
//! only keeps them open, so the kernel queues connections through every
//! reload, and hands copies to each worker at fds 3, 4, …
//!
//! When baton itself is socket-activated (systemd's `.socket` unit, its file
//! descriptor store, `systemd-socket-activate`), it adopts the sockets it
//! inherits instead of binding: [`inherited_from_env`] takes them, and
//! [`resolve`] matches them to the `--listen` specs and binds the rest.
//!
//! One file per concept: `spec.rs` parses `[NAME=]SPEC` into a
//! [`ListenerSpec`], `bind.rs` binds TCP, unix and UDP sockets ([`bind_all`]),
//! `activation.rs` adopts inherited sockets ([`Inherited`]) and
//! [`resolve`]s them against the specs, `health.rs` finds a listener a
//! worker broke ([`Fault`]) and repairs it (`diag.rs` asks the kernel about
//! unix sockets); this file holds the [`Listener`] they all produce and the
//! [`ListenError`] they share.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use socket2::Socket;

mod activation;
mod bind;
mod diag;
mod health;
mod spec;
#[cfg(test)]
mod tests;

pub use activation::{Inherited, Resolved, inherited_from_env, resolve};
pub use bind::{BindOptions, UDP_RECEIVE_BUFFER, bind_all};
pub use health::{Fault, Repaired};
pub use spec::{Address, ListenerSpec, check_names};

/// What went wrong with a listener. Each message names the listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The spec does not parse.
    #[error(
        "invalid listener '{spec}': {reason} (expected [NAME=]SPEC with SPEC one of HOST:PORT, :PORT, [::1]:PORT, tcp://HOST:PORT, unix:/path/to.sock, udp://HOST:PORT)"
    )]
    InvalidSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two listeners share a name.
    #[error("two listeners are named '{0}': give each --listen a distinct NAME=")]
    DuplicateName(String),
    /// The directory of a unix socket does not exist.
    #[error("cannot listen on unix:{path}: directory {dir} does not exist", path = .path.display(), dir = .dir.display())]
    NoDirectory {
        /// The socket path.
        path: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// A live process listens on the unix socket path already.
    #[error("cannot listen on unix:{}: another process is listening on it", .0.display())]
    UnixInUse(PathBuf),
    /// The unix socket path exists and is not a socket.
    #[error("cannot listen on unix:{}: the path exists and is not a socket; remove it or choose another path", .0.display())]
    NotASocket(PathBuf),
    /// `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES` do not make sense.
    #[error("cannot adopt the sockets baton was started with: {0}")]
    BadActivation(String),
    /// An inherited descriptor that baton must use is not a listening
    /// stream socket.
    #[error("cannot use the inherited socket '{name}' (fd {fd}): {reason}")]
    InheritedUnusable {
        /// Its name in `LISTEN_FDNAMES`.
        name: String,
        /// The descriptor it arrived at.
        fd: RawFd,
        /// What it is instead.
        reason: String,
    },
    /// A `--listen` names an inherited socket that listens elsewhere, or is
    /// of another kind.
    #[error(
        "--listen {name}={spec} names the inherited socket '{name}' (fd {fd}), which listens on {actual}: make that --listen say {actual}, or give it another name to bind a new socket (a socket kept in systemd's file descriptor store from an earlier run goes away with `systemctl stop`)"
    )]
    InheritedMismatch {
        /// The name both share.
        name: String,
        /// The address the `--listen` asks for.
        spec: String,
        /// The descriptor the inherited socket arrived at.
        fd: RawFd,
        /// Where the inherited socket listens.
        actual: String,
    },
    /// No `--listen` was given and no socket was inherited.
    #[error(
        "nothing to listen on: give --listen, or start baton with sockets (LISTEN_FDS, e.g. from a systemd .socket unit)"
    )]
    NothingToListenOn,
    /// A system call failed.
    #[error("cannot listen on {address}: {source}")]
    Io {
        /// The address.
        address: String,
        /// The error.
        source: io::Error,
    },
}

/// A bound, listening socket that baton holds.
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: Socket,
    local: String,
    /// The socket file baton created, and its identity, to remove on drop.
    /// Always `None` for an inherited socket: its file is not baton's.
    created: Option<(PathBuf, u64, u64)>,
    /// Adopted from `LISTEN_FDS` rather than bound by baton.
    inherited: Option<RawFd>,
    /// The backlog baton passed to `listen`; `None` when it did not.
    backlog: Option<i32>,
}

impl Listener {
    /// Its name, as workers see it in `LISTEN_FDNAMES`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it really listens on (the port chosen for port 0).
    pub fn local_address(&self) -> &str {
        &self.local
    }

    /// Whether baton adopted it from `LISTEN_FDS` instead of binding it.
    /// baton never removes the file of an inherited unix socket, and need
    /// not push it into systemd's file descriptor store (it came from there
    /// or from a `.socket` unit, which both keep it).
    pub fn is_inherited(&self) -> bool {
        self.inherited.is_some()
    }

    /// The descriptor number an inherited socket arrived at (3, 4, …).
    pub fn inherited_fd(&self) -> Option<RawFd> {
        self.inherited
    }

    /// The accept queue length baton asked for when it bound the socket
    /// (the kernel caps it at `net.core.somaxconn`). `None` for an
    /// inherited socket: whoever bound it chose (`Backlog=` in a `.socket`
    /// unit), and baton never calls `listen` on it again; `None` for a UDP
    /// socket, which has no accept queue.
    pub fn backlog(&self) -> Option<i32> {
        self.backlog
    }

    /// A stream socket's local address, which every connection accepted
    /// on it shares; `None` for a datagram socket.
    pub fn stream_address(&self) -> Option<socket2::SockAddr> {
        let stream = self.socket.r#type().ok()? == socket2::Type::STREAM;
        stream.then(|| self.socket.local_addr().ok()).flatten()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the file only if it is still the one baton created: a newer
        // baton may have replaced it.
        if let Some((path, dev, ino)) = &self.created {
            let ours =
                std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
