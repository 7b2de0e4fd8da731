//! Runs the built test-worker: binding, inheriting a socket, readiness,
//! the endpoints and the knobs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: bounds waits on events, never paces the test.
const DEADLINE: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_test-worker");

struct Worker {
    child: Child,
    pid: i32,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    exited: Option<ExitStatus>,
}

impl Worker {
    fn spawn(mut cmd: Command) -> Worker {
        for var in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "SERVER_STARTER_PORT",
            "NOTIFY_SOCKET",
            "BATON_GENERATION",
        ] {
            if !cmd.get_envs().any(|(k, _)| k == var) {
                cmd.env_remove(var);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group, so that the cleanup reaches a forked child
            // and nothing else.
            .process_group(0);
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[worker] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = i32::try_from(child.id()).unwrap();
        Worker {
            child,
            pid,
            lines,
            seen: Vec::new(),
            exited: None,
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); seen: {:?}", self.seen),
            }
        }
    }

    /// The address of the start line's `listening=`.
    fn addr(&mut self) -> String {
        let line = self.line(" listening=");
        let addr = line.rsplit_once("listening=").unwrap().1;
        assert_eq!(
            line,
            format!(
                "test-worker pid={} generation={} listening={addr}",
                self.pid,
                field(&line, "generation")
            )
        );
        addr.to_owned()
    }

    /// Every line, once stderr is closed (the worker has exited).
    fn all_lines(&mut self) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.seen.clone(),
                Err(e) => panic!("stderr not closed ({e}); seen: {:?}", self.seen),
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signals the child this test spawned (and has not reaped).
        assert_eq!(unsafe { libc::kill(self.pid, signal) }, 0);
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exited = Some(status);
                return status;
            }
            assert!(Instant::now() < deadline, "worker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // SAFETY: kills the process group this test created: the worker
            // leads it and is not reaped yet, so the id is still its own.
            unsafe { libc::killpg(self.pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no header {name}"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

fn get(addr: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

struct Notify {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify {
            _dir: dir,
            path,
            socket,
        }
    }

    fn recv(&self) -> String {
        self.socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn is_empty(&self) -> bool {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let empty = matches!(self.socket.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        self.socket.set_nonblocking(false).unwrap();
        empty
    }
}

fn worker(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    cmd
}

#[test]
fn binds_serves_and_drains_on_sigterm() {
    let notify = Notify::new();
    let mut cmd = worker(&["--bind", "127.0.0.1:0"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("BATON_GENERATION", "3");
    let mut w = Worker::spawn(cmd);
    let addr = w.addr();
    assert_eq!(field(&w.line(" listening="), "generation"), "3");
    assert_eq!(notify.recv(), "READY=1");

    let root = get(&addr, "/");
    assert_eq!(root.status, 200);
    assert_eq!(root.header("x-pid"), w.pid.to_string());
    assert_eq!(root.header("x-generation"), "3");
    assert_eq!(root.body, format!("pid={} generation=3\n", w.pid));

    let fds = get(&addr, "/fds").json();
    assert_eq!(fds["pid"], w.pid);
    let list: Vec<i64> = fds["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(list.starts_with(&[0, 1, 2]), "{list:?}");
    assert!(fds["LISTEN_FDS"].is_null() && fds["LISTEN_PID"].is_null());
    // The snapshot was taken before the socket was bound.
    assert!(
        !fds["targets"]
            .as_object()
            .unwrap()
            .values()
            .any(|t| t.as_str().unwrap().starts_with("socket:")),
        "{fds}"
    );

    let timings = get(&addr, "/timings").json();
    let main_ns = timings["main_ns"].as_u64().unwrap();
    let ready_ns = timings["ready_ns"].as_u64().unwrap();
    assert!(main_ns < ready_ns, "{timings}");
    assert!(timings["stop_ns"].is_null());
    assert_eq!(get(&addr, "/nope").status, 404);

    w.signal(libc::SIGTERM);
    assert!(w.wait().success());
    w.line("stop signal=SIGTERM draining");
    w.line("drained");
}

/// Plays baton: the socket at fd 3, LISTEN_PID set to the worker's pid by
/// a shell that then execs it (exec keeps the pid).
#[test]
fn takes_an_inherited_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fd: RawFd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\"", BIN])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http");
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut w = Worker::spawn(cmd);
    assert_eq!(w.addr(), addr);
    w.line("ready");

    let fds = get(&addr, "/fds").json();
    assert_eq!(fds["pid"], w.pid);
    assert_eq!(fds["LISTEN_PID"], w.pid.to_string());
    assert_eq!(fds["LISTEN_FDS"], "1");
    assert_eq!(fds["LISTEN_FDNAMES"], "http");
    assert!(
        fds["targets"]["3"].as_str().unwrap().starts_with("socket:"),
        "{fds}"
    );
    assert_eq!(get(&addr, "/").header("x-pid"), w.pid.to_string());

    w.signal(libc::SIGTERM);
    assert!(w.wait().success());
    // The socket outlives the worker: connections queue for the next one.
    TcpStream::connect(&addr).unwrap();
}

#[test]
fn a_foreign_listen_pid_is_not_ours() {
    let mut cmd = worker(&[]);
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    let mut w = Worker::spawn(cmd);
    assert_eq!(w.wait().code(), Some(1));
    w.line("error: no inherited listening socket");
}

#[test]
fn exit_at_start() {
    let mut w = Worker::spawn(worker(&["--bind", "127.0.0.1:0", "--exit-at-start", "7"]));
    w.addr();
    assert_eq!(w.wait().code(), Some(7));
    w.line("exit-at-start code=7");
}

#[test]
fn from_gen_makes_only_later_generations_misbehave() {
    for (generation, ready) in [("1", true), ("2", false)] {
        let notify = Notify::new();
        let mut cmd = worker(&["--bind", "127.0.0.1:0", "--never-ready", "--from-gen", "2"]);
        cmd.env("NOTIFY_SOCKET", &notify.path)
            .env("BATON_GENERATION", generation);
        let mut w = Worker::spawn(cmd);
        w.addr();
        if ready {
            assert_eq!(notify.recv(), "READY=1");
        } else {
            w.line("never-ready");
        }
        w.signal(libc::SIGTERM);
        assert!(w.wait().success());
        assert!(notify.is_empty());
        assert_eq!(w.all_lines().iter().any(|l| l.ends_with(" ready")), ready);
    }
}

#[test]
fn startup_delay_comes_before_ready() {
    let notify = Notify::new();
    let mut cmd = worker(&["--bind", "127.0.0.1:0", "--startup-delay", "300ms"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut w = Worker::spawn(cmd);
    let addr = w.addr();
    assert_eq!(notify.recv(), "READY=1");
    let timings = get(&addr, "/timings").json();
    let waited = timings["ready_ns"].as_u64().unwrap() - timings["main_ns"].as_u64().unwrap();
    assert!(waited >= 300_000_000, "{timings}");
}

#[test]
fn crash_after_answers_then_aborts() {
    let mut w = Worker::spawn(worker(&["--bind", "127.0.0.1:0", "--crash-after", "2"]));
    let addr = w.addr();
    w.line("ready");
    assert_eq!(get(&addr, "/").status, 200);
    assert_eq!(get(&addr, "/").status, 200);
    assert_eq!(w.wait().signal(), Some(libc::SIGABRT));
    w.line("crash-after requests=2");
}

#[test]
fn ignore_stop_keeps_serving() {
    let mut w = Worker::spawn(worker(&["--bind", "127.0.0.1:0", "--ignore-stop"]));
    let addr = w.addr();
    w.line("ready");
    w.signal(libc::SIGTERM);
    w.line("stop signal=SIGTERM ignored");
    assert_eq!(get(&addr, "/").status, 200);
    let timings = get(&addr, "/timings").json();
    assert!(timings["stop_ns"].as_u64().unwrap() > timings["ready_ns"].as_u64().unwrap());
    assert!(w.child.try_wait().unwrap().is_none());
}

#[test]
fn fork_child_outlives_the_worker() {
    let mut w = Worker::spawn(worker(&["--bind", "127.0.0.1:0", "--fork-child"]));
    let line = w.line("fork-child");
    let child: i32 = line.rsplit_once("pid=").unwrap().1.parse().unwrap();
    w.line("ready");
    // SAFETY: the whole group, as baton stops a generation; the worker is
    // not reaped yet, so the group id is its own.
    assert_eq!(unsafe { libc::killpg(w.pid, libc::SIGTERM) }, 0);
    assert!(w.wait().success());
    // Still there, in the worker's process group, despite the SIGTERM
    // that reached the whole group.
    // SAFETY: reads the process group of the child the worker forked; it
    // ignores SIGTERM and cannot have exited, so the pid is still its own.
    assert_eq!(unsafe { libc::getpgid(child) }, w.pid);
    // SAFETY: as above; this ends it.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
}
