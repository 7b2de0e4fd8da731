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

use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, SockAddr, Socket, Type};

/// What went wrong with a listener. Each message names the listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The spec does not parse.
    #[error(
        "invalid listener '{spec}': {reason} (expected [NAME=]SPEC with SPEC one of HOST:PORT, :PORT, [::1]:PORT, tcp://HOST:PORT, unix:/path/to.sock)"
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

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// One TCP address.
    Tcp(SocketAddr),
    /// `:PORT`: every interface, IPv6 and IPv4 on one dual-stack socket.
    AllInterfaces(u16),
    /// A unix stream socket at this path.
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::AllInterfaces(port) => write!(f, ":{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("the unix socket path is empty".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let hostport = spec.strip_prefix("tcp://").unwrap_or(spec);
        if let Some(port) = hostport.strip_prefix(':') {
            return parse_port(port).map(Address::AllInterfaces);
        }
        if let Ok(addr) = hostport.parse::<SocketAddr>() {
            return Ok(Address::Tcp(addr));
        }
        let Some((host, port)) = hostport.rsplit_once(':') else {
            return Err("no port".into());
        };
        let port = parse_port(port)?;
        match host {
            "localhost" => Ok(Address::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))),
            _ => Err(format!(
                "'{host}' is not an IP address (use 127.0.0.1, [::1], 0.0.0.0 or :PORT)"
            )),
        }
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse()
        .map_err(|_| format!("'{port}' is not a port number (0-65535)"))
}

/// A listener as asked for: a name (for `LISTEN_FDNAMES`) and an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    /// The name workers see in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where to listen.
    pub address: Address,
}

impl ListenerSpec {
    /// Parse `[NAME=]SPEC`; `index` gives the default name `listenN`.
    pub fn parse(spec: &str, index: usize) -> Result<Self, ListenError> {
        let invalid = |reason: String| ListenError::InvalidSpec {
            spec: spec.to_string(),
            reason,
        };
        let (name, address) = match spec.split_once('=') {
            // A path may contain '=', a name never contains ':' or '/'.
            Some((name, rest)) if is_name(name) => (name.to_string(), rest),
            Some((name, _)) if !name.contains([':', '/']) => {
                return Err(invalid(format!(
                    "the name '{name}' may hold only letters, digits, '.', '_' and '-'"
                )));
            }
            _ => (format!("listen{index}"), spec),
        };
        let address = address.parse().map_err(invalid)?;
        Ok(ListenerSpec { name, address })
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Check that no two specs share a name.
pub fn check_names(specs: &[ListenerSpec]) -> Result<(), ListenError> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(ListenError::DuplicateName(spec.name.clone()));
        }
    }
    Ok(())
}

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
}

impl Listener {
    /// Bind and listen as the spec says.
    pub fn bind(spec: &ListenerSpec, options: BindOptions) -> Result<Self, ListenError> {
        match &spec.address {
            Address::Tcp(addr) => bind_tcp(&spec.name, *addr, options),
            Address::AllInterfaces(port) => bind_all_interfaces(&spec.name, *port, options),
            Address::Unix(path) => bind_unix(&spec.name, path, options),
        }
    }

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

    fn adopt(inherited: Inherited, name: &str) -> Self {
        Listener {
            name: name.to_string(),
            socket: inherited.socket,
            local: inherited.local,
            created: None,
            inherited: Some(inherited.fd),
        }
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
    })
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

/// A socket baton was started with (`LISTEN_FDS`), from a systemd `.socket`
/// unit, systemd's file descriptor store, or `systemd-socket-activate`.
#[derive(Debug)]
pub struct Inherited {
    name: String,
    fd: RawFd,
    socket: Socket,
    kind: Kind,
    local: String,
}

/// What an inherited descriptor turned out to be.
#[derive(Debug)]
enum Kind {
    /// A listening TCP socket; `dual_stack` for `[::]` that takes IPv4 too.
    Tcp { addr: SocketAddr, dual_stack: bool },
    /// A listening unix stream socket, with its path if it has one.
    Unix(Option<PathBuf>),
    /// Anything baton cannot hand to workers as a listener, and why.
    Unusable(String),
}

impl Inherited {
    /// Its name in `LISTEN_FDNAMES` (`unknown` when none was given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor it arrived at (3, 4, …).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Where it listens (`127.0.0.1:8080`, `unix:/run/app.sock`, `unix:@name`),
    /// or what it is when it is not a listening stream socket.
    pub fn local_address(&self) -> &str {
        &self.local
    }

    /// Whether baton can hand it to workers: a listening TCP or unix stream socket.
    pub fn is_listening_stream(&self) -> bool {
        !matches!(self.kind, Kind::Unusable(_))
    }

    /// Look at a descriptor baton owns from now on.
    fn inspect(fd: OwnedFd, number: RawFd, name: String) -> Self {
        let socket = Socket::from(fd);
        let (kind, local) = match classify(&socket) {
            Ok(kind) => {
                let local = match &kind {
                    Kind::Tcp { addr, .. } => addr.to_string(),
                    Kind::Unix(Some(path)) => format!("unix:{}", path.display()),
                    Kind::Unix(None) => unix_name(&socket),
                    Kind::Unusable(reason) => reason.clone(),
                };
                (kind, local)
            }
            Err(e) => (Kind::Unusable(e.to_string()), e.to_string()),
        };
        Inherited {
            name,
            fd: number,
            socket,
            kind,
            local,
        }
    }

    fn unusable(&self) -> Option<ListenError> {
        match &self.kind {
            Kind::Unusable(reason) => Some(ListenError::InheritedUnusable {
                name: self.name.clone(),
                fd: self.fd,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// Whether it is what `address` asks for. A spec that names this
    /// socket (`by_name`) with port 0 matches any port; matched by address
    /// alone, port 0 matches nothing (it asks for a new, free port). `:PORT`
    /// matches a socket on every interface (`[::]` or `0.0.0.0`), and
    /// `0.0.0.0:PORT` a dual-stack `[::]:PORT`.
    fn matches(&self, address: &Address, by_name: bool) -> bool {
        let port_ok = |want: u16, have: u16| want == have || (by_name && want == 0);
        match (&self.kind, address) {
            (Kind::Tcp { addr, dual_stack }, Address::Tcp(want)) => {
                let ip = want.ip().to_canonical() == addr.ip().to_canonical()
                    || (want.ip().is_unspecified()
                        && want.is_ipv4()
                        && addr.ip().is_unspecified()
                        && *dual_stack);
                ip && port_ok(want.port(), addr.port())
            }
            (Kind::Tcp { addr, .. }, Address::AllInterfaces(port)) => {
                addr.ip().is_unspecified() && port_ok(*port, addr.port())
            }
            (Kind::Unix(Some(have)), Address::Unix(want)) => same_path(have, want),
            _ => false,
        }
    }
}

fn classify(socket: &Socket) -> io::Result<Kind> {
    let ty = match socket.r#type() {
        Ok(ty) => ty,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Ok(Kind::Unusable("not a socket".into()));
        }
        Err(e) => return Err(e),
    };
    if ty != Type::STREAM {
        return Ok(Kind::Unusable(
            "not a stream socket (datagram and sequential-packet sockets cannot be listeners)"
                .into(),
        ));
    }
    if !socket.is_listener()? {
        return Ok(Kind::Unusable(
            "a stream socket that does not listen (with a .socket unit, set Accept=no)".into(),
        ));
    }
    let domain = socket.domain()?;
    let local = socket.local_addr()?;
    if domain == Domain::UNIX {
        return Ok(Kind::Unix(local.as_pathname().map(Path::to_path_buf)));
    }
    match local.as_socket() {
        Some(addr) if domain == Domain::IPV4 || domain == Domain::IPV6 => {
            let dual_stack = addr.is_ipv6() && !socket.only_v6()?;
            Ok(Kind::Tcp { addr, dual_stack })
        }
        _ => Ok(Kind::Unusable(format!(
            "a listening socket of a family baton does not hand out ({domain:?})"
        ))),
    }
}

fn unix_name(socket: &Socket) -> String {
    match socket.local_addr() {
        Ok(addr) => match addr.as_abstract_namespace() {
            Some(name) => format!("unix:@{}", String::from_utf8_lossy(name)),
            None => "unix:(unnamed)".into(),
        },
        Err(_) => "unix:(unknown)".into(),
    }
}

/// Whether two paths name the same socket file: equal once made absolute,
/// or the same inode.
fn same_path(have: &Path, want: &Path) -> bool {
    let absolute = |p: &Path| match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p),
        _ => p.to_path_buf(),
    };
    if absolute(have) == absolute(want) {
        return true;
    }
    match (std::fs::symlink_metadata(have), std::fs::metadata(want)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The first descriptor of socket activation, `SD_LISTEN_FDS_START`.
const LISTEN_FDS_START: RawFd = 3;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Adopt the sockets baton was started with, the way `sd_listen_fds`
/// does: when `LISTEN_PID` is baton's pid, the `LISTEN_FDS` descriptors
/// from 3 on become baton's, named by `LISTEN_FDNAMES` (`unknown` when
/// unset), each made close-on-exec at once so that no build step or
/// daemon of it inherits a listener. An empty list when baton was not
/// socket-activated (or `LISTEN_PID` is another process's). Call it once,
/// early in `main`; a second call returns an empty list, since the
/// descriptors are taken.
///
/// It does not check what each descriptor is: [`resolve`] does, for those
/// it uses. baton's environment keeps the variables; `spawn` leaves them
/// out of every worker's.
pub fn inherited_from_env() -> Result<Vec<Inherited>, ListenError> {
    let var = |name| std::env::var(name).ok();
    let plan = activation_plan(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    if plan.is_empty() || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut inherited = Vec::with_capacity(plan.len());
    for (fd, name) in plan {
        // SAFETY: F_SETFD on a descriptor number has no memory effects; a
        // closed one fails with EBADF, which is reported.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            let error = io::Error::last_os_error();
            return Err(ListenError::BadActivation(format!(
                "LISTEN_FDS says fd {fd} ('{name}') was passed, but it is not open: {error}"
            )));
        }
        // SAFETY: socket activation hands fds 3..3+LISTEN_FDS to this
        // process and nothing else in it owns them; TAKEN makes sure they
        // are taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        inherited.push(Inherited::inspect(owned, fd, name));
    }
    Ok(inherited)
}

/// Which descriptors to take, with their names, from the three variables
/// and baton's pid. Empty unless `LISTEN_PID` is `pid` and `LISTEN_FDS` > 0.
fn activation_plan(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Vec<(RawFd, String)>, ListenError> {
    let bad = |what: String| Err(ListenError::BadActivation(what));
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    if listen_pid.is_empty() || listen_fds.is_empty() {
        return Ok(Vec::new());
    }
    let Ok(listen_pid) = listen_pid.parse::<u32>() else {
        return bad(format!("LISTEN_PID='{listen_pid}' is not a pid"));
    };
    if listen_pid != pid {
        // Meant for another process (baton's parent, say): not ours.
        return Ok(Vec::new());
    }
    let count = match listen_fds.parse::<RawFd>() {
        Ok(n) if (0..=RawFd::MAX - LISTEN_FDS_START).contains(&n) => n,
        _ => return bad(format!("LISTEN_FDS='{listen_fds}' is not a count")),
    };
    let names: Vec<String> = match listen_fdnames {
        None => vec!["unknown".into(); count as usize],
        Some(names) => {
            let names: Vec<String> = names.split(':').map(str::to_string).collect();
            if names.len() != count as usize {
                return bad(format!(
                    "LISTEN_FDS={count} but LISTEN_FDNAMES has {} names",
                    names.len()
                ));
            }
            names
                .into_iter()
                .map(|n| if n.is_empty() { "unknown".into() } else { n })
                .collect()
        }
    };
    Ok((LISTEN_FDS_START..)
        .zip(names)
        .take(count as usize)
        .collect())
}

/// The listeners baton serves on, in the order workers get them, and the
/// inherited sockets no `--listen` asked for.
#[derive(Debug)]
pub struct Resolved {
    /// Every listener, in `--listen` order (inherited order without `--listen`).
    pub listeners: Vec<Listener>,
    /// Inherited sockets that no `--listen` matched; dropping them closes
    /// baton's copy (log them first).
    pub unused: Vec<Inherited>,
}

/// Turn the `--listen` specs and the inherited sockets into listeners.
///
/// Without specs, every inherited socket is used, under its inherited
/// name, and each must be a listening TCP or unix stream socket. With
/// specs, each spec in order takes the inherited socket of the same name
/// (which must be of the same kind and at the same address, or it is an
/// error), else an unused inherited socket at its address (the spec's name
/// wins), else a new socket is bound as [`bind_all`] does. `options` apply
/// only to what baton binds: an inherited socket keeps its backlog and mode.
pub fn resolve(
    specs: &[ListenerSpec],
    inherited: Vec<Inherited>,
    options: BindOptions,
) -> Result<Resolved, ListenError> {
    check_names(specs)?;
    if specs.is_empty() {
        if inherited.is_empty() {
            return Err(ListenError::NothingToListenOn);
        }
        if let Some(error) = inherited.iter().find_map(Inherited::unusable) {
            return Err(error);
        }
        let listeners = inherited
            .into_iter()
            .map(|i| {
                let name = i.name.clone();
                Listener::adopt(i, &name)
            })
            .collect();
        return Ok(Resolved {
            listeners,
            unused: Vec::new(),
        });
    }
    let mut pool: Vec<Option<Inherited>> = inherited.into_iter().map(Some).collect();
    let mut listeners = Vec::with_capacity(specs.len());
    for spec in specs {
        let named: Vec<usize> = (0..pool.len())
            .filter(|&i| pool[i].as_ref().is_some_and(|s| s.name == spec.name))
            .collect();
        let found = named.iter().copied().find(|&i| {
            pool[i]
                .as_ref()
                .is_some_and(|s| s.matches(&spec.address, true))
        });
        let chosen = match (found, named.first()) {
            (Some(i), _) => Some(i),
            (None, Some(&i)) => {
                let other = pool[i].as_ref().expect("named entries are unused");
                return Err(other
                    .unusable()
                    .unwrap_or_else(|| ListenError::InheritedMismatch {
                        name: spec.name.clone(),
                        spec: spec.address.to_string(),
                        fd: other.fd,
                        actual: other.local.clone(),
                    }));
            }
            (None, None) => (0..pool.len()).find(|&i| {
                pool[i]
                    .as_ref()
                    .is_some_and(|s| s.matches(&spec.address, false))
            }),
        };
        let listener = match chosen.and_then(|i| pool[i].take()) {
            Some(inherited) => Listener::adopt(inherited, &spec.name),
            None => Listener::bind(spec, options)?,
        };
        listeners.push(listener);
    }
    Ok(Resolved {
        listeners,
        unused: pool.into_iter().flatten().collect(),
    })
}

/// Test helpers: inherited sockets from descriptors the test owns.
#[cfg(test)]
fn inherit(fd: impl Into<OwnedFd>, number: RawFd, name: &str) -> Inherited {
    Inherited::inspect(fd.into(), number, name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<ListenerSpec, ListenError> {
        ListenerSpec::parse(spec, 0)
    }

    fn tcp(s: &str) -> Address {
        Address::Tcp(s.parse().unwrap())
    }

    #[test]
    fn specs_parse() {
        let cases = [
            ("127.0.0.1:8080", "listen0", tcp("127.0.0.1:8080")),
            ("http=127.0.0.1:0", "http", tcp("127.0.0.1:0")),
            ("tcp://0.0.0.0:80", "listen0", tcp("0.0.0.0:80")),
            ("admin=tcp://[::1]:9000", "admin", tcp("[::1]:9000")),
            ("[::1]:9000", "listen0", tcp("[::1]:9000")),
            (":8080", "listen0", Address::AllInterfaces(8080)),
            ("web=:0", "web", Address::AllInterfaces(0)),
            ("localhost:81", "listen0", tcp("127.0.0.1:81")),
            (
                "unix:/run/app.sock",
                "listen0",
                Address::Unix("/run/app.sock".into()),
            ),
            ("api=unix:rel.sock", "api", Address::Unix("rel.sock".into())),
            (
                "unix:/tmp/a=b.sock",
                "listen0",
                Address::Unix("/tmp/a=b.sock".into()),
            ),
        ];
        for (spec, name, address) in cases {
            let parsed = parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(parsed.name, name, "{spec}");
            assert_eq!(parsed.address, address, "{spec}");
        }
    }

    #[test]
    fn the_default_name_counts_listeners() {
        assert_eq!(ListenerSpec::parse(":1", 3).unwrap().name, "listen3");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("8080", "no port"),
            (":http", "'http' is not a port number"),
            ("127.0.0.1:70000", "'70000' is not a port number"),
            ("example.com:80", "'example.com' is not an IP address"),
            ("unix:", "path is empty"),
            ("my name=:80", "may hold only"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains(&format!("'{spec}'")), "{spec}: {err}");
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let specs = [parse("a=:1").unwrap(), parse("a=:2").unwrap()];
        assert!(matches!(check_names(&specs), Err(ListenError::DuplicateName(n)) if n == "a"));
    }

    #[test]
    fn binds_port_zero_and_reports_the_real_port() {
        let l = Listener::bind(&parse("t=127.0.0.1:0").unwrap(), BindOptions::default()).unwrap();
        let addr: SocketAddr = l.local_address().parse().unwrap();
        assert_ne!(addr.port(), 0);
        // The socket really listens: a connection is queued without accept.
        std::net::TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = parse(&taken.local_addr().unwrap().to_string()).unwrap();
        let err = Listener::bind(&spec, BindOptions::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot listen on 127.0.0.1:"),
            "{err}"
        );
    }

    #[test]
    fn unix_sockets_replace_stale_files_and_remove_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let spec = parse(&format!("unix:{}", path.display())).unwrap();
        {
            // A stale file: bound, never listening, closed.
            let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
            drop(stale);
        }
        assert!(path.exists());
        let options = BindOptions {
            unix_mode: Some(0o660),
            ..BindOptions::default()
        };
        let l = Listener::bind(&spec, options).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        // A live one is refused.
        let err = Listener::bind(&spec, BindOptions::default()).unwrap_err();
        assert!(matches!(err, ListenError::UnixInUse(_)), "{err}");
        drop(l);
        assert!(!path.exists(), "baton removes the file it created");
    }

    #[test]
    fn unix_socket_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/s.sock");
        let err = Listener::bind(
            &parse(&format!("unix:{}", missing.display())).unwrap(),
            BindOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");

        let file = dir.path().join("plain");
        std::fs::write(&file, "keep me").unwrap();
        let err = Listener::bind(
            &parse(&format!("unix:{}", file.display())).unwrap(),
            BindOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ListenError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    // ---- inherited sockets (socket activation of baton itself) ----

    fn tcp_listener() -> (std::net::TcpListener, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    #[test]
    fn activation_plan_follows_sd_listen_fds() {
        let plan = |pid, fds, names| activation_plan(pid, fds, names, 42);
        assert!(plan(None, None, None).unwrap().is_empty());
        assert!(plan(Some("42"), None, None).unwrap().is_empty());
        // LISTEN_PID is required, as sd_listen_fds(3) wants.
        assert!(plan(None, Some("2"), None).unwrap().is_empty());
        // Meant for another process.
        assert!(plan(Some("41"), Some("2"), None).unwrap().is_empty());
        assert!(plan(Some("42"), Some("0"), None).unwrap().is_empty());
        assert_eq!(
            plan(Some("42"), Some("2"), Some("http:admin")).unwrap(),
            vec![(3, "http".to_string()), (4, "admin".to_string())]
        );
        assert_eq!(
            plan(Some("42"), Some("2"), None).unwrap(),
            vec![(3, "unknown".to_string()), (4, "unknown".to_string())]
        );
        assert_eq!(
            plan(Some("42"), Some("2"), Some(":x")).unwrap(),
            vec![(3, "unknown".to_string()), (4, "x".to_string())]
        );
        for (pid, fds, names, needle) in [
            ("me", "1", None, "LISTEN_PID='me'"),
            ("42", "many", None, "LISTEN_FDS='many'"),
            ("42", "-1", None, "LISTEN_FDS='-1'"),
            ("42", "2", Some("one"), "LISTEN_FDNAMES has 1 names"),
        ] {
            let err = plan(Some(pid), Some(fds), names).unwrap_err();
            assert!(matches!(err, ListenError::BadActivation(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn inherited_sockets_say_what_they_are() {
        let (tcp, addr) = tcp_listener();
        let t = inherit(tcp, 3, "http");
        assert!(t.is_listening_stream());
        assert_eq!(t.local_address(), addr.to_string());
        assert_eq!((t.name(), t.fd()), ("http", 3));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock");
        let u = inherit(
            std::os::unix::net::UnixListener::bind(&path).unwrap(),
            4,
            "u",
        );
        assert_eq!(u.local_address(), format!("unix:{}", path.display()));

        let name = format!("baton-test-{}", std::process::id());
        let abs = {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            std::os::unix::net::UnixListener::bind_addr(&a).unwrap()
        };
        let a = inherit(abs, 5, "a");
        assert!(a.is_listening_stream());
        assert_eq!(a.local_address(), format!("unix:@{name}"));

        let cases: Vec<(OwnedFd, &str)> = vec![
            (
                std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into(),
                "not a stream socket",
            ),
            (
                std::net::TcpStream::connect(addr).unwrap().into(),
                "does not listen",
            ),
            (
                Socket::new(Domain::IPV4, Type::STREAM, None)
                    .unwrap()
                    .into(),
                "does not listen",
            ),
            (
                std::fs::File::open("/dev/null").unwrap().into(),
                "not a socket",
            ),
        ];
        for (fd, needle) in cases {
            let i = inherit(fd, 6, "odd");
            assert!(!i.is_listening_stream(), "{needle}");
            let err = resolve(&[], vec![i], BindOptions::default()).unwrap_err();
            assert!(
                matches!(err, ListenError::InheritedUnusable { .. }),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains(needle), "{text}");
            assert!(text.contains("'odd' (fd 6)"), "{text}");
        }
    }

    #[test]
    fn without_listen_every_inherited_socket_is_used_in_order() {
        let (a, a_addr) = tcp_listener();
        let (b, b_addr) = tcp_listener();
        let resolved = resolve(
            &[],
            vec![inherit(a, 3, "web"), inherit(b, 4, "web")],
            BindOptions::default(),
        )
        .unwrap();
        assert!(resolved.unused.is_empty());
        let got: Vec<_> = resolved
            .listeners
            .iter()
            .map(|l| (l.name(), l.local_address().to_string(), l.inherited_fd()))
            .collect();
        // Names as systemd gave them, even repeated (one .socket unit with
        // two ListenStream= names both after itself).
        assert_eq!(
            got,
            vec![
                ("web", a_addr.to_string(), Some(3)),
                ("web", b_addr.to_string(), Some(4))
            ]
        );
        // The very same sockets: a connection queues on the inherited one.
        std::net::TcpStream::connect(a_addr).unwrap();
    }

    #[test]
    fn nothing_inherited_and_no_listen_is_an_error() {
        let err = resolve(&[], Vec::new(), BindOptions::default()).unwrap_err();
        assert!(matches!(err, ListenError::NothingToListenOn), "{err}");
    }

    #[test]
    fn listen_matches_by_name_then_by_address_and_binds_the_rest() {
        let (a, a_addr) = tcp_listener();
        let (b, b_addr) = tcp_listener();
        let (c, _) = tcp_listener();
        let specs = [
            // By name (the port differs from 0 only in the spec: 0 matches any).
            parse("http=127.0.0.1:0").unwrap(),
            // By address; the spec's name wins.
            parse(&format!("admin={b_addr}")).unwrap(),
            // Neither: bound anew.
            parse("extra=127.0.0.1:0").unwrap(),
        ];
        let resolved = resolve(
            &specs,
            vec![
                inherit(b, 3, "stored"),
                inherit(a, 4, "http"),
                inherit(c, 5, "left-over"),
            ],
            BindOptions::default(),
        )
        .unwrap();
        let l = &resolved.listeners;
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].name(), l[0].inherited_fd()), ("http", Some(4)));
        assert_eq!(l[0].local_address(), a_addr.to_string());
        assert_eq!((l[1].name(), l[1].inherited_fd()), ("admin", Some(3)));
        assert_eq!(l[1].local_address(), b_addr.to_string());
        assert_eq!(l[2].name(), "extra");
        assert!(!l[2].is_inherited());
        assert_eq!(resolved.unused.len(), 1);
        assert_eq!(resolved.unused[0].name(), "left-over");
    }

    #[test]
    fn a_listen_naming_an_inherited_socket_elsewhere_is_a_clear_error() {
        let (a, a_addr) = tcp_listener();
        let (other, other_addr) = tcp_listener();
        drop(other);
        let err = resolve(
            &[parse(&format!("http={other_addr}")).unwrap()],
            vec![inherit(a, 3, "http")],
            BindOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ListenError::InheritedMismatch { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("--listen http={other_addr}")),
            "{text}"
        );
        assert!(text.contains(&format!("listens on {a_addr}")), "{text}");
        assert!(text.contains("(fd 3)"), "{text}");

        // Another kind under the same name.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (t, _) = tcp_listener();
        let err = resolve(
            &[parse(&format!("api=unix:{}", path.display())).unwrap()],
            vec![inherit(t, 3, "api")],
            BindOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ListenError::InheritedMismatch { .. }),
            "{err}"
        );

        // A named one that is no listener at all.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = resolve(
            &[parse("dns=127.0.0.1:0").unwrap()],
            vec![inherit(udp, 3, "dns")],
            BindOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ListenError::InheritedUnusable { .. }),
            "{err}"
        );
    }

    #[test]
    fn all_interfaces_and_dual_stack_match() {
        let v6 = Socket::new(Domain::IPV6, Type::STREAM, None);
        let Ok(v6) = v6 else {
            return; // no IPv6 here
        };
        v6.set_only_v6(false).unwrap();
        if v6
            .bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())
            .is_err()
        {
            return;
        }
        v6.listen(8).unwrap();
        let port = v6.local_addr().unwrap().as_socket().unwrap().port();
        let i = inherit(v6, 3, "x");
        for by_name in [true, false] {
            assert!(i.matches(&Address::AllInterfaces(port), by_name));
            assert!(!i.matches(&Address::AllInterfaces(port.wrapping_add(1)), by_name));
            assert!(i.matches(&tcp(&format!("0.0.0.0:{port}")), by_name));
            assert!(i.matches(&tcp(&format!("[::]:{port}")), by_name));
            assert!(!i.matches(&tcp(&format!("127.0.0.1:{port}")), by_name));
        }
        // Port 0 stands for the inherited port only when the name says so.
        assert!(i.matches(&Address::AllInterfaces(0), true));
        assert!(!i.matches(&Address::AllInterfaces(0), false));
    }

    #[test]
    fn unix_sockets_match_by_path_and_inherited_files_are_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let u = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let i = inherit(u, 3, "systemd-name");
        // A relative spec for the same file matches too (../../tmp/…).
        let depth = std::env::current_dir().unwrap().ancestors().count() - 1;
        let mut relative: PathBuf = std::iter::repeat_n("..", depth).collect();
        relative.push(path.strip_prefix("/").unwrap());
        assert!(i.matches(&Address::Unix(relative), false));
        assert!(!i.matches(&Address::Unix(dir.path().join("other.sock")), false));
        let spec = parse(&format!("api=unix:{}", path.display())).unwrap();
        let resolved = resolve(&[spec], vec![i], BindOptions::default()).unwrap();
        let l = resolved.listeners.into_iter().next().unwrap();
        assert_eq!(l.name(), "api");
        assert!(l.is_inherited());
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(l);
        assert!(
            path.exists(),
            "the file of an inherited socket is not baton's to remove"
        );
    }

    /// Runs only as the child of `inherited_from_env_takes_the_fds_once`.
    #[test]
    fn activation_child() {
        if std::env::var_os("BATON_ACTIVATION_CHILD").is_none() {
            return;
        }
        let inherited = inherited_from_env().unwrap();
        let names: Vec<&str> = inherited.iter().map(Inherited::name).collect();
        assert_eq!(names, ["http", "api"]);
        for i in &inherited {
            // SAFETY: F_GETFD only reads the flags of a descriptor we own.
            let flags = unsafe { libc::fcntl(i.fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "fd {}", i.fd());
        }
        assert_eq!(
            inherited[0].local_address(),
            std::env::var("EXPECT_TCP").unwrap()
        );
        assert!(inherited_from_env().unwrap().is_empty(), "taken once");
        let specs = [parse(&std::env::var("EXPECT_UNIX").unwrap()).unwrap()];
        let resolved = resolve(&specs, inherited, BindOptions::default()).unwrap();
        assert_eq!(resolved.listeners[0].inherited_fd(), Some(4));
        assert_eq!(resolved.unused[0].name(), "http");
        println!("activation child: ok");
    }

    #[test]
    fn inherited_from_env_takes_the_fds_once() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (tcp, addr) = tcp_listener();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (tcp_fd, unix_fd) = (tcp.as_raw_fd(), unix.as_raw_fd());
        // `sh` puts its own pid in LISTEN_PID and execs the test binary,
        // which keeps the pid: the same handover as systemd's.
        let mut command = std::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "listeners::tests::activation_child",
                "--nocapture",
            ])
            .env("BATON_ACTIVATION_CHILD", "1")
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", "http:api")
            .env("EXPECT_TCP", addr.to_string())
            .env("EXPECT_UNIX", format!("api=unix:{}", path.display()));
        // SAFETY: only dup2 and fcntl between fork and exec; both are
        // async-signal-safe. The sources sit above 4 or are moved first.
        unsafe {
            command.pre_exec(move || {
                let high_tcp = libc::fcntl(tcp_fd, libc::F_DUPFD, 100);
                let high_unix = libc::fcntl(unix_fd, libc::F_DUPFD, 100);
                if high_tcp < 0
                    || high_unix < 0
                    || libc::dup2(high_tcp, 3) < 0
                    || libc::dup2(high_unix, 4) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("activation child: ok"),
            "{}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            path.exists(),
            "the child did not remove the inherited socket's file"
        );
    }
}
