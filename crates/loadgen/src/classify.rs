//! Failure kinds, and how an error becomes one.
//!
//! The kind tells *where* a request died, which is what a reload bug
//! looks like from outside: refused means the listening socket was gone,
//! reset or closed means a worker dropped a connection it had accepted,
//! status means a worker answered but badly.

use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::io;
use std::time::Duration;

use hyper::StatusCode;

/// Why a request failed. Ordered as a request proceeds: connect, send and
/// read, answer, time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// The connect was refused (`ECONNREFUSED`): nobody held the listening
    /// socket.
    Refused,
    /// Any other connect error (unix socket path missing, `EADDRNOTAVAIL`,
    /// …).
    ConnectOther,
    /// The connection was reset or the pipe broke while connecting, sending
    /// the request or reading the response (`ECONNRESET`, `EPIPE`,
    /// `ECONNABORTED`).
    Reset,
    /// The connection closed before a complete response: hyper's incomplete
    /// message or canceled request, or an unexpected end of file.
    Closed,
    /// A complete response whose status is not 2xx.
    Status,
    /// The request took longer than the per-request timeout.
    Timeout,
    /// Anything else (a parse error, an unexpected I/O error, …).
    Other,
}

impl FailureKind {
    /// Every kind, in order: for tables and summaries that list them all.
    pub const ALL: [FailureKind; 7] = [
        FailureKind::Refused,
        FailureKind::ConnectOther,
        FailureKind::Reset,
        FailureKind::Closed,
        FailureKind::Status,
        FailureKind::Timeout,
        FailureKind::Other,
    ];

    /// The short lowercase name used by [`fmt::Display`] and summaries.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::ConnectOther => "connect_other",
            FailureKind::Reset => "reset",
            FailureKind::Closed => "closed",
            FailureKind::Status => "status",
            FailureKind::Timeout => "timeout",
            FailureKind::Other => "other",
        }
    }

    /// Position in [`FailureKind::ALL`], for per-kind counter arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One failed request: its kind and the error behind it, kept unformatted
/// because only the first few are ever turned into text.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Connect(io::Error),
    Hyper(hyper::Error),
    Status(StatusCode),
    Timeout(Duration),
}

impl Failure {
    /// A failed connect (TCP or unix). A reset here means the handshake
    /// had completed and the server side dropped the connection before the
    /// client saw it (e.g. a listener closed with connections in its
    /// backlog): that is a dropped connection, not a connect problem.
    pub(crate) fn connect(err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::ConnectionRefused => FailureKind::Refused,
            kind if is_reset(kind) => FailureKind::Reset,
            _ => FailureKind::ConnectOther,
        };
        Failure {
            kind,
            cause: Cause::Connect(err),
        }
    }

    /// An error from hyper while sending the request or reading the
    /// response.
    pub(crate) fn hyper(err: hyper::Error) -> Self {
        Failure {
            kind: classify_hyper(&err),
            cause: Cause::Hyper(err),
        }
    }

    /// A complete response with a status that is not 2xx.
    pub(crate) fn status(status: StatusCode) -> Self {
        Failure {
            kind: FailureKind::Status,
            cause: Cause::Status(status),
        }
    }

    /// The whole request exceeded `limit`.
    pub(crate) fn timeout(limit: Duration) -> Self {
        Failure {
            kind: FailureKind::Timeout,
            cause: Cause::Timeout(limit),
        }
    }

    /// A one-line description with the whole `source()` chain, because
    /// hyper's own message ("error reading a body from connection") rarely
    /// says what the socket did.
    pub(crate) fn describe(&self) -> String {
        let detail = match &self.cause {
            Cause::Connect(err) => format!("connect: {}", chain(err)),
            Cause::Hyper(err) => chain(err),
            Cause::Status(status) => format!("status {status}"),
            Cause::Timeout(limit) => format!("no complete response within {limit:?}"),
        };
        format!("{}: {detail}", self.kind)
    }
}

/// Maps a hyper error to a kind. The socket's own error wins when there is
/// one (a reset often arrives wrapped in "canceled" or "incomplete");
/// otherwise hyper's classification decides.
pub(crate) fn classify_hyper(err: &hyper::Error) -> FailureKind {
    if let Some(io_err) = find_io_error(err) {
        match io_err.kind() {
            kind if is_reset(kind) => return FailureKind::Reset,
            io::ErrorKind::UnexpectedEof => return FailureKind::Closed,
            io::ErrorKind::TimedOut => return FailureKind::Timeout,
            _ => {}
        }
    }
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        FailureKind::Closed
    } else if err.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::Other
    }
}

fn is_reset(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// The first `io::Error` in the chain that starts at `err` itself.
fn find_io_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            return Some(io_err);
        }
        current = e.source();
    }
    None
}

/// `err` and all its sources, joined by ": ".
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let _ = write!(text, ": {e}");
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors() {
        let refused = Failure::connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.kind, FailureKind::Refused);
        assert!(refused.describe().starts_with("refused: connect: "));
        let missing = Failure::connect(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(missing.kind, FailureKind::ConnectOther);
        let reset = Failure::connect(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(reset.kind, FailureKind::Reset);
        let raw = Failure::connect(io::Error::from_raw_os_error(libc_econnrefused()));
        assert_eq!(raw.kind, FailureKind::Refused);
    }

    // ECONNREFUSED on Linux; spelled out to avoid a libc dependency.
    fn libc_econnrefused() -> i32 {
        111
    }

    #[test]
    fn io_errors_are_found_through_sources() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapper")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrapper(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset"));
        let found = find_io_error(&wrapped).expect("io error in chain");
        assert_eq!(found.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(chain(&wrapped), "wrapper: peer reset");
    }

    #[test]
    fn names_are_distinct_and_ordered() {
        let names: std::collections::BTreeSet<_> =
            FailureKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(names.len(), FailureKind::ALL.len());
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn status_and_timeout_describe_themselves() {
        let status = Failure::status(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status.kind, FailureKind::Status);
        assert_eq!(
            status.describe(),
            "status: status 500 Internal Server Error"
        );
        let timeout = Failure::timeout(Duration::from_millis(200));
        assert_eq!(timeout.kind, FailureKind::Timeout);
        assert!(timeout.describe().contains("200ms"));
    }
}
