//! Socket activation of baton itself: adopting the sockets it was started
//! with (`LISTEN_FDS`), from a systemd `.socket` unit, systemd's file
//! descriptor store or `systemd-socket-activate`, and matching them to the
//! `--listen` specs.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Socket, Type};

use super::{Address, BindOptions, ListenError, Listener, ListenerSpec, check_names};

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
    /// A bound UDP socket (`ListenDatagram=`).
    Udp(SocketAddr),
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

    /// Whether baton can hand it to workers: a listening TCP or unix stream
    /// socket, or a bound UDP socket.
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
                    Kind::Udp(addr) => format!("udp://{addr}"),
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
    pub(super) fn matches(&self, address: &Address, by_name: bool) -> bool {
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
            (Kind::Udp(addr), Address::Udp(want)) => {
                want.ip().to_canonical() == addr.ip().to_canonical()
                    && port_ok(want.port(), addr.port())
            }
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
    if ty == Type::DGRAM
        && let Ok(domain) = socket.domain()
        && (domain == Domain::IPV4 || domain == Domain::IPV6)
        && let Some(addr) = socket.local_addr()?.as_socket()
    {
        return Ok(Kind::Udp(addr));
    }
    if ty != Type::STREAM {
        return Ok(Kind::Unusable(
            "neither a stream socket nor a UDP socket (sequential-packet and unix datagram sockets cannot be listeners)"
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

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Adopt the sockets baton was started with, read as
/// [`baton_sd::listen_fds`] says (strict `LISTEN_PID`; names from
/// `LISTEN_FDNAMES`, `unknown` when unset or empty): the descriptors from
/// 3 on become baton's, each made close-on-exec at once so that no build
/// step or daemon of it inherits a listener. An empty list when baton was
/// not socket-activated (or `LISTEN_PID` is another process's). Call it once,
/// early in `main`; a second call returns an empty list, since the
/// descriptors are taken.
///
/// It does not check what each descriptor is: [`resolve`] does, for those
/// it uses. baton's environment keeps the variables; `spawn` leaves them
/// out of every worker's.
pub fn inherited_from_env() -> Result<Vec<Inherited>, ListenError> {
    let plan =
        baton_sd::listen_fds_from_env().map_err(|e| ListenError::BadActivation(e.to_string()))?;
    if plan.is_empty() || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut inherited = Vec::with_capacity(plan.len());
    for baton_sd::ListenFd { fd, name } in plan {
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

impl Listener {
    /// An inherited socket as a listener under `name`.
    fn adopt(inherited: Inherited, name: &str) -> Self {
        Listener {
            name: name.to_string(),
            socket: inherited.socket,
            local: inherited.local,
            created: None,
            inherited: Some(inherited.fd),
            backlog: None,
        }
    }
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
/// wins), else a new socket is bound as [`bind_all`](super::bind_all) does. `options` apply
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
pub(super) fn inherit(fd: impl Into<OwnedFd>, number: RawFd, name: &str) -> Inherited {
    Inherited::inspect(fd.into(), number, name.to_string())
}
