//! The end-to-end harness: build the real `baton` and `test-worker`, start
//! baton, read every line it writes, and wait on those lines.
//!
//! A test keeps reading baton's output at all times (a full pipe would
//! stall the supervisor), waits on events with generous deadlines, and
//! never on bare sleeps. Each baton gets a unique token in its environment,
//! which every process it starts inherits: [`processes_with_token`] finds
//! whatever of its tree is still alive.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The generous deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The environment variable that marks every process of one baton's tree.
pub const TOKEN_VAR: &str = "BATON_E2E_TOKEN";

mod build;
pub mod recipes;

/// The `baton` binary, built (or found up to date) once per test process.
pub fn baton_bin() -> &'static Path {
    workspace_bin("baton")
}

/// The `test-worker` binary, built (or found up to date) once per test process.
pub fn test_worker_bin() -> &'static Path {
    workspace_bin("test-worker")
}

/// A binary of this workspace the tests run (`baton`, `test-worker`,
/// `listenfd-server`), built (or found up to date) once per test process
/// with the others, in the build of the test itself (see `src/build.rs`).
pub fn workspace_bin(name: &str) -> &'static Path {
    static BINS: OnceLock<build::Binaries> = OnceLock::new();
    let index = build::BINARIES
        .iter()
        .position(|&bin| bin == name)
        .unwrap_or_else(|| panic!("{name} is not one of {:?}", build::BINARIES));
    &BINS.get_or_init(build::build).0[index]
}

/// Load tests share two cores: run them one at a time.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every line baton and its workers wrote, in order, shared with the readers.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    /// How many of the two pipes reached end-of-file.
    closed: AtomicU64,
}

/// A running `baton`, whose output is read all the time.
pub struct Baton {
    child: Child,
    lines: Arc<Lines>,
    token: String,
    control: PathBuf,
    status: Option<ExitStatus>,
}

impl Baton {
    /// Start `baton ARGS…` (for instance `run --listen … -- worker …`).
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Baton {
        let mut command = Command::new(baton_bin());
        command.args(args);
        Baton::spawn(command)
    }

    /// Start a prepared command (its program must be baton).
    pub fn spawn(command: Command) -> Baton {
        Baton::launch(command, None)
    }

    /// Start a prepared command whose stderr the test has set to the
    /// write end of the pipe `stderr` reads (to know what it is): its lines
    /// are read from there.
    pub fn spawn_with_stderr(command: Command, stderr: std::io::PipeReader) -> Baton {
        Baton::launch(command, Some(stderr))
    }

    fn launch(mut command: Command, stderr: Option<std::io::PipeReader>) -> Baton {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let token = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A control socket of its own, so that batons of parallel tests,
        // benches or a demo never meet at the default path.
        let control = std::env::temp_dir().join(format!("baton-e2e-{token}.sock"));
        command
            .env(TOKEN_VAR, &token)
            .env("BATON_CONTROL", &control)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if stderr.is_none() {
            command.stderr(Stdio::piped());
        }
        let mut child = command.spawn().expect("cannot start baton");
        // The test's copy of the write end would keep the pipe open.
        drop(command);
        let lines = Arc::new(Lines::default());
        read_lines(child.stdout.take().expect("piped"), lines.clone());
        match stderr {
            Some(pipe) => read_lines(pipe, lines.clone()),
            None => read_lines(child.stderr.take().expect("piped"), lines.clone()),
        }
        Baton {
            child,
            lines,
            token,
            control,
            status: None,
        }
    }

    /// baton's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The path of its control socket (`BATON_CONTROL`, unless the test
    /// set `--control` itself).
    pub fn control(&self) -> &Path {
        &self.control
    }

    /// The token every process of this baton's tree carries.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Send baton a signal.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("cannot signal baton");
    }

    /// Everything written so far.
    pub fn output(&self) -> String {
        self.lines.lines.lock().unwrap().join("\n")
    }

    /// How many lines so far contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        let lines = self.lines.lines.lock().unwrap();
        lines.iter().filter(|l| matches(l, needles)).count()
    }

    /// Wait until `check` finds what it looks for in the lines so far
    /// (told whether the output has ended); panics with the whole output,
    /// naming `what`, after [`DEADLINE`] or once `check` says it never will.
    fn wait_until<T>(
        &self,
        what: impl std::fmt::Display,
        mut check: impl FnMut(&[String], bool) -> Option<Result<T, &'static str>>,
    ) -> T {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.lines.lines.lock().unwrap();
        loop {
            let ended = self.lines.closed.load(Ordering::SeqCst) == 2;
            let now = Instant::now();
            let why = match check(&lines, ended) {
                Some(Ok(found)) => return found,
                Some(Err(why)) => why,
                None if now >= deadline => "within the deadline",
                None => {
                    lines = self
                        .lines
                        .changed
                        .wait_timeout(lines, deadline - now)
                        .unwrap()
                        .0;
                    continue;
                }
            };
            let output = lines.join("\n");
            drop(lines);
            panic!("{what} {why}; output:\n{output}");
        }
    }

    /// Wait for the `nth` (1-based) line containing every one of `needles`;
    /// panics with the whole output after [`DEADLINE`].
    pub fn wait_for_nth(&self, nth: usize, needles: &[&str]) -> String {
        self.wait_until(
            format_args!("no line #{nth} with {needles:?}"),
            |lines, ended| match lines.iter().filter(|l| matches(l, needles)).nth(nth - 1) {
                Some(line) => Some(Ok(line.clone())),
                // Both pipes closed: no line will ever come.
                None if ended => Some(Err("before baton's output ended")),
                None => None,
            },
        )
    }

    /// Wait for the first line containing every one of `needles`.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_for_nth(1, needles)
    }

    /// The address of the listener named `name`, from its `listening` line.
    pub fn address(&self, name: &str) -> SocketAddr {
        let line = self.wait_for(&["listening", &format!("name={name} ")]);
        field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no TCP address in {line:?}"))
    }

    /// The address of its metrics server, from its `metrics addr=` line
    /// (`--metrics 127.0.0.1:0` picks a free port).
    pub fn metrics_address(&self) -> SocketAddr {
        let line = self.wait_for(&["metrics addr="]);
        field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no TCP address in {line:?}"))
    }

    /// Run `baton ctl --control PATH ARGS…` against this baton, to its end.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(baton_bin());
        command
            .arg("ctl")
            .arg("--control")
            .arg(&self.control)
            .args(args);
        output_within_deadline(command)
    }

    /// `baton ctl --json ARGS…`: how it exited, and the response it printed.
    pub fn ctl_json(&self, args: &[&str]) -> (ExitStatus, serde_json::Value) {
        let mut all = vec!["--json"];
        all.extend(args);
        let output = self.ctl(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "`baton ctl {all:?}` printed no JSON ({e}):\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status, json)
    }

    /// Wait until generation `generation` is the active one; returns its pid.
    pub fn wait_ready(&self, generation: u64) -> i32 {
        let line = self.wait_for(&[&format!(" ready generation={generation} ")]);
        pid_in(&line)
    }

    /// Wait until baton's stdout and stderr are closed by every process
    /// that held them: then the output is complete.
    pub fn wait_output_closed(&self) {
        self.wait_until("baton's output stayed open", |_, ended| {
            ended.then_some(Ok(()))
        });
    }

    /// Wait for baton to exit; panics with the output after [`DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "baton did not exit within {DEADLINE:?}; output:\n{}",
                    self.output()
                );
            }
            // Child::wait has no timeout; poll the exit at a short interval.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        // A failed test must not leave baton behind; its guardian then
        // kills the workers.
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn matches(line: &str, needles: &[&str]) -> bool {
    needles.iter().all(|n| line.contains(n))
}

fn read_lines(pipe: impl Read + Send + 'static, lines: Arc<Lines>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("BATON_E2E_ECHO").is_some() {
                eprintln!("{line}");
            }
            lines.lines.lock().unwrap().push(line);
            lines.changed.notify_all();
        }
        let _guard = lines.lines.lock().unwrap();
        lines.closed.fetch_add(1, Ordering::SeqCst);
        lines.changed.notify_all();
    });
}

/// The value of `key=value` in a log line (quotes removed). The last
/// occurrence counts: baton writes each line at once, but a worker's
/// unbuffered write may land in front of it on the same line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!(" {key}=");
    let start = line.rfind(&pattern)? + pattern.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// The `pid=` of a log line.
pub fn pid_in(line: &str) -> i32 {
    field(line, "pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Pids of live processes whose environment holds `BATON_E2E_TOKEN=token`
/// (zombies have no environment and are not counted).
pub fn processes_with_token(token: &str) -> Vec<i32> {
    let needle = format!("{TOKEN_VAR}={token}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// The value of the variable `name` in the environment process `pid`
/// started with (`/proc/PID/environ`), e.g. a worker's `NOTIFY_SOCKET`.
pub fn environment_of(pid: i32, name: &str) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|var| {
        let value = var.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(std::ffi::OsStr::from_bytes(value).to_owned())
    })
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Wait until `done` holds, checking every 20 ms; false after [`DEADLINE`].
/// For process states the kernel offers no event for (a process gone).
pub fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Load-client traffic against one address. Its clients run on a runtime
/// of their own while the test thread waits on baton's output.
pub struct Traffic {
    rt: tokio::runtime::Runtime,
    load: baton_loadgen::Load,
}

impl Traffic {
    /// Start `clients` clients in `mode`, bounded to two minutes, against
    /// a TCP address or a unix socket (`Target::Unix`).
    pub fn start(
        addr: impl Into<baton_loadgen::Target>,
        mode: baton_loadgen::Mode,
        clients: usize,
    ) -> Traffic {
        let rt = runtime();
        let load = {
            let _enter = rt.enter();
            baton_loadgen::Load::start(baton_loadgen::Config {
                mode,
                clients,
                duration: Duration::from_secs(120),
                ..baton_loadgen::Config::new(addr)
            })
            .expect("a valid load")
        };
        Traffic { rt, load }
    }

    /// Wait until `more` requests beyond those so far have succeeded.
    pub fn serve(&self, more: u64) {
        let target = self.load.ok_so_far() + more;
        self.rt
            .block_on(self.load.wait_for(|s| s.ok >= target))
            .expect("the load runs");
    }

    /// Wait until the counts satisfy `done`.
    pub fn wait_for(&self, done: impl FnMut(&baton_loadgen::Snapshot) -> bool) {
        self.rt
            .block_on(self.load.wait_for(done))
            .expect("the load runs");
    }

    /// Stop opening new requests (those in flight go on).
    pub fn stop(&self) {
        self.load.stop();
    }

    /// Stop opening requests, let those in flight finish, and report.
    pub fn finish(self) -> baton_loadgen::Report {
        self.load.stop();
        self.rt.block_on(self.load.finish())
    }
}

/// Assert that no request failed, showing the first errors if some did.
pub fn assert_no_failures(report: &baton_loadgen::Report) {
    assert_eq!(
        report.failed_total(),
        0,
        "{}\n{:?}",
        report.summary(),
        report.error_samples
    );
}

/// A runtime for the load client, whose clients run on its threads while
/// the test thread blocks on baton's output.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// One `GET path` over a fresh connection (HTTP/1.0, so the server closes
/// it); returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(addr, "GET", path);
    (status, body)
}

/// Run a command to its end with [`DEADLINE`] (killed and a panic after
/// it); its stdin is null, its stdout and stderr are captured.
pub fn output_within_deadline(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("wait for the command"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            panic!("{command:?} did not finish within {DEADLINE:?}");
        }
    }
}

/// One request over a fresh connection (HTTP/1.0, so the server closes
/// it); returns the status code, the head (status line and headers) and
/// the body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, head.to_owned(), body.to_owned())
}

/// The command line of `baton run` with one TCP listener on an ephemeral
/// loopback port named `http`, the given baton flags, then `test-worker`
/// with the given flags.
pub fn run_args(baton_flags: &[&str], worker_flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--listen", "http=127.0.0.1:0"]
        .iter()
        .chain(baton_flags)
        .map(|s| s.to_string())
        .collect();
    args.push("--".into());
    args.push(test_worker_bin().display().to_string());
    args.extend(worker_flags.iter().map(|s| s.to_string()));
    args
}

/// `bin`, or a copy every user may run when it sits in a private
/// directory (a target dir under /root): for tests that run baton or a
/// worker as another user.
pub fn runnable_by_all(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let searchable = bin.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    });
    if searchable {
        return bin.to_owned();
    }
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("baton-e2e-bin")
            .tempdir_in("/tmp")
            .expect("a directory for the copies")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("make it searchable");
        dir
    });
    let copy = dir.join(bin.file_name().expect("a file name"));
    if !copy.exists() {
        std::fs::copy(bin, &copy).expect("copy the binary");
    }
    copy
}

/// A loopback port free right now: bound, read, released (for a server
/// or tool whose configuration must name its port; it takes no port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
