//! The listeners' tests: specs, binding, then inherited sockets.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use socket2::{Domain, Socket, Type};

use super::activation::inherit;
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
        (
            "dns=udp://127.0.0.1:5353",
            "dns",
            Address::Udp("127.0.0.1:5353".parse().unwrap()),
        ),
        (
            "udp://localhost:53",
            "listen0",
            Address::Udp("127.0.0.1:53".parse().unwrap()),
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
        ("udp://:53", "is not an IP address"),
        ("udp://5353", "udp:// needs a HOST:PORT"),
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
            std::os::unix::net::UnixDatagram::unbound().unwrap().into(),
            "neither a stream socket nor a UDP socket",
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
fn the_backlog_is_known_only_for_sockets_baton_bound() {
    let options = BindOptions {
        backlog: std::num::NonZeroU32::new(77).unwrap(),
        ..BindOptions::default()
    };
    let tcp = Listener::bind(&parse("127.0.0.1:0").unwrap(), options).unwrap();
    assert_eq!(tcp.backlog(), Some(77));
    let dir = tempfile::tempdir().unwrap();
    let spec = parse(&format!("unix:{}", dir.path().join("s.sock").display())).unwrap();
    assert_eq!(Listener::bind(&spec, options).unwrap().backlog(), Some(77));

    let (a, _) = tcp_listener();
    let (b, b_addr) = tcp_listener();
    let specs = [
        parse("http=127.0.0.1:0").unwrap(),
        parse(&format!("admin={b_addr}")).unwrap(),
        parse("extra=127.0.0.1:0").unwrap(),
    ];
    let inherited = vec![inherit(a, 3, "http"), inherit(b, 4, "stored")];
    let resolved = resolve(&specs, inherited, options).unwrap();
    let backlogs: Vec<_> = resolved.listeners.iter().map(Listener::backlog).collect();
    // Adopted by name, adopted by address, bound.
    assert_eq!(backlogs, [None, None, Some(77)]);

    let (c, _) = tcp_listener();
    let resolved = resolve(&[], vec![inherit(c, 3, "web")], options).unwrap();
    assert_eq!(resolved.listeners[0].backlog(), None);
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

    // A named UDP socket is no TCP listener.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = resolve(
        &[parse("dns=127.0.0.1:0").unwrap()],
        vec![inherit(udp, 3, "dns")],
        BindOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ListenError::InheritedMismatch { actual, .. } if actual.starts_with("udp://")),
        "{err}"
    );

    // A named one that is no listener at all.
    let datagram = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let err = resolve(
        &[parse("dns=127.0.0.1:0").unwrap()],
        vec![inherit(datagram, 3, "dns")],
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

/// A UDP socket has no accept queue: its receive buffer is what holds
/// datagrams while a starting generation competes for the CPU with the
/// one it replaces. baton gives it room for seconds of traffic.
#[test]
fn udp_sockets_get_a_large_receive_buffer() {
    let spec = parse("dns=udp://127.0.0.1:0").unwrap();
    let bound = Listener::bind(&spec, BindOptions::default()).unwrap();
    let size = socket2::SockRef::from(&bound).recv_buffer_size().unwrap();
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // Root may go past net.core.rmem_max (SO_RCVBUFFORCE); others get
    // at most that. The kernel reports twice what was set (its overhead).
    let expected = if nix::unistd::geteuid().is_root() {
        UDP_RECEIVE_BUFFER
    } else {
        UDP_RECEIVE_BUFFER.min(rmem_max)
    };
    assert!(size >= expected, "receive buffer {size} < {expected}");
}

#[test]
fn udp_sockets_are_bound_and_adopted() {
    let spec = parse("dns=udp://127.0.0.1:0").unwrap();
    let bound = Listener::bind(&spec, BindOptions::default()).unwrap();
    assert!(bound.local_address().starts_with("udp://127.0.0.1:"));
    assert_eq!(bound.backlog(), None, "a UDP socket has no accept queue");
    assert_eq!(
        socket2::SockRef::from(&bound).r#type().unwrap(),
        Type::DGRAM
    );

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let i = inherit(socket, 3, "dns");
    assert!(i.is_listening_stream());
    assert_eq!(i.local_address(), format!("udp://{addr}"));
    assert!(i.matches(&Address::Udp(addr), false));
    assert!(!i.matches(&Address::Tcp(addr), false));
    let resolved = resolve(
        &[parse(&format!("dns=udp://{addr}")).unwrap()],
        vec![i],
        BindOptions::default(),
    )
    .unwrap();
    assert!(resolved.listeners[0].is_inherited());
}
