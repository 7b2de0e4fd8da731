//! The error type of the crate.

use std::io;
use std::os::fd::RawFd;

/// What went wrong in [`listeners`](crate::listeners),
/// [`notify`](crate::notify) or [`stop_signal`](crate::stop_signal).
///
/// When [`listeners`](crate::listeners) returns an error, no descriptor has
/// been taken or closed: they are all still open, and a later call may try
/// again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`listeners`](crate::listeners) was already called in this process.
    /// A descriptor can have only one owner: a second owner would close it
    /// under the first one's feet.
    #[error("the inherited sockets were already taken by an earlier call to listeners()")]
    AlreadyTaken,

    /// A hand-over variable (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`,
    /// `SERVER_STARTER_PORT`) does not follow its protocol.
    #[error(transparent)]
    Handover(#[from] baton_sd::ActivationError),

    /// A descriptor that should be a socket is not open at all.
    #[error("fd {fd} ({name}) is not open")]
    NotOpen {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
    },

    /// A descriptor that should be a socket is something else.
    #[error("fd {fd} ({name}) is not a socket")]
    NotASocket {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
    },

    /// A socket that is not listening (e.g. an accepted connection).
    #[error("fd {fd} ({name}) is a socket but not a listening one")]
    NotListening {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
    },

    /// A listening socket of a kind this crate does not serve.
    #[error("fd {fd} ({name}) is an unsupported socket: {what}")]
    Unsupported {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// Family and type, e.g. `family 16, type 2`.
        what: String,
    },

    /// A system call failed while inspecting a descriptor.
    #[error("{call} on fd {fd} ({name}) failed: {source}")]
    Syscall {
        /// The call, e.g. `getsockname`.
        call: &'static str,
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// A message could not be sent to `NOTIFY_SOCKET`.
    #[error("sending {state:?} to NOTIFY_SOCKET={socket:?} failed: {source}")]
    Notify {
        /// The value of `NOTIFY_SOCKET`.
        socket: String,
        /// The message, e.g. `READY=1`.
        state: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// A signal handler could not be installed.
    #[error("installing the handler for {signal} failed: {source}")]
    Signal {
        /// The signal, e.g. `SIGTERM`.
        signal: &'static str,
        /// What tokio said.
        #[source]
        source: io::Error,
    },
}
