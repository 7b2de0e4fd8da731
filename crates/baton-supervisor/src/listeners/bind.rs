//! Binding what baton listens on itself: TCP (one dual-stack socket for
//! `:PORT`), and unix sockets, replacing a stale socket file but never a
//! live one.

use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use super::{Address, ListenError, Listener, ListenerSpec, check_names};

/// The receive buffer baton asks for on a UDP socket. A UDP socket has no
/// accept queue; its receive buffer is what holds datagrams while a new
/// generation starts up beside the old one (both compete for the CPU) or
/// while neither is scheduled on a busy machine. The kernel's default
/// (`net.core.rmem_default`, 208 KiB) holds about 0.1 s of small datagrams
/// at 2 000/s; 4 MiB holds seconds. It is a cap, not an allocation.
pub const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// How to bind.
#[derive(Clone, Copy, Debug)]
pub struct BindOptions {
    /// The accept queue length (the kernel caps it at `net.core.somaxconn`).
    pub backlog: NonZeroU32,
    /// Permissions of unix socket files, when set.
    pub unix_mode: Option<u32>,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            backlog: NonZeroU32::new(1024).expect("not zero"),
            unix_mode: None,
        }
    }
}

impl BindOptions {
    /// The backlog as listen(2) takes it: an `int`, which the kernel caps
    /// at `net.core.somaxconn` anyway.
    pub fn listen_backlog(&self) -> i32 {
        i32::try_from(self.backlog.get()).unwrap_or(i32::MAX)
    }
}

impl Listener {
    /// Bind and listen as the spec says.
    pub fn bind(spec: &ListenerSpec, options: BindOptions) -> Result<Self, ListenError> {
        match &spec.address {
            Address::Tcp(addr) => bind_tcp(&spec.name, *addr, options),
            Address::AllInterfaces(port) => bind_all_interfaces(&spec.name, *port, options),
            Address::Unix(path) => bind_unix(&spec.name, path, options),
            Address::Udp(addr) => bind_udp(&spec.name, *addr),
        }
    }
}

/// Bind every spec, in order; on any failure, the ones bound so far close.
pub fn bind_all(
    specs: &[ListenerSpec],
    options: BindOptions,
) -> Result<Vec<Listener>, ListenError> {
    check_names(specs)?;
    specs
        .iter()
        .map(|spec| Listener::bind(spec, options))
        .collect()
}

fn io_error(address: impl fmt::Display) -> impl FnOnce(io::Error) -> ListenError {
    let address = address.to_string();
    move |source| ListenError::Io { address, source }
}

fn bind_tcp(name: &str, addr: SocketAddr, options: BindOptions) -> Result<Listener, ListenError> {
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(io_error(addr))?;
    finish_tcp(name, socket, addr, options)
}

fn bind_all_interfaces(
    name: &str,
    port: u16,
    options: BindOptions,
) -> Result<Listener, ListenError> {
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match Socket::new(Domain::IPV6, Type::STREAM, None) {
        Ok(socket) => {
            // One socket for both families: IPv4 clients arrive as ::ffff:a.b.c.d.
            socket.set_only_v6(false).map_err(io_error(any6))?;
            finish_tcp(name, socket, any6, options)
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            bind_tcp(name, SocketAddr::from(([0, 0, 0, 0], port)), options)
        }
        Err(e) => Err(io_error(any6)(e)),
    }
}

fn finish_tcp(
    name: &str,
    socket: Socket,
    addr: SocketAddr,
    options: BindOptions,
) -> Result<Listener, ListenError> {
    // So a restarted baton can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true).map_err(io_error(addr))?;
    socket.bind(&addr.into()).map_err(io_error(addr))?;
    socket
        .listen(options.listen_backlog())
        .map_err(io_error(addr))?;
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or_else(|| addr.to_string(), |a| a.to_string());
    Ok(Listener {
        name: name.to_string(),
        socket,
        local,
        created: None,
        inherited: None,
        backlog: Some(options.listen_backlog()),
    })
}

/// A UDP socket is bound, never listens, and has no backlog: every
/// generation reads datagrams from the one receive queue.
fn bind_udp(name: &str, addr: SocketAddr) -> Result<Listener, ListenError> {
    let shown = format!("udp://{addr}");
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, None).map_err(io_error(&shown))?;
    socket.bind(&addr.into()).map_err(io_error(&shown))?;
    enlarge_receive_buffer(&socket);
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(shown, |a| format!("udp://{a}"));
    Ok(Listener {
        name: name.to_string(),
        socket,
        local,
        created: None,
        inherited: None,
        backlog: None,
    })
}

/// Ask for [`UDP_RECEIVE_BUFFER`]: past `net.core.rmem_max` when baton may
/// (root: `SO_RCVBUFFORCE`), else as much as that allows. Failing leaves
/// the kernel's default, which works, only with less slack.
fn enlarge_receive_buffer(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &UDP_RECEIVE_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
    }
}

fn bind_unix(name: &str, path: &Path, options: BindOptions) -> Result<Listener, ListenError> {
    let shown = format!("unix:{}", path.display());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(ListenError::NoDirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    remove_stale_socket(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(io_error(&shown))?;
    let addr = SockAddr::unix(path).map_err(io_error(&shown))?;
    socket.bind(&addr).map_err(io_error(&shown))?;
    let meta = std::fs::symlink_metadata(path).map_err(io_error(&shown))?;
    // From here on the file is ours: a failure below removes it on drop.
    let listener = Listener {
        name: name.to_string(),
        socket,
        local: shown.clone(),
        created: Some((path.to_path_buf(), meta.dev(), meta.ino())),
        inherited: None,
        backlog: Some(options.listen_backlog()),
    };
    if let Some(mode) = options.unix_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_error(&shown))?;
    }
    listener
        .socket
        .listen(options.listen_backlog())
        .map_err(io_error(&shown))?;
    Ok(listener)
}

/// A socket file nobody listens on is left over from a dead process: replace
/// it. A live one, or a file that is not a socket, is never touched.
fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(format!("unix:{}", path.display()))(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::UnixInUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(io_error(format!("unix:{}", path.display())))
        }
        Err(e) => Err(io_error(format!("unix:{}", path.display()))(e)),
    }
}
