//! Listener specs and the sockets baton binds once and holds for its life.
//!
//! baton never accepts on these sockets and never changes their file status
//! flags (`O_NONBLOCK` is shared by every process that holds the socket); it
//! only keeps them open, so the kernel queues connections through every
//! reload, and hands copies to each worker at fds 3, 4, …

use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

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
    pub backlog: i32,
    /// Permissions of unix socket files, when set.
    pub unix_mode: Option<u32>,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            backlog: 1024,
            unix_mode: None,
        }
    }
}

/// A bound, listening socket that baton holds.
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: Socket,
    local: String,
    /// The socket file baton created, and its identity, to remove on drop.
    created: Option<(PathBuf, u64, u64)>,
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
    socket.listen(options.backlog).map_err(io_error(addr))?;
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
    };
    if let Some(mode) = options.unix_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_error(&shown))?;
    }
    listener
        .socket
        .listen(options.backlog)
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
}
