//! Real datagram sockets stand in for systemd's (or baton's) notify socket.

use super::*;
use std::os::fd::{AsFd, FromRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Instant;

/// Generous: a busy machine may be slow, a correct one never waits this long.
const DEADLINE: Duration = Duration::from_secs(10);

/// A receiver bound at a path in a fresh directory.
struct Receiver {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        Receiver {
            socket,
            path,
            _dir: dir,
        }
    }

    fn notifier(&self) -> Notifier {
        Notifier::open(self.path.as_os_str()).unwrap()
    }

    /// One datagram and the descriptors that came with it.
    fn recv(&self) -> (String, Vec<OwnedFd>) {
        let mut buf = [0u8; 4096];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let msg = socket::recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let socket::ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        (String::from_utf8(buf[..n].to_vec()).unwrap(), fds)
    }

    fn recv_text(&self) -> String {
        let (text, fds) = self.recv();
        assert!(fds.is_empty(), "no descriptors expected with {text:?}");
        text
    }
}

fn only_notify_socket(value: &str) -> impl Fn(&str) -> Option<OsString> {
    let value = OsString::from(value);
    move |name| (name == "NOTIFY_SOCKET").then(|| value.clone())
}

#[test]
fn unset_or_empty_means_no_one_to_tell() {
    assert!(Notifier::from_lookup(|_| None).unwrap().is_none());
    assert!(
        Notifier::from_lookup(only_notify_socket(""))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_path_gets_one_datagram_per_message_exactly() {
    let r = Receiver::new();
    let lookup = only_notify_socket(r.path.to_str().unwrap());
    let n = Notifier::from_lookup(lookup).unwrap().expect("a notifier");
    assert_eq!(n.address(), r.path.to_str().unwrap());
    n.send("READY=1").unwrap();
    n.send("STATUS=a b\nREADY=1").unwrap();
    n.send("").unwrap();
    assert_eq!(r.recv_text(), "READY=1");
    assert_eq!(r.recv_text(), "STATUS=a b\nREADY=1");
    assert_eq!(r.recv_text(), "");
}

#[test]
fn an_abstract_name_gets_the_message() {
    let name = format!("baton-sd-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let receiver = UnixDatagram::bind_addr(&addr).unwrap();
    receiver.set_read_timeout(Some(DEADLINE)).unwrap();
    let variable = format!("@{name}");
    let n = Notifier::from_lookup(only_notify_socket(&variable))
        .unwrap()
        .expect("a notifier");
    assert_eq!(n.address(), variable);
    n.send("STATUS=abstract").unwrap();
    let mut buf = [0u8; 64];
    let len = receiver.recv(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"STATUS=abstract");
    // Not the file system: no file of that name appeared here.
    assert!(!Path::new(&variable).exists());
}

#[test]
fn other_addresses_are_refused_naming_the_value() {
    let long = format!("/{}", "x".repeat(200));
    for bad in [
        "notify.sock",
        "./notify.sock",
        "@",
        "vsock:2:1234",
        "vsock-dgram:2:1234",
        " /run/notify",
        long.as_str(),
    ] {
        let err = Notifier::from_lookup(only_notify_socket(bad)).unwrap_err();
        assert!(matches!(err, NotifyError::BadAddress(_)), "{bad}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn nobody_listening_is_an_error_naming_socket_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody-listens");
    let n = Notifier::open(path.as_os_str()).unwrap();
    let err = n.send("READY=1\nSTATUS=x").unwrap_err();
    let NotifyError::Send {
        socket,
        message,
        source,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(socket, path.to_str().unwrap());
    assert_eq!(message, "READY=1\nSTATUS=x");
    assert_eq!(source.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("nobody-listens"), "{err}");
}

#[test]
fn descriptors_ride_along_in_the_same_datagram() {
    let r = Receiver::new();
    let n = r.notifier();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    n.send_with_fds("FDSTORE=1\nFDNAME=http", &[http.as_fd()])
        .unwrap();
    n.send_with_fds("FDSTORE=1", &[http.as_fd(), admin.as_fd()])
        .unwrap();
    let ino = |fd: BorrowedFd<'_>| {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    };
    let (text, fds) = r.recv();
    assert_eq!(text, "FDSTORE=1\nFDNAME=http");
    assert_eq!(fds.len(), 1);
    // The very same socket: same inode, same address.
    assert_eq!(ino(fds[0].as_fd()), ino(http.as_fd()));
    let (text, fds) = r.recv();
    assert_eq!(text, "FDSTORE=1");
    let got: Vec<u64> = fds.iter().map(|fd| ino(fd.as_fd())).collect();
    assert_eq!(got, [ino(http.as_fd()), ino(admin.as_fd())]);
    // No descriptor with a plain message.
    n.send("WATCHDOG=1").unwrap();
    assert_eq!(r.recv_text(), "WATCHDOG=1");
}

#[test]
fn the_sending_socket_is_close_on_exec() {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let r = Receiver::new();
    let n = r.notifier();
    let flags = fcntl(&n.socket, FcntlArg::F_GETFD).unwrap();
    assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
}

#[test]
fn a_full_receiver_makes_a_send_time_out_instead_of_blocking_for_good() {
    let r = Receiver::new();
    let n = r.notifier();
    let timeout = Duration::from_millis(200);
    n.set_send_timeout(Some(timeout)).unwrap();
    // Nobody reads: the receiver's queue fills up (max_dgram_qlen or its
    // buffer, whichever comes first), then a send waits for the timeout.
    let message = "x".repeat(1024);
    let started = Instant::now();
    let (err, took) = loop {
        let before = Instant::now();
        match n.send(&message) {
            Ok(()) => assert!(started.elapsed() < DEADLINE, "the queue never filled"),
            Err(err) => break (err, before.elapsed()),
        }
    };
    let NotifyError::Send { source, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(source.kind(), io::ErrorKind::WouldBlock, "{err}");
    assert!(
        took >= timeout / 2,
        "gave up after {took:?}, not {timeout:?}"
    );
    // Room again after the receiver reads one.
    r.recv_text();
    n.send("READY=1").unwrap();
}

#[test]
fn watchdog_interval_honours_watchdog_pid() {
    let vars = |usec: Option<&'static str>, pid: Option<&'static str>| {
        move |name: &str| match name {
            "WATCHDOG_USEC" => usec.map(OsString::from),
            "WATCHDOG_PID" => pid.map(OsString::from),
            _ => None,
        }
    };
    let at = |usec, pid| watchdog_interval(vars(usec, pid), 7);
    assert_eq!(at(Some("30000000"), None), Some(Duration::from_secs(30)));
    assert_eq!(
        at(Some("500000"), Some("7")),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        at(Some("500000"), Some("")),
        Some(Duration::from_millis(500))
    );
    assert_eq!(at(Some("500000"), Some("8")), None);
    assert_eq!(at(Some("500000"), Some("x")), None);
    assert_eq!(at(Some("0"), None), None);
    assert_eq!(at(Some("soon"), None), None);
    assert_eq!(at(Some(""), None), None);
    assert_eq!(at(None, Some("7")), None);
    assert_eq!(at(None, None), None);
}
