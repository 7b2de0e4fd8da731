//! systemd's two process protocols, read one way for all of baton: the
//! supervisor (which is socket-activated by systemd and sends it sd_notify
//! messages) and `baton-worker` (which is socket-activated by baton and
//! sends it `READY=1`) both use this crate, so they cannot disagree.
//!
//! Nothing here reads the process environment behind the caller's back:
//! every parser takes a `lookup` function and the caller's pid, so tests
//! pass their own values and never mutate the environment. The `*_from_env`
//! functions are the one-line bindings to the real environment.
//!
//! # Socket activation: `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`
//!
//! [`listen_fds`] follows `sd_listen_fds_with_names(3)`, step by step:
//!
//! 1. `LISTEN_FDS` unset: nothing was passed, an empty list. `LISTEN_PID`
//!    is not looked at.
//! 2. `LISTEN_PID` unset: the descriptors are not addressed to this
//!    process (an ancestor was the addressee and the variables leaked into
//!    our environment): an empty list, so that an unrelated descendant
//!    never grabs descriptors that are not its own.
//! 3. `LISTEN_PID` set but not a pid (empty, not all decimal digits, `0`,
//!    too large): an error, as `sd_listen_fds` returns `-EINVAL`. The
//!    launcher is broken; ignoring it would leave the descriptors open and
//!    unused and make the program bind the same addresses anew.
//! 4. `LISTEN_PID` another process's pid: an empty list (not for us).
//! 5. `LISTEN_PID` is ours: `LISTEN_FDS` must be decimal digits naming a
//!    count from 0 to `i32::MAX - 3` (the last descriptor must still be an
//!    `int`); anything else is an error. `0` gives an empty list (libsystemd
//!    rejects `0`; "nothing passed" is the harmless reading of it).
//! 6. The descriptors are [`LISTEN_FDS_START`] (3), 4, … in order.
//!    `LISTEN_FDNAMES` unset: each is named [`UNKNOWN_NAME`] (`unknown`),
//!    as systemd does. Set: split at every `:` (an empty value is one empty
//!    name), and there must be exactly one name per descriptor, or it is an
//!    error. An empty name becomes `unknown` too: it names nothing, and
//!    baton's names are never empty (`--listen NAME=` needs one, and so
//!    does [`is_fd_name`] for `FDNAME=`). libsystemd hands out `""` here.
//!
//! Every value must be UTF-8, or it is an error. `LISTEN_PIDFDID` (newer
//! systemd's guard against pid reuse) is not read. Nothing here touches a
//! descriptor: taking them (making them close-on-exec, checking they are
//! listening sockets) is the caller's job, since the supervisor and the
//! worker own them differently.
//!
//! # sd_notify: `NOTIFY_SOCKET`
//!
//! [`Notifier`] sends one datagram of newline-separated `KEY=VALUE` lines
//! per message to the socket `NOTIFY_SOCKET` names:
//!
//! - unset or empty: there is no one to tell; [`Notifier::from_lookup`]
//!   gives `None`, and callers treat every message as sent.
//! - `/path`: a unix datagram socket in the file system.
//! - `@name`: a socket in the abstract namespace (the `@` stands for the
//!   leading NUL byte).
//! - anything else (a relative path, `@` alone, systemd's `vsock:` form, a
//!   path too long for `sockaddr_un`): an error.
//!
//! Descriptors ride along with `SCM_RIGHTS` ([`Notifier::send_with_fds`],
//! for `FDSTORE=1`). [`watchdog_interval`] reads `WATCHDOG_USEC` and
//! `WATCHDOG_PID`; [`is_fd_name`] is the rule for `FDNAME=` and the names in
//! `LISTEN_FDNAMES`.

mod activation;
mod notify;

pub use activation::{
    ActivationError, LISTEN_FDS_START, ListenFd, UNKNOWN_NAME, is_fd_name, listen_fds,
    listen_fds_from_env,
};
pub use notify::{Notifier, NotifyError, watchdog_interval};
