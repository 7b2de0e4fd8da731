//! Taking the inherited descriptors: check that each one is a listening
//! stream socket, mark it close-on-exec and wrap it in a std listener.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Error;
use crate::env;

/// Set once the descriptors have an owner in this process.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// One inherited listening socket, as a std listener (blocking mode left as
/// inherited; see [`Listener::into_tokio`]).
#[derive(Debug)]
pub enum Listener {
    /// An `AF_INET` or `AF_INET6` stream socket.
    Tcp(TcpListener),
    /// An `AF_UNIX` stream socket.
    Unix(UnixListener),
}

/// An inherited socket with the name it was handed over under.
#[derive(Debug)]
pub struct NamedListener {
    /// The name: from `LISTEN_FDNAMES` (`unknown` when unset or empty), or the
    /// address part of a `SERVER_STARTER_PORT` entry.
    pub name: String,
    /// The descriptor number it arrived at.
    pub fd: RawFd,
    /// The socket.
    pub listener: Listener,
}

/// Takes the listening sockets handed over by the parent process.
///
/// The systemd socket-activation protocol is read strictly, as
/// `sd_listen_fds(3)` does and [`baton_sd::listen_fds`] documents (the
/// supervisor reads it the same way): the descriptors `3 .. 3+LISTEN_FDS`
/// are taken only when `LISTEN_PID` is set and equals this process's pid;
/// unset or another pid (the variables were inherited from an ancestor
/// that was the addressee) gives an empty result, and a `LISTEN_PID` that
/// is no pid at all is an error. `LISTEN_FDNAMES`, when set, must name
/// every descriptor; a name that is unset or empty is `unknown`. When
/// `LISTEN_FDS` is absent, Server::Starter's
/// `SERVER_STARTER_PORT` (`host:port=fd;path=fd;...`) is read instead. With
/// neither, the result is empty: bind a socket yourself then.
///
/// Every descriptor must be a *listening* stream socket (`SO_ACCEPTCONN`)
/// of family `AF_INET`, `AF_INET6` (TCP) or `AF_UNIX`, or nothing is taken.
/// Each one is marked `FD_CLOEXEC`, as `sd_listen_fds` does, so that the
/// programs this process runs do not keep the port open.
///
/// The `LISTEN_*` variables are **not** removed: changing the environment
/// of a process races with every thread reading it (and is `unsafe` in
/// edition 2024). Strict `LISTEN_PID` checking already keeps children from
/// taking the descriptors, and they do not inherit them anyway (close on
/// exec).
///
/// The descriptors are owned by the returned listeners; a second call
/// after a successful one returns [`Error::AlreadyTaken`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// for inherited in baton_worker::listeners()? {
///     eprintln!("fd {} is {:?}: {}", inherited.fd, inherited.name,
///         inherited.listener.describe());
/// }
/// # Ok(()) }
/// ```
pub fn listeners() -> Result<Vec<NamedListener>, Error> {
    let plan = env::inherited_sockets(|name| std::env::var_os(name), std::process::id())?;
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Error::AlreadyTaken);
    }
    take(plan).inspect_err(|_| TAKEN.store(false, Ordering::SeqCst))
}

/// What kind of listening socket a descriptor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp,
    Unix,
}

/// Checks every descriptor, then takes them all (or none).
pub(crate) fn take(plan: Vec<(RawFd, String)>) -> Result<Vec<NamedListener>, Error> {
    let kinds = plan
        .iter()
        .map(|(fd, name)| inspect(*fd, name))
        .collect::<Result<Vec<Kind>, Error>>()?;
    for (fd, name) in &plan {
        set_cloexec(*fd).map_err(|source| Error::Syscall {
            call: "fcntl(F_SETFD)",
            fd: *fd,
            name: name.clone(),
            source,
        })?;
    }
    Ok(plan
        .into_iter()
        .zip(kinds)
        .map(|((fd, name), kind)| {
            let listener = match kind {
                // SAFETY: `fd` is an open listening TCP socket (checked by
                // `inspect`), and nothing else in this process owns it: the
                // TAKEN flag makes this the only call that takes it.
                Kind::Tcp => Listener::Tcp(unsafe { TcpListener::from_raw_fd(fd) }),
                // SAFETY: as above, for an AF_UNIX listening socket.
                Kind::Unix => Listener::Unix(unsafe { UnixListener::from_raw_fd(fd) }),
            };
            NamedListener { name, fd, listener }
        })
        .collect())
}

/// Checks that `fd` is an open, listening stream socket we can serve.
pub(crate) fn inspect(fd: RawFd, name: &str) -> Result<Kind, Error> {
    let syscall = |call: &'static str, source: io::Error| Error::Syscall {
        call,
        fd,
        name: name.to_owned(),
        source,
    };
    // SAFETY: F_GETFD only reads the descriptor flags; an fd that is not
    // open gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EBADF) {
            Error::NotOpen {
                fd,
                name: name.to_owned(),
            }
        } else {
            syscall("fcntl(F_GETFD)", err)
        });
    }
    let sock_type = match getsockopt_int(fd, libc::SO_TYPE) {
        Ok(t) => t,
        Err(err) if err.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(Error::NotASocket {
                fd,
                name: name.to_owned(),
            });
        }
        Err(err) => return Err(syscall("getsockopt(SO_TYPE)", err)),
    };
    let domain =
        getsockopt_int(fd, libc::SO_DOMAIN).map_err(|e| syscall("getsockopt(SO_DOMAIN)", e))?;
    let protocol =
        getsockopt_int(fd, libc::SO_PROTOCOL).map_err(|e| syscall("getsockopt(SO_PROTOCOL)", e))?;
    let kind = match (domain, sock_type, protocol) {
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_TCP) => Kind::Tcp,
        (libc::AF_UNIX, libc::SOCK_STREAM, _) => Kind::Unix,
        _ => {
            return Err(Error::Unsupported {
                fd,
                name: name.to_owned(),
                what: format!("family {domain}, type {sock_type}, protocol {protocol}"),
            });
        }
    };
    let listening = getsockopt_int(fd, libc::SO_ACCEPTCONN)
        .map_err(|e| syscall("getsockopt(SO_ACCEPTCONN)", e))?;
    if listening == 0 {
        return Err(Error::NotListening {
            fd,
            name: name.to_owned(),
        });
    }
    Ok(kind)
}

fn getsockopt_int(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the
    // size of `value`; all four options queried here are ints.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and write this descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Listener {
    /// A human-readable address: `127.0.0.1:8080`, `unix:/run/app.sock`,
    /// `unix:@abstract` or `unix:(unnamed)`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => addr.to_string(),
                Err(e) => format!("tcp:(unknown: {e})"),
            },
            Listener::Unix(l) => match l.local_addr() {
                Ok(addr) => describe_unix(&addr),
                Err(e) => format!("unix:(unknown: {e})"),
            },
        }
    }

    /// The TCP address, if this is a TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// Converts into a tokio listener, for [`http::serve`](crate::http::serve).
    ///
    /// Must be called inside a tokio runtime. This sets `O_NONBLOCK`, which
    /// is a property of the socket shared with every process holding it
    /// (baton and the other generations); they must all be event-driven,
    /// as baton is.
    pub fn into_tokio(self) -> io::Result<TokioListener> {
        match self {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l).map(TokioListener::Tcp)
            }
            Listener::Unix(l) => {
                l.set_nonblocking(true)?;
                tokio::net::UnixListener::from_std(l).map(TokioListener::Unix)
            }
        }
    }
}

fn describe_unix(addr: &std::os::unix::net::SocketAddr) -> String {
    use std::os::linux::net::SocketAddrExt;
    if let Some(path) = addr.as_pathname() {
        format!("unix:{}", path.display())
    } else if let Some(name) = addr.as_abstract_name() {
        format!("unix:@{}", String::from_utf8_lossy(name))
    } else {
        "unix:(unnamed)".to_owned()
    }
}

/// A tokio listener of either kind, accepted by
/// [`http::serve`](crate::http::serve).
#[derive(Debug)]
pub enum TokioListener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix domain stream socket.
    Unix(tokio::net::UnixListener),
}

impl TokioListener {
    /// Accepts one connection. TCP connections get `TCP_NODELAY`.
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            TokioListener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                // Best effort: a response should not wait for Nagle.
                let _ = stream.set_nodelay(true);
                Ok(Stream::Tcp(stream))
            }
            TokioListener::Unix(l) => {
                let (stream, _) = l.accept().await?;
                Ok(Stream::Unix(stream))
            }
        }
    }
}

/// A connection accepted by a [`TokioListener`].
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Unix domain stream socket.
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::{AsRawFd, IntoRawFd};

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: reads the flags of an fd owned by the test.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0);
        flags & libc::FD_CLOEXEC != 0
    }

    fn clear_cloexec(fd: RawFd) {
        // SAFETY: clears the flag of an fd owned by the test.
        assert!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0);
    }

    #[test]
    fn listening_sockets_are_recognised() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(inspect(tcp.as_raw_fd(), "t").unwrap(), Kind::Tcp);
        let tcp6 = TcpListener::bind("[::1]:0");
        if let Ok(tcp6) = tcp6 {
            assert_eq!(inspect(tcp6.as_raw_fd(), "t6").unwrap(), Kind::Tcp);
        }
        let dir = tempfile::tempdir().unwrap();
        let unix = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(inspect(unix.as_raw_fd(), "u").unwrap(), Kind::Unix);
    }

    #[test]
    fn other_descriptors_are_refused() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            inspect(udp.as_raw_fd(), "udp"),
            Err(Error::Unsupported { .. })
        ));
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(
            inspect(file.as_raw_fd(), "file"),
            Err(Error::NotASocket { .. })
        ));
        // A connected (not listening) stream socket.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let err = inspect(client.as_raw_fd(), "conn").unwrap_err();
        assert!(matches!(err, Error::NotListening { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "fd {} (conn) is a socket but not a listening one",
                client.as_raw_fd()
            )
        );
        // A descriptor that is not open. Not one closed just now: another
        // test thread may be handed the same number in between. A number
        // at the soft RLIMIT_NOFILE is one the kernel never hands out.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let fd = RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX);
        assert!(matches!(inspect(fd, "gone"), Err(Error::NotOpen { .. })));
    }

    #[test]
    fn take_sets_cloexec_and_wraps() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let fd = tcp.into_raw_fd();
        clear_cloexec(fd);
        let taken = take(vec![(fd, "http".to_owned())]).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].name, "http");
        assert_eq!(taken[0].fd, fd);
        assert!(cloexec(fd));
        assert_eq!(taken[0].listener.tcp_addr(), Some(addr));
        assert_eq!(taken[0].listener.describe(), addr.to_string());
    }

    #[test]
    fn take_is_all_or_nothing() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        clear_cloexec(tcp.as_raw_fd());
        let file = tempfile::tempfile().unwrap();
        let plan = vec![
            (tcp.as_raw_fd(), "good".to_owned()),
            (file.as_raw_fd(), "bad".to_owned()),
        ];
        assert!(matches!(take(plan), Err(Error::NotASocket { .. })));
        // The good one was not touched.
        assert!(!cloexec(tcp.as_raw_fd()));
    }
}
