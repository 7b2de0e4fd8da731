//! baton under systemd, with no systemd as PID 1: the test stands in for
//! systemd's notify socket (and its file descriptor store), and Debian's
//! `systemd-socket-activate` hands baton an inherited listener.

use std::collections::HashMap;
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_e2e::{
    Baton, DEADLINE, Traffic, assert_no_failures, baton_bin, eventually, exclusive, free_port,
    http_get, processes_with_token, run_args, runtime, test_worker_bin,
};
use baton_loadgen::{Config, FailureKind, Load, Mode, Report};
use nix::sys::signal::Signal;
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, sockopt};

/// A stand-in for systemd's end of `NOTIFY_SOCKET`: a unix datagram socket
/// in a temporary directory, read with `recvmsg` so that descriptors sent
/// with `SCM_RIGHTS` (the fd store) arrive too.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// One datagram baton sent, and the descriptors that came with it.
struct Message {
    text: String,
    fds: Vec<OwnedFd>,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Manager {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next datagram, waiting up to [`DEADLINE`]; panics with `baton`'s
    /// output when none comes.
    fn recv(&self, baton: &Baton) -> Message {
        self.socket.set_read_timeout(Some(DEADLINE)).unwrap();
        match self.recv_raw() {
            Ok(message) => message,
            Err(e) => panic!(
                "no message on the notify socket within {DEADLINE:?} ({e}); output:\n{}",
                baton.output()
            ),
        }
    }

    /// The next datagram that is not `WATCHDOG=1`.
    fn recv_skipping_watchdog(&self, baton: &Baton) -> Message {
        loop {
            let message = self.recv(baton);
            if message.text != "WATCHDOG=1" {
                return message;
            }
        }
    }

    /// A datagram if one is queued now.
    fn try_recv(&self) -> Option<Message> {
        self.socket.set_nonblocking(true).unwrap();
        let result = self.recv_raw();
        self.socket.set_nonblocking(false).unwrap();
        match result {
            Ok(message) => Some(message),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("recvmsg: {e}"),
        }
    }

    fn recv_raw(&self) -> io::Result<Message> {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let msg = socket::recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        assert!(
            !msg.flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
            "a truncated datagram: {:?}",
            msg.flags
        );
        let mut fds = Vec::new();
        for c in msg.cmsgs().expect("control messages") {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        Ok(Message {
            text: String::from_utf8(buf[..n].to_vec()).expect("UTF-8"),
            fds,
        })
    }
}

/// `CLOCK_MONOTONIC` now, in microseconds (what `MONOTONIC_USEC=` holds).
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// The environment of a live process.
fn environ(pid: i32) -> HashMap<String, String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    env.split(|&b| b == 0)
        .filter_map(|var| {
            let var = String::from_utf8_lossy(var);
            let (k, v) = var.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// A worker's environment has none of the variables systemd gave baton:
/// its `NOTIFY_SOCKET` is baton's per-generation one, no `WATCHDOG_*`, no
/// `FDSTORE`, and `LISTEN_PID` is its own pid.
fn assert_worker_env_is_its_own(worker: i32, manager: Option<&Path>) {
    let env = environ(worker);
    if let Some(manager) = manager {
        let notify = env.get("NOTIFY_SOCKET").expect("baton's NOTIFY_SOCKET");
        assert_ne!(Path::new(notify), manager, "{env:?}");
    }
    for name in ["WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE"] {
        assert!(!env.contains_key(name), "{name} leaked: {env:?}");
    }
    assert_eq!(env.get("LISTEN_PID"), Some(&worker.to_string()), "{env:?}");
}

/// Check an `FDSTORE=1` message: named `name`, exactly one descriptor,
/// which is a listening TCP socket at `addr`. Returns the descriptor.
fn stored_listener(message: Message, name: &str, addr: SocketAddr) -> OwnedFd {
    assert_eq!(message.text, format!("FDSTORE=1\nFDNAME={name}"));
    assert_eq!(message.fds.len(), 1, "one descriptor per FDSTORE datagram");
    let fd = message.fds.into_iter().next().unwrap();
    assert!(
        socket::getsockopt(&fd, sockopt::AcceptConn).expect("SO_ACCEPTCONN"),
        "the stored socket listens"
    );
    let copy = TcpListener::from(fd.try_clone().unwrap());
    assert_eq!(
        copy.local_addr().unwrap(),
        addr,
        "the stored socket's address"
    );
    fd
}

/// The `RELOADING=1` datagram: `MONOTONIC_USEC=` between `before` and now,
/// then the status.
fn assert_reloading(message: &Message, before: u64, status: &str) {
    let after = monotonic_usec();
    let lines: Vec<&str> = message.text.split('\n').collect();
    assert_eq!(lines.len(), 3, "{:?}", message.text);
    assert_eq!(lines[0], "RELOADING=1");
    let usec: u64 = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= number in {:?}", message.text));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} not within [{before}, {after}]"
    );
    assert_eq!(lines[2], format!("STATUS={status}"));
    assert!(message.fds.is_empty());
}

fn assert_text(message: Message, text: &str) {
    assert_eq!(message.text, text);
    assert!(message.fds.is_empty(), "{text:?} came with descriptors");
}

/// Start, a reload by SIGHUP and one by `baton ctl reload` that succeed,
/// then one of each that fail, then stop: exactly these datagrams, in this
/// order, and nothing after baton exits. Never `MAINPID=`.
#[test]
fn notify_messages_are_exact_and_in_order_from_start_through_reloads_to_stop() {
    let _serial = exclusive();
    let manager = Manager::new();
    let mut command = Command::new(baton_e2e::baton_bin());
    command.args(run_args(
        &["--ready", "notify"],
        &["--exit-at-start", "3", "--from-gen", "4"],
    ));
    command.env("NOTIFY_SOCKET", &manager.path);
    let mut baton = Baton::spawn(command);

    // Start: the socket baton bound goes to the fd store first, then READY.
    let addr = baton.address("http");
    let first = manager.recv(&baton);
    let _stored = stored_listener(first, "http", addr);
    let gen1 = baton.wait_ready(1);
    assert_text(
        manager.recv(&baton),
        &format!("READY=1\nSTATUS=generation 1 (pid {gen1}) serving"),
    );
    assert_worker_env_is_its_own(gen1, Some(&manager.path));

    // A reload by signal that succeeds.
    let before = monotonic_usec();
    baton.signal(Signal::SIGHUP);
    assert_reloading(&manager.recv(&baton), before, "reload 1 (signal) started");
    let gen2 = baton.wait_ready(2);
    assert_text(
        manager.recv(&baton),
        &format!("READY=1\nSTATUS=generation 2 (pid {gen2}) serving"),
    );

    // A reload by `baton ctl reload` (what ExecReload= runs) that succeeds.
    let before = monotonic_usec();
    let output = baton.ctl(&["reload"]);
    assert!(output.status.success(), "{output:?}");
    assert_reloading(&manager.recv(&baton), before, "reload 2 (ctl) started");
    let gen3 = baton.wait_ready(3);
    assert_text(
        manager.recv(&baton),
        &format!("READY=1\nSTATUS=generation 3 (pid {gen3}) serving"),
    );

    // A reload by signal that fails: generation 4 exits before it is ready.
    let before = monotonic_usec();
    baton.signal(Signal::SIGHUP);
    assert_reloading(&manager.recv(&baton), before, "reload 3 (signal) started");
    assert_text(
        manager.recv(&baton),
        "READY=1\nSTATUS=reload failed: generation 4: exited before ready (exit code 3)",
    );

    // A reload by `baton ctl reload` that fails: ctl says so too.
    let before = monotonic_usec();
    let output = baton.ctl(&["reload"]);
    assert!(!output.status.success(), "{output:?}");
    assert_reloading(&manager.recv(&baton), before, "reload 4 (ctl) started");
    assert_text(
        manager.recv(&baton),
        "READY=1\nSTATUS=reload failed: generation 5: exited before ready (exit code 3)",
    );

    // Generation 3 still serves.
    let (status, _) = http_get(addr, "/");
    assert_eq!(status, 200);

    baton.signal(Signal::SIGTERM);
    assert_text(
        manager.recv(&baton),
        "STOPPING=1\nSTATUS=draining every generation",
    );
    assert!(baton.wait_exit().success(), "{}", baton.output());
    if let Some(extra) = manager.try_recv() {
        panic!("a message after STOPPING=1: {:?}", extra.text);
    }
}

/// `WATCHDOG_USEC=500000`: `WATCHDOG=1` every quarter second from baton's
/// own loop, and on while no worker serves and baton restarts one crash
/// after another with growing delays (a crash loop is the workers' problem,
/// not a hung baton for systemd to kill); the watchdog variables never
/// reach the worker.
#[test]
fn watchdog_pings_come_every_half_interval_even_in_a_crash_loop() {
    let _serial = exclusive();
    let manager = Manager::new();
    let mut command = Command::new(baton_e2e::baton_bin());
    command.args(run_args(
        &["--ready", "notify"],
        &["--exit-at-start", "1", "--from-gen", "2"],
    ));
    command
        .env("NOTIFY_SOCKET", &manager.path)
        .env("WATCHDOG_USEC", "500000");
    let mut baton = Baton::spawn(command);
    let gen1 = baton.wait_ready(1);
    assert_worker_env_is_its_own(gen1, Some(&manager.path));

    // Up to READY=1, pings may come between the other messages.
    assert!(
        manager
            .recv_skipping_watchdog(&baton)
            .text
            .starts_with("FDSTORE=1\n")
    );
    assert_text(
        manager.recv_skipping_watchdog(&baton),
        &format!("READY=1\nSTATUS=generation 1 (pid {gen1}) serving"),
    );
    // Then only pings, every 250 ms: four take at least three intervals
    // (tokio's interval never fires a tick early, and after a late one it
    // waits the whole period again).
    let pings = |count: usize| {
        // Drop the pings already queued: each one counted below was sent
        // after `start`.
        let start = loop {
            let start = Instant::now();
            match manager.try_recv() {
                None => break start,
                Some(message) => assert!(is_ping_or_backoff(&message.text), "{}", message.text),
            }
        };
        let mut seen = 0;
        while seen < count {
            let message = manager.recv(&baton);
            assert!(is_ping_or_backoff(&message.text), "{}", message.text);
            seen += usize::from(message.text == "WATCHDOG=1");
        }
        start.elapsed()
    };
    let took = pings(4);
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(10),
        "4 pings took {took:?}"
    );

    // The worker dies; every restart exits at once, and baton waits longer
    // and longer between restarts. Pings go on all along.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gen1), Signal::SIGKILL).unwrap();
    let crashed = manager.recv_skipping_watchdog(&baton);
    assert_eq!(
        crashed.text,
        format!("STATUS=generation 1 (pid {gen1}) crashed (killed by SIGKILL); restarting")
    );
    baton.wait_for(&["restart scheduled", "crashes=5"]);
    let took = pings(4);
    assert!(took < Duration::from_secs(10), "4 pings took {took:?}");
    assert_eq!(
        baton.count(&[" ready generation="]),
        1,
        "{}",
        baton.output()
    );

    baton.signal(Signal::SIGTERM);
    let stopping = loop {
        let message = manager.recv_skipping_watchdog(&baton);
        if !is_ping_or_backoff(&message.text) {
            break message;
        }
    };
    assert_eq!(
        stopping.text,
        "STOPPING=1\nSTATUS=draining every generation"
    );
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// During a crash loop baton pings the watchdog and, at each backoff,
/// says in `STATUS=` that no worker serves and when it restarts.
fn is_ping_or_backoff(text: &str) -> bool {
    text == "WATCHDOG=1" || text.starts_with("STATUS=no worker serving: restart in ")
}

/// Debian's tool (package `systemd`) that binds, waits for the first
/// connection, then execs the program with `LISTEN_FDS` (in place: the
/// pid does not change, so it is baton's pid).
fn socket_activate() -> Command {
    let tool = [
        "/usr/bin/systemd-socket-activate",
        "/lib/systemd/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-socket-activate (Debian package `systemd`) is not installed");
    let mut command = Command::new(tool);
    // It passes on only the variables named with -E.
    for name in ["BATON_E2E_TOKEN", "BATON_CONTROL", "RUST_LOG"] {
        command.arg("-E").arg(name);
    }
    command
}

/// `systemd-socket-activate` binds, and the first connection starts baton
/// with the socket as `LISTEN_FDS=1`, `LISTEN_FDNAMES=http`; with no
/// `--listen`, baton serves on it, hands it to each worker under its name,
/// and new-connection load through two reloads fails no request.
#[test]
fn a_socket_activated_baton_serves_through_a_reload_without_a_failed_request() {
    let _serial = exclusive();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut command = socket_activate();
    command
        .arg("-l")
        .arg(addr.to_string())
        .arg("--fdname=http")
        .arg(baton_e2e::baton_bin())
        .args(["run", "--ready", "notify", "--"])
        .arg(test_worker_bin());
    let mut baton = Baton::spawn(command);
    baton.wait_for(&["Listening on", &addr.to_string()]);
    // The first connection starts baton; it waits in the accept queue
    // until the first worker serves it.
    let (status, body) = http_get(addr, "/fds");
    assert_eq!(status, 200, "{body}");
    let gen1 = baton.wait_ready(1);
    let fds: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(fds["pid"], gen1, "{body}");
    assert_eq!(fds["LISTEN_FDS"], "1", "{body}");
    assert_eq!(fds["LISTEN_FDNAMES"], "http", "{body}");
    assert_eq!(fds["LISTEN_PID"], gen1.to_string(), "{body}");
    assert_eq!(fds["fds"], serde_json::json!([0, 1, 2, 3]), "{body}");
    let listening = baton.wait_for(&["listening", "name=http "]);
    assert!(listening.contains("inherited=true"), "{listening}");
    assert_eq!(baton.address("http"), addr);
    assert_inherited_backlog_is_unknown(&baton, &addr.to_string());
    assert_worker_env_is_its_own(gen1, None);
    // The tool exec'd baton in place: the process we started is baton,
    // and LISTEN_PID named it.
    let exe = std::fs::read_link(format!("/proc/{}/exe", baton.pid())).unwrap();
    assert_eq!(exe, baton_e2e::baton_bin().canonicalize().unwrap());
    let env = environ(baton.pid());
    assert_eq!(env.get("LISTEN_PID"), Some(&baton.pid().to_string()));

    let traffic = Traffic::start(addr, Mode::NewConnection, 8);
    for generation in 2..=3 {
        traffic.serve(100);
        baton.signal(Signal::SIGHUP);
        baton.wait_ready(generation);
    }
    traffic.serve(100);
    let report = traffic.finish();
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_no_failures(&report);
    assert!(
        report.distinct_header_values() >= 3,
        "three generations served: {}",
        report.summary()
    );
}

/// `status` shows the one listener at `address` with no backlog: baton
/// inherited the socket and never set its backlog (the `.socket` unit's
/// `Backlog=` did), so it does not claim its own `--backlog` default.
fn assert_inherited_backlog_is_unknown(baton: &Baton, address: &str) {
    let (exit, response) = baton.ctl_json(&["status"]);
    assert!(exit.success(), "{response:#}");
    // Health is another matter (and checked by the fault suite).
    let mut listeners = response["status"]["listeners"].clone();
    for listener in listeners.as_array_mut().into_iter().flatten() {
        let fields = listener.as_object_mut().expect("an object");
        for health in ["health", "problem", "repairs"] {
            fields.remove(health);
        }
    }
    assert_eq!(
        listeners,
        serde_json::json!([{"name": "http", "address": address, "backlog": null}]),
        "{response:#}"
    );
    let text = baton.ctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("http "))
        .unwrap_or_else(|| panic!("no listener line in {text}"));
    assert!(line.trim_end().ends_with("backlog ?"), "{line:?}");
}

/// One `GET path` over a unix socket (HTTP/1.0): the status code.
fn unix_get(path: &Path, target: &str) -> u16 {
    let mut stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {target} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// A `--listen` naming the inherited unix socket takes it, and baton leaves
/// its file alone on exit: it is systemd's.
#[test]
fn an_inherited_unix_socket_is_matched_by_name_and_its_file_outlives_baton() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    let mut command = socket_activate();
    command
        .arg("-l")
        .arg(&path)
        .arg("--fdname=http")
        .arg(baton_e2e::baton_bin())
        .arg("run")
        .arg("--listen")
        .arg(format!("http=unix:{}", path.display()))
        .args(["--ready", "notify", "--"])
        .arg(test_worker_bin());
    let mut baton = Baton::spawn(command);
    baton.wait_for(&["Listening on", &path.display().to_string()]);
    assert_eq!(unix_get(&path, "/"), 200);
    baton.wait_ready(1);
    let listening = baton.wait_for(&["listening", "name=http "]);
    assert!(listening.contains("inherited=true"), "{listening}");
    baton.signal(Signal::SIGHUP);
    baton.wait_ready(2);
    assert_eq!(unix_get(&path, "/"), 200);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert!(path.exists(), "baton removed the inherited socket's file");
}

/// Start `baton ARGS…` with `fds` at descriptors 3, 4, … and the
/// socket-activation variables systemd would set, `LISTEN_PID` being the
/// new baton's pid (the shell exports its own pid, then execs baton).
fn baton_with_fds(args: &[String], fds: &[(&str, &OwnedFd)], manager: &Manager) -> Baton {
    // Copies far above 3.., so that moving them down can never overwrite
    // one that is still to be moved; close-on-exec, so that no other child
    // of this test process gets them.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|(_, fd)| {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one.
            let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
            assert!(
                new >= 100,
                "F_DUPFD_CLOEXEC: {}",
                io::Error::last_os_error()
            );
            // SAFETY: it is ours alone.
            unsafe { OwnedFd::from_raw_fd(new) }
        })
        .collect();
    let raw: Vec<RawFd> = high.iter().map(|fd| fd.as_raw_fd()).collect();
    let names: Vec<&str> = fds.iter().map(|(name, _)| *name).collect();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(baton_e2e::baton_bin())
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("NOTIFY_SOCKET", &manager.path);
    // SAFETY: only dup2, which is async-signal-safe, runs between fork and
    // exec; dup2 clears close-on-exec on the copy at 3 + i.
    unsafe {
        command.pre_exec(move || {
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Baton::spawn(command)
}

/// The fd store round trip: baton leaves a copy of its socket with
/// "systemd" (this test), is killed with SIGKILL, and a new baton started
/// with that copy as `LISTEN_FDS` serves on the same socket. A client that
/// opened a new connection per request all along saw no refused connection:
/// while no worker ran, connections waited in the accept queue.
#[test]
fn the_fd_store_keeps_the_socket_across_a_sigkill_of_baton_and_nothing_is_refused() {
    let _serial = exclusive();
    let manager = Manager::new();
    let args = run_args(&["--ready", "notify"], &[]);
    let mut command = Command::new(baton_e2e::baton_bin());
    command.args(&args).env("NOTIFY_SOCKET", &manager.path);
    let mut old = Baton::spawn(command);
    let addr = old.address("http");
    let stored = stored_listener(manager.recv(&old), "http", addr);
    let old_worker = old.wait_ready(1);
    // Ready, so the control socket is up.
    let (_, status) = old.ctl_json(&["status"]);
    assert_eq!(
        status["status"]["listeners"][0]["backlog"], 1024,
        "bound by baton: its --backlog; {status:#}"
    );
    assert!(manager.recv(&old).text.starts_with("READY=1\n"));

    let rt = runtime();
    let _enter = rt.enter();
    const CLIENTS: u64 = 8;
    let load = Load::start(Config {
        mode: Mode::NewConnection,
        clients: CLIENTS as usize,
        duration: Duration::from_secs(120),
        ..Config::new(addr)
    })
    .expect("load");
    rt.block_on(load.wait_for(|s| s.ok >= 200))
        .expect("the load runs");

    old.signal(Signal::SIGKILL);
    old.wait_exit();
    // Its guardian kills the worker: nothing of the old tree serves now.
    assert!(
        eventually(|| processes_with_token(old.token()).is_empty()),
        "left behind: {:?}",
        processes_with_token(old.token())
    );
    assert!(!baton_e2e::alive(old_worker));
    // Every client is now waiting on a connection in the accept queue of
    // the socket only this test holds.
    let gap = rt
        .block_on(async {
            tokio::time::timeout(DEADLINE, load.wait_for(|s| s.in_flight() >= CLIENTS)).await
        })
        .expect("every client waits in the accept queue")
        .expect("the load runs");

    let mut new = baton_with_fds(&args, &[("http", &stored)], &manager);
    // The inherited socket is systemd's already: nothing goes to the
    // store, READY=1 comes first.
    let new_worker = new.wait_ready(1);
    assert_text(
        manager.recv(&new),
        &format!("READY=1\nSTATUS=generation 1 (pid {new_worker}) serving"),
    );
    let listening = new.wait_for(&["listening", "name=http "]);
    assert!(listening.contains("inherited=true"), "{listening}");
    assert_eq!(new.address("http"), addr);
    // The same socket, inherited this time: its backlog is not baton's to tell.
    assert_inherited_backlog_is_unknown(&new, &addr.to_string());
    rt.block_on(load.wait_for(|s| s.ok >= gap.ok + 200))
        .expect("the load runs");
    load.stop();
    let report: Report = rt.block_on(load.finish());
    new.signal(Signal::SIGTERM);
    assert!(new.wait_exit().success(), "{}", new.output());
    drop(stored);

    let failed = |kind| report.failed.get(&kind).copied().unwrap_or(0);
    // Only refused (and connect errors, timeouts) would mean the socket was
    // gone. Requests that the SIGKILLed worker had accepted can fail with
    // `reset` or `closed`: the guardian kills the worker outright, so
    // connections it had accepted die with it, mid-request or
    // mid-response. Those are lost with any supervisor; the promise here is
    // about the connections nobody had accepted yet.
    assert_eq!(
        failed(FailureKind::Refused),
        0,
        "{}\n{:?}",
        report.summary(),
        report.error_samples
    );
    assert_eq!(failed(FailureKind::ConnectOther), 0, "{}", report.summary());
    assert_eq!(failed(FailureKind::Timeout), 0, "{}", report.summary());
    assert!(
        report.failed_total() <= CLIENTS,
        "at most one request per client was on the killed worker: {}",
        report.summary()
    );
    assert!(
        report.distinct_header_values() >= 2,
        "the old and the new worker served: {}",
        report.summary()
    );
}

/// The unit files pass `systemd-analyze verify` with no warning, pointed at
/// the baton these tests built (`systemd/verify.sh`).
/// baton with its stderr on a pipe, and `JOURNAL_STREAM` naming that
/// pipe (as systemd names the unit's stream) or, with `matching` false,
/// another inode on the same device (a program started from the unit
/// whose stderr went elsewhere).
fn baton_on_a_stream(args: &[String], matching: bool) -> Baton {
    let (reader, writer) = std::io::pipe().unwrap();
    let stat = nix::sys::stat::fstat(&writer).unwrap();
    let inode = if matching {
        stat.st_ino
    } else {
        stat.st_ino + 1
    };
    let mut command = Command::new(baton_bin());
    command
        .args(args)
        .env("JOURNAL_STREAM", format!("{}:{inode}", stat.st_dev))
        .stderr(writer);
    Baton::spawn_with_stderr(command, reader)
}

/// baton's own lines, not its workers'.
fn batons_lines(baton: &Baton) -> Vec<String> {
    baton
        .output()
        .lines()
        .filter(|line| !line.starts_with("test-worker"))
        .map(str::to_owned)
        .collect()
}

/// `2026-12-02T01:31:19.748525Z  INFO …`: the line starts with a time.
fn starts_with_a_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 20 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[10] == b'T'
}

#[test]
fn under_the_journal_each_line_starts_with_its_priority_and_has_no_timestamp() {
    let _one = exclusive();
    for matching in [true, false] {
        let mut baton = baton_on_a_stream(&run_args(&["--ready", "notify"], &[]), matching);
        baton.wait_ready(1);
        baton.signal(Signal::SIGUSR2);
        let warning = baton.wait_for(&["signal ignored", "SIGUSR2"]);
        baton.signal(Signal::SIGTERM);
        assert!(baton.wait_exit().success(), "{}", baton.output());
        baton.wait_output_closed();
        let lines = batons_lines(&baton);
        assert!(lines.len() >= 5, "{lines:#?}");
        if matching {
            assert!(warning.starts_with("<4>WARN signal ignored"), "{warning}");
            for line in &lines {
                assert!(
                    line.starts_with("<6>INFO ") || line.starts_with("<4>WARN "),
                    "no priority prefix: {line:?}"
                );
                assert!(
                    !line.contains("Z  INFO") && !line.contains("Z  WARN"),
                    "{line}"
                );
            }
        } else {
            for line in &lines {
                assert!(starts_with_a_timestamp(line), "{line:?}");
            }
        }
    }
    // The error at exit is an error to the journal, JSON lines get the
    // prefix too (and keep their schema).
    let mut args = vec!["--log-format".to_owned(), "json".to_owned()];
    args.extend(run_args(&[], &[]));
    let worker = args.iter().position(|a| a == "--").unwrap() + 1;
    args[worker] = "/no/such/worker".to_owned();
    let mut baton = baton_on_a_stream(&args, true);
    assert_eq!(baton.wait_exit().code(), Some(1), "{}", baton.output());
    baton.wait_output_closed();
    let lines = batons_lines(&baton);
    let error = lines.last().unwrap();
    assert!(
        error.starts_with("<3>baton: error: command '/no/such/worker' not found"),
        "{lines:#?}"
    );
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/verify.sh");
    let mut command = Command::new("sh");
    command.arg(&script).arg(baton_e2e::baton_bin());
    let output = baton_e2e::output_within_deadline(command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.is_empty(),
        "{}: {:?}\n{stdout}\n{stderr}",
        script.display(),
        output.status
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        3,
        "{stdout}"
    );
}
