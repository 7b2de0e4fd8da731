//! Reloads under load, side by side with the other ways to restart a server.
//!
//! ```sh
//! cargo bench --bench reload               # the full run (about 6 minutes on 2 cores)
//! cargo bench --bench reload -- --quick    # a short run (under a minute)
//! cargo bench --bench reload -- --svg /tmp/chart.svg   # write the chart elsewhere
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it returns at
//! once.
//!
//! Every system serves the same `test-worker` on 127.0.0.1, gets the same
//! closed-loop load (the `baton-loadgen` client: no pool, no retry) for the
//! same time, and is reloaded on the same schedule:
//!
//! - `baton`: `baton run --ready notify`, reload = SIGHUP;
//! - `restart`: SIGTERM the worker, wait for it to exit, start a new one
//!   that binds the port itself (`test-worker --bind`);
//! - `start_server`: Server::Starter (`start_server --port=… -- test-worker`),
//!   reload = SIGHUP; skipped when it is not installed;
//! - `fd-holder`: this bench holds the socket and restarts the worker by
//!   killing it (SIGKILL, then a new worker on the same socket: what a
//!   socket holder such as systemfd does under a file watcher);
//!   `fd-holder-term` does the same with SIGTERM and a wait for the exit.
//!
//! A reload is triggered every R ms; one that is still going on when the
//! next is due delays it (the next starts as soon as it is done), so every
//! reload is timed on its own: trigger → new worker ready → old worker gone.
//!
//! It also measures what baton costs when nothing reloads (interleaved A/B
//! runs against the worker bound directly), what baton adds to a reload
//! (CLOCK_MONOTONIC stamps taken by this bench and by the workers
//! themselves, not baton's logs), and a soak of many reloads in a row.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use baton_e2e::{Baton, run_args, runtime, test_worker_bin};
use baton_loadgen::{Config, FailureKind, Load, Mode, Report};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::runtime::Runtime;

/// A request that takes longer fails as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long anything the bench waits for (a ready worker, an exit) may take.
const WAIT: Duration = Duration::from_secs(30);

/// What to run, from the command line.
struct Plan {
    quick: bool,
    /// Length of one row's load.
    duration: Duration,
    /// The reload intervals R.
    intervals: Vec<Duration>,
    /// Concurrent clients of a row.
    clients: usize,
    /// Interleaved A/B pairs per traffic kind for the cost of baton.
    ab_pairs: usize,
    ab_duration: Duration,
    /// Reloads sampled for baton's own reload latency.
    latency_samples: usize,
    soak_reloads: u64,
    /// After the soak: a pause this long (past baton's 60 s ready-timeout
    /// timers), then this many more reloads, to tell memory held for a
    /// while from memory lost.
    soak_settle: Option<(Duration, u64)>,
    svg: PathBuf,
}

impl Plan {
    fn from_args(args: &[String]) -> Plan {
        let quick = args.iter().any(|a| a == "--quick");
        let svg = args
            .iter()
            .position(|a| a == "--svg")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if quick {
                    std::env::temp_dir().join("baton-benchmarks-reload-quick.svg")
                } else {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks-reload.svg")
                }
            });
        if quick {
            Plan {
                quick,
                duration: Duration::from_secs(2),
                intervals: vec![Duration::from_millis(100)],
                clients: 16,
                ab_pairs: 5,
                ab_duration: Duration::from_millis(500),
                latency_samples: 10,
                soak_reloads: 100,
                soak_settle: None,
                svg,
            }
        } else {
            Plan {
                quick,
                duration: Duration::from_secs(10),
                intervals: vec![Duration::from_millis(500), Duration::from_millis(100)],
                clients: 16,
                ab_pairs: 15,
                ab_duration: Duration::from_secs(1),
                latency_samples: 40,
                soak_reloads: 1000,
                soak_settle: Some((Duration::from_secs(61), 300)),
                svg,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let plan = Plan::from_args(&args);
    let began = Instant::now();
    eprintln!("building baton and test-worker (release) …");
    let _ = (baton_e2e::baton_bin(), test_worker_bin());
    let machine = Machine::describe();
    println!("{}", machine.header(&plan));

    let rt = runtime();
    let _enter = rt.enter();

    let mut systems = vec![System::Baton, System::Restart];
    if machine.start_server.is_some() {
        systems.push(System::StartServer);
    } else {
        println!(
            "note: start_server (Debian's libserver-starter-perl) is not installed: its rows are skipped\n"
        );
    }
    systems.extend([System::FdHolder, System::FdHolderTerm]);

    let mut rows = Vec::new();
    for &system in &systems {
        for &interval in &plan.intervals {
            for mode in [Mode::NewConnection, Mode::KeepAlive] {
                eprintln!("{} · {mode} · reload every {interval:?} …", system.name());
                let row = run_row(&rt, system, mode, interval, &plan);
                eprintln!("    {}", row.report.summary());
                rows.push(row);
            }
        }
    }
    println!("## Reloads under load\n");
    println!(
        "Each row: a fresh system serving test-worker on 127.0.0.1, {} closed-loop clients for {} s, a reload \
         triggered every R (one still going on when the next is due delays it). refused = ECONNREFUSED; \
         reset = reset or closed before a complete response; other = anything else. Latencies over the \
         successful requests. ready = trigger → new worker ready; done = trigger → ready and old worker gone. \
         supervisor = baton's or start_server's own process: RSS at the end, CPU time over the row.\n",
        plan.clients,
        plan.duration.as_secs_f64()
    );
    println!("{}", rows_table(&rows));
    println!("{}", failure_notes(&rows));

    eprintln!("the cost of baton: interleaved A/B runs …");
    let cost = cost_of_baton(&rt, &plan);
    println!("## The cost of baton (no reloads)\n");
    println!("{}", cost_table(&cost, &plan));

    eprintln!("baton's own reload latency …");
    let latency = reload_latency(&plan);
    println!("## What baton adds to a reload\n");
    println!("{}", latency.table());

    eprintln!("soak: {} reloads in a row …", plan.soak_reloads);
    let soak = soak(&rt, &plan);
    println!("## Soak\n");
    println!("{}", soak.table());

    println!("## Targets (reported, not asserted)\n");
    println!("{}", targets(&rows, &cost, &latency, &soak));

    match chart(&rows, &plan) {
        Ok(()) => println!("chart: {}", plan.svg.display()),
        Err(err) => println!("chart: cannot write {}: {err}", plan.svg.display()),
    }
    println!(
        "load average at the end: {}\nthe whole bench took {:.0} s",
        load_average(),
        began.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// The systems

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Baton,
    Restart,
    StartServer,
    FdHolder,
    FdHolderTerm,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Baton => "baton",
            System::Restart => "restart",
            System::StartServer => "start_server",
            System::FdHolder => "fd-holder",
            System::FdHolderTerm => "fd-holder-term",
        }
    }

    fn start(self) -> Box<dyn Server> {
        match self {
            System::Baton => Box::new(BatonServer::start()),
            System::Restart => Box::new(RestartServer::start()),
            System::StartServer => Box::new(StartServer::start()),
            System::FdHolder => Box::new(FdHolder::start(Signal::SIGKILL)),
            System::FdHolderTerm => Box::new(FdHolder::start(Signal::SIGTERM)),
        }
    }
}

/// One reload, as the bench saw it.
#[derive(Debug, Clone, Copy)]
struct Reload {
    trigger: Instant,
    /// The new worker is ready (as its supervisor decides: for baton its
    /// READY=1, for start_server the end of its `--interval`).
    ready: Instant,
    /// The old worker has exited.
    gone: Instant,
}

impl Reload {
    fn until_ready(&self) -> Duration {
        self.ready - self.trigger
    }

    /// Trigger → new worker ready and old worker gone.
    fn until_done(&self) -> Duration {
        self.ready.max(self.gone) - self.trigger
    }
}

/// A running system under test.
trait Server {
    fn addr(&self) -> SocketAddr;
    /// Triggers a reload and waits until it is complete.
    fn reload(&mut self) -> Reload;
    /// The supervisor process whose RSS and CPU time the row reports.
    fn supervisor_pid(&self) -> Option<i32>;
    /// Stops everything it started.
    fn stop(&mut self);
    /// Anything odd the system did during the row.
    fn notes(&self) -> Option<String> {
        None
    }
}

/// `baton run --listen http=127.0.0.1:0 --ready notify -- test-worker`.
struct BatonServer {
    baton: Baton,
    generation: u64,
    addr: SocketAddr,
}

impl BatonServer {
    fn start() -> BatonServer {
        let baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
        baton.wait_ready(1);
        let addr = baton.address("http");
        BatonServer {
            baton,
            generation: 1,
            addr,
        }
    }
}

impl Server for BatonServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn reload(&mut self) -> Reload {
        let trigger = Instant::now();
        self.baton.signal(Signal::SIGHUP);
        self.generation += 1;
        self.baton.wait_ready(self.generation);
        let ready = Instant::now();
        wait_exited(&self.baton, self.generation - 1);
        Reload {
            trigger,
            ready,
            gone: Instant::now(),
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        Some(self.baton.pid())
    }

    fn stop(&mut self) {
        self.baton.signal(Signal::SIGTERM);
        let status = self.baton.wait_exit();
        assert!(status.success(), "baton: {status:?}");
    }
}

/// Waits for baton's `exited` line of `generation`.
fn wait_exited(baton: &Baton, generation: u64) -> String {
    baton.wait_for(&["exited", &format!(" generation={generation} ")])
}

/// A datagram socket a worker sends `READY=1` to (`NOTIFY_SOCKET`), so
/// the bench knows when a worker it started itself is serving.
struct Notify {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Notify {
            _dir: dir,
            path,
            socket,
        }
    }

    /// Waits for `READY=1` from `worker`; panics if it exits first.
    fn wait_ready(&self, worker: &mut Child) -> Instant {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 512];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") => {
                    return Instant::now();
                }
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("notify socket: {err}"),
            }
            if let Some(status) = worker.try_wait().expect("try_wait") {
                panic!(
                    "worker {} exited before it was ready: {status}",
                    worker.id()
                );
            }
            assert!(Instant::now() < deadline, "no READY=1 within {WAIT:?}");
        }
    }
}

/// A child that is killed (by its pid) if it is still running when dropped.
struct Owned(Child);

impl Owned {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `signal` and waits for the exit.
    fn stop(&mut self, signal: Signal) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), signal);
            wait_child(&mut self.0);
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits for `child` to exit; panics after [`WAIT`].
fn wait_child(child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit within {WAIT:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `test-worker --bind 127.0.0.1:PORT`, telling `notify` when it is ready.
fn spawn_bound_worker(port: u16, notify: &Notify) -> Owned {
    let child = Command::new(test_worker_bin())
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start test-worker");
    Owned(child)
}

/// Stop the worker (SIGTERM, wait), start a new one that binds the port
/// itself: what a plain service restart does.
struct RestartServer {
    port: u16,
    notify: Notify,
    worker: Owned,
}

impl RestartServer {
    fn start() -> RestartServer {
        let port = free_port();
        let notify = Notify::new();
        let mut worker = spawn_bound_worker(port, &notify);
        notify.wait_ready(&mut worker.0);
        RestartServer {
            port,
            notify,
            worker,
        }
    }
}

impl Server for RestartServer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn reload(&mut self) -> Reload {
        let trigger = Instant::now();
        self.worker.stop(Signal::SIGTERM);
        let gone = Instant::now();
        self.worker = spawn_bound_worker(self.port, &self.notify);
        let ready = self.notify.wait_ready(&mut self.worker.0);
        Reload {
            trigger,
            ready,
            gone,
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        None
    }

    fn stop(&mut self) {
        self.worker.stop(Signal::SIGTERM);
    }
}

/// Holds the listening socket and restarts the worker by killing it, like
/// systemfd under a file watcher: the socket never closes, but the old
/// worker is gone before the new one serves.
struct FdHolder {
    socket: socket2::Socket,
    addr: SocketAddr,
    signal: Signal,
    notify: Notify,
    worker: Owned,
}

impl FdHolder {
    fn start(signal: Signal) -> FdHolder {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        socket.bind(&addr.into()).expect("bind");
        // The same accept queue length as baton's default.
        socket.listen(1024).expect("listen");
        let addr = socket
            .local_addr()
            .expect("local_addr")
            .as_socket()
            .expect("an inet address");
        let notify = Notify::new();
        let mut worker = spawn_fd_worker(socket.as_raw_fd(), &notify);
        notify.wait_ready(&mut worker.0);
        FdHolder {
            socket,
            addr,
            signal,
            notify,
            worker,
        }
    }
}

/// `test-worker` with the socket at fd 3, `LISTEN_FDS=1` and `LISTEN_PID`
/// set to its own pid by a shell that then execs it.
fn spawn_fd_worker(fd: RawFd, notify: &Notify) -> Owned {
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
        .arg(test_worker_bin())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and
    // exec; `fd` is an open descriptor of this process.
    unsafe {
        command.pre_exec(move || {
            let rc = if fd == 3 {
                // dup2 onto itself would keep FD_CLOEXEC: clear it.
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Owned(command.spawn().expect("cannot start sh -c test-worker"))
}

impl Server for FdHolder {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn reload(&mut self) -> Reload {
        let trigger = Instant::now();
        self.worker.stop(self.signal);
        let gone = Instant::now();
        self.worker = spawn_fd_worker(self.socket.as_raw_fd(), &self.notify);
        let ready = self.notify.wait_ready(&mut self.worker.0);
        Reload {
            trigger,
            ready,
            gone,
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        None
    }

    fn stop(&mut self) {
        self.worker.stop(Signal::SIGTERM);
    }
}

/// Every line a process wrote, with the instant it was read.
#[derive(Default)]
struct TimedLines {
    lines: Mutex<Vec<(Instant, String)>>,
    changed: Condvar,
}

impl TimedLines {
    fn read(self: &Arc<Self>, pipe: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("BATON_E2E_ECHO").is_some() {
                    eprintln!("{line}");
                }
                lines.lines.lock().unwrap().push((Instant::now(), line));
                lines.changed.notify_all();
            }
        });
    }

    fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// Waits for the `nth` (1-based) line containing every one of `needles`.
    fn wait_nth(&self, nth: usize, needles: &[&str]) -> (Instant, String) {
        self.wait_nth_within(nth, needles, WAIT).unwrap_or_else(|| {
            let lines = self.lines.lock().unwrap();
            let output: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
            panic!(
                "no line #{nth} with {needles:?} within {WAIT:?}; output:\n{}",
                output.join("\n")
            );
        })
    }

    /// The `nth` line containing every one of `needles`, if it comes
    /// within `limit`.
    fn wait_nth_within(
        &self,
        nth: usize,
        needles: &[&str],
        limit: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(found) = lines
                .iter()
                .filter(|(_, l)| needles.iter().all(|n| l.contains(n)))
                .nth(nth - 1)
            {
                return Some(found.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}

/// `start_server --port=127.0.0.1:PORT -- test-worker` (Server::Starter);
/// SIGHUP starts a new worker, waits `--interval` (1 s by default), then
/// sends SIGTERM to the old one.
///
/// start_server can miss a SIGHUP: its signal handler pushes the signal,
/// but a HUP that lands just as its main loop goes back to `wait()` (after
/// it decided there was nothing to do, before it armed the handler to
/// interrupt the wait) leaves it blocked until some child exits. The bench
/// triggers right after the previous reload ended, which is exactly then.
/// A HUP not acknowledged (`received HUP`) within a second is counted as
/// lost, and start_server is woken with SIGALRM, which it ignores otherwise;
/// the reload is timed from the first SIGHUP.
struct StartServer {
    process: Owned,
    lines: Arc<TimedLines>,
    port: u16,
    worker: i32,
    lost_hups: usize,
}

impl StartServer {
    fn start() -> StartServer {
        let port = free_port();
        let mut child = Command::new("start_server")
            .arg(format!("--port=127.0.0.1:{port}"))
            .arg("--")
            .arg(test_worker_bin())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start start_server");
        let lines = Arc::new(TimedLines::default());
        lines.read(child.stdout.take().expect("piped"));
        lines.read(child.stderr.take().expect("piped"));
        let (_, started) = lines.wait_nth(1, &["starting new worker "]);
        let worker = last_number(&started);
        lines.wait_nth(1, &[&format!("test-worker pid={worker} ready")]);
        StartServer {
            process: Owned(child),
            lines,
            port,
            worker,
            lost_hups: 0,
        }
    }
}

impl Drop for StartServer {
    /// After a panic: SIGTERM lets start_server stop its workers; killing
    /// it outright would leave them behind.
    fn drop(&mut self) {
        let child = &mut self.process.0;
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.process.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.process.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(Pid::from_raw(self.worker), Signal::SIGKILL);
    }
}

/// The number at the end of a line (`starting new worker 1234`).
fn last_number(line: &str) -> i32 {
    line.rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

impl Server for StartServer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn reload(&mut self) -> Reload {
        let running = self.lines.count("new worker is now running");
        let started = self.lines.count("starting new worker ");
        let heard = self.lines.count("received HUP");
        let pid = Pid::from_raw(self.process.pid());
        let trigger = Instant::now();
        let _ = kill(pid, Signal::SIGHUP);
        if self
            .lines
            .wait_nth_within(heard + 1, &["received HUP"], Duration::from_secs(1))
            .is_none()
        {
            self.lost_hups += 1;
            let _ = kill(pid, Signal::SIGALRM);
        }
        let (_, line) = self.lines.wait_nth(started + 1, &["starting new worker "]);
        let old = std::mem::replace(&mut self.worker, last_number(&line));
        let (ready, _) = self
            .lines
            .wait_nth(running + 1, &["new worker is now running"]);
        let (gone, _) = self.lines.wait_nth(1, &[&format!("old worker {old} died")]);
        Reload {
            trigger,
            ready,
            gone,
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        Some(self.process.pid())
    }

    fn stop(&mut self) {
        self.process.stop(Signal::SIGTERM);
    }

    fn notes(&self) -> Option<String> {
        (self.lost_hups > 0).then(|| {
            format!(
                "{} SIGHUP(s) lost by start_server (no `received HUP` within 1 s; woken with SIGALRM, reload timed from the first SIGHUP)",
                self.lost_hups
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Rows

/// One system × traffic kind × reload interval.
struct Row {
    system: System,
    mode: Mode,
    interval: Duration,
    report: Report,
    /// Trigger offsets from the start of the load, and the timings.
    reloads: Vec<(Duration, Reload)>,
    /// The supervisor's RSS at the end (kB) and CPU time over the row.
    supervisor: Option<(u64, Duration)>,
    notes: Option<String>,
}

fn run_row(rt: &Runtime, system: System, mode: Mode, interval: Duration, plan: &Plan) -> Row {
    let mut server = system.start();
    let pid = server.supervisor_pid();
    let cpu_before = pid.map(|p| proc_stats(p).cpu);
    let start = Instant::now();
    let load = Load::start(Config {
        mode,
        clients: plan.clients,
        duration: plan.duration,
        timeout: REQUEST_TIMEOUT,
        ..Config::new(server.addr())
    })
    .expect("a valid load config");
    let end = start + plan.duration;
    let mut reloads = Vec::new();
    let mut next = start + interval;
    // The last reload is triggered at least R before the load ends.
    while next + interval <= end {
        sleep_until(next);
        let reload = server.reload();
        reloads.push((reload.trigger - start, reload));
        next = (next + interval).max(Instant::now());
    }
    let report = rt.block_on(load.finish());
    let supervisor = pid.map(|p| {
        let stats = proc_stats(p);
        (stats.rss_kb, stats.cpu - cpu_before.unwrap_or_default())
    });
    let notes = server.notes();
    server.stop();
    Row {
        system,
        mode,
        interval,
        report,
        reloads,
        supervisor,
        notes,
    }
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Failures in the three columns of the table.
fn failures(report: &Report) -> (u64, u64, u64) {
    let refused = report.failures(FailureKind::Refused);
    let reset = report.failures(FailureKind::Reset) + report.failures(FailureKind::Closed);
    (refused, reset, report.failed_total() - refused - reset)
}

fn rows_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| system | traffic | R | reloads | requests | failed | refused | reset | other | failed/reload | req/s | p50 | p99 | max | reload: ready (med / max) | reload: done (med / max) | supervisor RSS | supervisor CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let r = &row.report;
        let (refused, reset, other) = failures(r);
        let n = row.reloads.len();
        let per_reload = if n == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", r.failed_total() as f64 / n as f64)
        };
        let ready: Vec<Duration> = row.reloads.iter().map(|(_, t)| t.until_ready()).collect();
        let done: Vec<Duration> = row.reloads.iter().map(|(_, t)| t.until_done()).collect();
        let (rss, cpu) = match row.supervisor {
            Some((rss, cpu)) => (
                format!("{:.1} MB", rss as f64 / 1024.0),
                format!("{} ms", cpu.as_millis()),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let failed = if row.system == System::Baton && r.failed_total() > 0 {
            format!("**{}** (target 0)", r.failed_total())
        } else {
            r.failed_total().to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} ms | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} / {} | {} / {} | {} | {} |",
            row.system.name(),
            row.mode,
            row.interval.as_millis(),
            n,
            r.started,
            failed,
            refused,
            reset,
            other,
            per_reload,
            r.requests_per_second(),
            ms(r.percentile(50.0)),
            ms(r.percentile(99.0)),
            ms(r.latencies.max()),
            ms(median(&ready)),
            ms(ready.iter().max().copied()),
            ms(median(&done)),
            ms(done.iter().max().copied()),
            rss,
            cpu,
        );
    }
    out
}

/// The kinds behind "reset" and "other", and a sample error, per row that
/// failed.
fn failure_notes(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        if let Some(notes) = &row.notes {
            let _ = writeln!(
                out,
                "- {} · {} · {} ms: {notes}",
                row.system.name(),
                row.mode,
                row.interval.as_millis(),
            );
        }
    }
    for row in rows.iter().filter(|r| r.report.failed_total() > 0) {
        let kinds: Vec<String> = row
            .report
            .failed
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "- {} · {} · {} ms: {}; e.g. `{}`",
            row.system.name(),
            row.mode,
            row.interval.as_millis(),
            kinds.join(" "),
            row.report.error_samples.first().map_or("", String::as_str)
        );
    }
    if out.is_empty() {
        out.push_str("(no row failed a request, no note)\n");
    }
    out
}

/// Milliseconds with a precision that suits the size.
fn ms(d: Option<Duration>) -> String {
    match d {
        None => "-".to_owned(),
        Some(d) => {
            let v = d.as_secs_f64() * 1000.0;
            if v < 10.0 {
                format!("{v:.2} ms")
            } else if v < 100.0 {
                format!("{v:.1} ms")
            } else {
                format!("{v:.0} ms")
            }
        }
    }
}

fn median<T: Copy + Ord>(values: &[T]) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------
// /proc

#[derive(Debug, Clone, Copy, Default)]
struct ProcStats {
    rss_kb: u64,
    /// The anonymous part of the RSS (heap and stacks), where a leak shows.
    anon_kb: u64,
    cpu: Duration,
    fds: usize,
}

/// RSS (`VmRSS`), user + system CPU time and open descriptors of `pid`.
fn proc_stats(pid: i32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name: state is field 3; utime and
    // stime are fields 14 and 15.
    let ticks: u64 = stat
        .rsplit_once(") ")
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    ProcStats {
        rss_kb: kb("VmRSS:"),
        anon_kb: kb("RssAnon:"),
        cpu: Duration::from_millis(ticks * 1000 / hz),
        fds,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock test-worker stamps with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The machine and the versions

struct Machine {
    date: String,
    cpu: String,
    cores: usize,
    kernel: String,
    load: String,
    rustc: String,
    baton: String,
    commit: String,
    start_server: Option<String>,
    perl: String,
}

impl Machine {
    fn describe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let manifest = env!("CARGO_MANIFEST_DIR");
        let commit = output("git", &["-C", manifest, "rev-parse", "--short", "HEAD"]);
        let commit = if commit.is_empty() {
            "unknown".to_owned()
        } else {
            commit
        };
        let dirty = !output("git", &["-C", manifest, "status", "--porcelain"]).is_empty();
        Machine {
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            load: load_average(),
            rustc: output("rustc", &["--version"]),
            baton: output(
                &baton_e2e::baton_bin().display().to_string(),
                &["--version"],
            ),
            commit: if dirty {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            },
            start_server: Command::new("start_server")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
            perl: output("perl", &["-e", "print substr($^V, 1)"]),
        }
    }

    fn header(&self, plan: &Plan) -> String {
        let intervals: Vec<String> = plan
            .intervals
            .iter()
            .map(|i| format!("{} ms", i.as_millis()))
            .collect();
        format!(
            "# baton reload benchmark{}\n\n\
             - date: {}\n\
             - machine: {} cores ({}), Linux {}, load average at the start {}\n\
             - {} (commit {}), {}\n\
             - start_server: {}\n\
             - load: {} clients, closed loop, {} s per row, request timeout {} s; reload every {}\n",
            if plan.quick { " (--quick)" } else { "" },
            self.date,
            self.cores,
            self.cpu,
            self.kernel,
            self.load,
            self.baton,
            self.commit,
            self.rustc,
            self.start_server.as_ref().map_or_else(
                || "not installed".to_owned(),
                |v| format!(
                    "Server::Starter {v} (Debian libserver-starter-perl), perl {}",
                    self.perl
                )
            ),
            plan.clients,
            plan.duration.as_secs_f64(),
            REQUEST_TIMEOUT.as_secs(),
            intervals.join(" and "),
        )
    }
}

/// The trimmed stdout of a command, or "" if it cannot run.
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The cost of baton: no reloads, under baton vs. bound directly

struct Cost {
    mode: Mode,
    /// (under baton, direct) per pair: requests per second and p99.
    pairs: Vec<[(f64, Duration); 2]>,
    /// baton's CPU time over all its runs.
    baton_cpu: Duration,
    baton_time: Duration,
}

impl Cost {
    fn ratios(&self) -> Vec<f64> {
        self.pairs.iter().map(|[a, b]| a.0 / b.0).collect()
    }
}

fn cost_of_baton(rt: &Runtime, plan: &Plan) -> Vec<Cost> {
    let mut baton = BatonServer::start();
    let mut direct = RestartServer::start();
    let mut costs = Vec::new();
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let run = |addr: SocketAddr, duration: Duration| {
            let load = Load::start(Config {
                mode,
                clients: plan.clients,
                duration,
                timeout: REQUEST_TIMEOUT,
                ..Config::new(addr)
            })
            .expect("a valid load config");
            let report = rt.block_on(load.finish());
            assert_eq!(report.failed_total(), 0, "{}", report.summary());
            (
                report.requests_per_second(),
                report.percentile(99.0).unwrap_or_default(),
            )
        };
        // Warm both up.
        run(baton.addr(), Duration::from_millis(300));
        run(direct.addr(), Duration::from_millis(300));
        let cpu_before = proc_stats(baton.baton.pid()).cpu;
        let mut pairs = Vec::new();
        for i in 0..plan.ab_pairs {
            // A B, B A, A B, …: a drift in the machine's load hits both.
            let (a, b) = if i % 2 == 0 {
                let a = run(baton.addr(), plan.ab_duration);
                (a, run(direct.addr(), plan.ab_duration))
            } else {
                let b = run(direct.addr(), plan.ab_duration);
                (run(baton.addr(), plan.ab_duration), b)
            };
            pairs.push([a, b]);
        }
        costs.push(Cost {
            mode,
            pairs,
            baton_cpu: proc_stats(baton.baton.pid()).cpu - cpu_before,
            baton_time: plan.ab_duration * plan.ab_pairs as u32,
        });
    }
    baton.stop();
    direct.stop();
    costs
}

fn cost_table(costs: &[Cost], plan: &Plan) -> String {
    let mut out = format!(
        "{} interleaved pairs per traffic kind (A B, B A, …), {} s each, {} clients; ratio = under baton ÷ direct, per pair\n\n\
         | traffic | req/s under baton (median) | req/s direct (median) | ratio median | ratio min … max | p99 under baton (median) | p99 direct (median) | baton CPU during its runs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        plan.ab_pairs,
        plan.ab_duration.as_secs_f64(),
        plan.clients
    );
    for cost in costs {
        let ratios = cost.ratios();
        let a_rps: Vec<f64> = cost.pairs.iter().map(|p| p[0].0).collect();
        let b_rps: Vec<f64> = cost.pairs.iter().map(|p| p[1].0).collect();
        let a_p99: Vec<Duration> = cost.pairs.iter().map(|p| p[0].1).collect();
        let b_p99: Vec<Duration> = cost.pairs.iter().map(|p| p[1].1).collect();
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.3} | {:.3} … {:.3} | {} | {} | {} ms in {:.0} s |",
            cost.mode,
            median_f64(&a_rps),
            median_f64(&b_rps),
            median_f64(&ratios),
            min,
            max,
            ms(median(&a_p99)),
            ms(median(&b_p99)),
            cost.baton_cpu.as_millis(),
            cost.baton_time.as_secs_f64(),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// What baton adds to a reload, stamped by both ends

/// test-worker's `GET /timings`: CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Timings {
    pid: i32,
    main_ns: u64,
    ready_ns: Option<u64>,
    stop_ns: Option<u64>,
}

/// One HTTP/1.1 connection, kept alive, for `GET /timings`.
struct Http {
    stream: TcpStream,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Http { stream }
    }

    /// `GET /timings`; `None` if the connection was closed.
    fn timings(&mut self) -> Option<Timings> {
        self.stream
            .write_all(b"GET /timings HTTP/1.1\r\nHost: bench\r\n\r\n")
            .ok()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let length: usize = header("content-length")?.parse().ok()?;
        let pid: i32 = header("x-pid")?.parse().ok()?;
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).ok()?;
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(Timings {
            pid,
            main_ns: json["main_ns"].as_u64()?,
            ready_ns: json["ready_ns"].as_u64(),
            stop_ns: json["stop_ns"].as_u64(),
        })
    }
}

struct Latency {
    /// kill(SIGHUP) → the new worker's `main`.
    sighup_to_main: Vec<Duration>,
    /// The new worker's READY=1 → the old worker's stop signal.
    ready_to_stop: Vec<Duration>,
    /// The new worker's own start: `main` → READY=1.
    worker_start: Vec<Duration>,
    /// For comparison: this bench's `Command::spawn` → the worker's `main`.
    spawn_to_main: Vec<Duration>,
}

fn reload_latency(plan: &Plan) -> Latency {
    let mut baton = BatonServer::start();
    let addr = baton.addr();
    let mut latency = Latency {
        sighup_to_main: Vec::new(),
        ready_to_stop: Vec::new(),
        worker_start: Vec::new(),
        spawn_to_main: Vec::new(),
    };
    for _ in 0..plan.latency_samples {
        // Only the active worker accepts now: this connection is its.
        let mut old = Http::connect(addr);
        let old_pid = old.timings().expect("timings of the active worker").pid;
        let sighup = monotonic_ns();
        baton.baton.signal(Signal::SIGHUP);
        baton.generation += 1;
        let new_pid = baton.baton.wait_ready(baton.generation);
        // The old worker answers on the connection it already has until
        // its idle grace (1 s) ends; its stop_ns is set once the signal
        // has arrived.
        let deadline = Instant::now() + WAIT;
        let stopped = loop {
            let t = old.timings().expect("the old worker still answers");
            assert_eq!(t.pid, old_pid);
            if let Some(stop) = t.stop_ns {
                break stop;
            }
            assert!(Instant::now() < deadline, "the old worker never stopped");
            std::thread::sleep(Duration::from_micros(500));
        };
        drop(old);
        // The old worker no longer accepts: a new connection reaches the new one.
        let new = loop {
            let t = Http::connect(addr).timings().expect("timings");
            if t.pid == new_pid {
                break t;
            }
            assert!(Instant::now() < deadline, "the new worker never answered");
        };
        let ready = new.ready_ns.expect("the new worker is ready");
        latency
            .sighup_to_main
            .push(Duration::from_nanos(new.main_ns.saturating_sub(sighup)));
        latency
            .ready_to_stop
            .push(Duration::from_nanos(stopped.saturating_sub(ready)));
        latency
            .worker_start
            .push(Duration::from_nanos(ready.saturating_sub(new.main_ns)));
        wait_exited(&baton.baton, baton.generation - 1);
    }
    baton.stop();
    // The same worker started by this bench directly.
    let notify = Notify::new();
    for _ in 0..plan.latency_samples {
        let port = free_port();
        let spawned = monotonic_ns();
        let mut worker = spawn_bound_worker(port, &notify);
        notify.wait_ready(&mut worker.0);
        let t = Http::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .timings()
            .expect("timings");
        latency
            .spawn_to_main
            .push(Duration::from_nanos(t.main_ns.saturating_sub(spawned)));
        worker.stop(Signal::SIGTERM);
    }
    latency
}

impl Latency {
    /// What baton adds, per reload: SIGHUP → main plus READY=1 → stop.
    fn added(&self) -> Vec<Duration> {
        self.sighup_to_main
            .iter()
            .zip(&self.ready_to_stop)
            .map(|(a, b)| *a + *b)
            .collect()
    }

    fn table(&self) -> String {
        let line = |name: &str, values: &[Duration]| {
            let mut sorted = values.to_vec();
            sorted.sort_unstable();
            let p90 = sorted.get((sorted.len() * 9).div_ceil(10).saturating_sub(1));
            format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                sorted.len(),
                ms(sorted.first().copied()),
                ms(median(&sorted)),
                ms(p90.copied()),
                ms(sorted.last().copied()),
            )
        };
        let mut out = String::from(
            "No load; CLOCK_MONOTONIC stamps from the bench (kill) and from test-worker (`GET /timings`: main entry, READY=1, stop signal).\n\n\
             | interval | samples | min | median | p90 | max |\n|---|---:|---:|---:|---:|---:|\n",
        );
        out += &line("kill(SIGHUP) → new worker's main", &self.sighup_to_main);
        out += &line(
            "new worker's READY=1 → old worker's stop signal",
            &self.ready_to_stop,
        );
        out += &line("**what baton adds (sum of both)**", &self.added());
        out += &line(
            "(the worker's own start: main → READY=1)",
            &self.worker_start,
        );
        out += &line(
            "(for comparison: bench's Command::spawn → main, no baton)",
            &self.spawn_to_main,
        );
        out
    }
}

// ---------------------------------------------------------------------------
// Soak

struct Soak {
    reloads: u64,
    before: ProcStats,
    after: ProcStats,
    /// (reloads done, RSS kB, anonymous RSS kB) along the way.
    rss: Vec<(u64, u64, u64)>,
    /// After the pause and the further reloads: (pause, reloads, stats
    /// after the pause, stats at the end).
    settle: Option<(Duration, u64, ProcStats, ProcStats)>,
    reports: Vec<Report>,
    took: Duration,
}

fn soak(rt: &Runtime, plan: &Plan) -> Soak {
    let mut baton = BatonServer::start();
    let pid = baton.baton.pid();
    // Light load: 2 clients of each kind, 50 requests per second each.
    let loads: Vec<Load> = [Mode::NewConnection, Mode::KeepAlive]
        .into_iter()
        .map(|mode| {
            Load::start(Config {
                mode,
                clients: 2,
                rate_per_client: Some(50.0),
                duration: Duration::from_secs(1800),
                timeout: REQUEST_TIMEOUT,
                ..Config::new(baton.addr())
            })
            .expect("a valid load config")
        })
        .collect();
    for load in &loads {
        rt.block_on(load.wait_for(|s| s.ok >= 10))
            .expect("the load runs");
    }
    let before = proc_stats(pid);
    let mut rss = vec![(0, before.rss_kb, before.anon_kb)];
    let started = Instant::now();
    for n in 1..=plan.soak_reloads {
        baton.reload();
        if n % (plan.soak_reloads / 10).max(1) == 0 {
            let now = proc_stats(pid);
            rss.push((n, now.rss_kb, now.anon_kb));
        }
    }
    let took = started.elapsed();
    // baton closes an exited generation's notify socket when its runtime
    // drops the aborted receiver task, just after the `exited` line: let
    // it get there before counting descriptors.
    std::thread::sleep(Duration::from_millis(500));
    let after = proc_stats(pid);
    let settle = plan.soak_settle.map(|(pause, more)| {
        eprintln!("    pausing {pause:?}, then {more} more reloads …");
        std::thread::sleep(pause);
        let paused = proc_stats(pid);
        for _ in 0..more {
            baton.reload();
        }
        std::thread::sleep(Duration::from_millis(500));
        (pause, more, paused, proc_stats(pid))
    });
    for load in &loads {
        load.stop();
    }
    let reports = loads
        .into_iter()
        .map(|load| rt.block_on(load.finish()))
        .collect();
    baton.stop();
    Soak {
        reloads: plan.soak_reloads,
        before,
        after,
        rss,
        settle,
        reports,
        took,
    }
}

impl Soak {
    fn growth_kb(&self) -> i64 {
        self.after.rss_kb as i64 - self.before.rss_kb as i64
    }

    fn failed(&self) -> u64 {
        self.reports.iter().map(Report::failed_total).sum()
    }

    fn table(&self) -> String {
        let mut out = format!(
            "{} reloads in a row (each waits for the new worker's READY=1 and the old worker's exit), {:.1} s, \
             light load: 2 new-connection + 2 keep-alive clients at 50 req/s each; \
             \"after\" is read 0.5 s after the last reload\n\n\
             | | before | after | change |\n|---|---:|---:|---:|\n",
            self.reloads,
            self.took.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| baton RSS | {} kB | {} kB | {:+} kB |",
            self.before.rss_kb,
            self.after.rss_kb,
            self.growth_kb()
        );
        let _ = writeln!(
            out,
            "| baton open fds | {} | {} | {:+} |",
            self.before.fds,
            self.after.fds,
            self.after.fds as i64 - self.before.fds as i64
        );
        let _ = writeln!(
            out,
            "| baton CPU time | {} ms | {} ms | {:+} ms ({:.2} ms per reload) |",
            self.before.cpu.as_millis(),
            self.after.cpu.as_millis(),
            (self.after.cpu - self.before.cpu).as_millis(),
            (self.after.cpu - self.before.cpu).as_secs_f64() * 1000.0 / self.reloads as f64
        );
        let trend: Vec<String> = self
            .rss
            .iter()
            .map(|(n, kb, anon)| format!("{n}: {kb} ({anon})"))
            .collect();
        let _ = writeln!(
            out,
            "\nRSS (anonymous part) in kB after N reloads: {}",
            trend.join(", ")
        );
        if let Some((pause, more, paused, end)) = &self.settle {
            let _ = writeln!(
                out,
                "\nthen a {:.0} s pause: RSS {} kB ({}); then {more} more reloads: RSS {} kB ({}), {:+} kB; fds {}",
                pause.as_secs_f64(),
                paused.rss_kb,
                paused.anon_kb,
                end.rss_kb,
                end.anon_kb,
                end.rss_kb as i64 - paused.rss_kb as i64,
                end.fds,
            );
        }
        out.push('\n');
        for report in &self.reports {
            let _ = writeln!(out, "- {}", report.summary());
        }
        let _ = writeln!(out, "\nfailed requests during the soak: {}", self.failed());
        out
    }
}

// ---------------------------------------------------------------------------
// Targets

fn targets(rows: &[Row], costs: &[Cost], latency: &Latency, soak: &Soak) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    let mut out = String::from("| target | measured | verdict |\n|---|---|---|\n");
    let baton_rows: Vec<&Row> = rows.iter().filter(|r| r.system == System::Baton).collect();
    let failed: Vec<String> = baton_rows
        .iter()
        .map(|r| {
            format!(
                "{} @ {} ms: {}",
                r.mode,
                r.interval.as_millis(),
                r.report.failed_total()
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "| baton: 0 failed requests, both traffic kinds, every rate down to 100 ms | {} | {} |",
        failed.join("; "),
        verdict(baton_rows.iter().all(|r| r.report.failed_total() == 0))
    );
    let added = median(&latency.added()).unwrap_or_default();
    let _ = writeln!(
        out,
        "| what baton adds to a reload < 5 ms (median) | {} (SIGHUP → main {}, READY=1 → stop {}) | {} |",
        ms(Some(added)),
        ms(median(&latency.sighup_to_main)),
        ms(median(&latency.ready_to_stop)),
        verdict(added < Duration::from_millis(5))
    );
    let ratios: Vec<String> = costs
        .iter()
        .map(|c| format!("{} {:.3}", c.mode, median_f64(&c.ratios())))
        .collect();
    let _ = writeln!(
        out,
        "| throughput under baton ≥ 0.98 × alone (median ratio) | {} | {} |",
        ratios.join(", "),
        verdict(costs.iter().all(|c| median_f64(&c.ratios()) >= 0.98))
    );
    let _ = writeln!(
        out,
        "| soak: fd count unchanged | {} → {} | {} |",
        soak.before.fds,
        soak.after.fds,
        verdict(soak.before.fds == soak.after.fds)
    );
    let _ = writeln!(
        out,
        "| soak: RSS growth < 1 MB | {:+} kB | {} |",
        soak.growth_kb(),
        verdict(soak.growth_kb() < 1024)
    );
    let _ = writeln!(
        out,
        "| soak: baton RSS < 10 MB | {:.1} MB | {} |",
        soak.after.rss_kb as f64 / 1024.0,
        verdict(soak.after.rss_kb.max(soak.before.rss_kb) < 10 * 1024)
    );
    let _ = writeln!(
        out,
        "| soak: 0 failed requests | {} | {} |",
        soak.failed(),
        verdict(soak.failed() == 0)
    );
    out
}

// ---------------------------------------------------------------------------
// The chart

/// One panel per system (rows) and traffic kind (columns), at the longest
/// reload interval: successful and failed requests per 100 ms, a grey line
/// at each reload. Panels of one column share their scales.
fn chart(rows: &[Row], plan: &Plan) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let interval = *plan.intervals.iter().max().expect("an interval");
    let mut systems: Vec<System> = Vec::new();
    for row in rows {
        if !systems.contains(&row.system) {
            systems.push(row.system);
        }
    }
    let modes = [Mode::NewConnection, Mode::KeepAlive];
    let shown: Vec<&Row> = rows.iter().filter(|r| r.interval == interval).collect();
    // Only whole buckets: the last one is cut short by the end of the load.
    let whole = |row: &Row| {
        let width = row.report.bucket_width;
        let end = plan.duration;
        row.report
            .timeline
            .iter()
            .filter(move |b| b.start + width <= end)
            .copied()
            .collect::<Vec<_>>()
    };
    let scale = |mode: Mode, of: fn(&baton_loadgen::Bucket) -> u64, least: f64| {
        let max = shown
            .iter()
            .filter(|r| r.mode == mode)
            .flat_map(|r| whole(r).into_iter().map(|b| of(&b)))
            .max()
            .unwrap_or(0) as f64;
        (max * 1.1).max(least)
    };
    let span = plan.duration.as_secs_f64();

    if let Some(dir) = plan.svg.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root =
        SVGBackend::new(&plan.svg, (1200, 60 + 200 * systems.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "Reload every {} ms under load ({} clients, closed loop): blue = successful requests per 100 ms (left axis), \
             red = failed per 100 ms (right axis), grey = reload",
            interval.as_millis(),
            plan.clients
        ),
        ("sans-serif", 15),
    )?;
    let panels = root.split_evenly((systems.len(), modes.len()));
    for (i, area) in panels.iter().enumerate() {
        let system = systems[i / modes.len()];
        let mode = modes[i % modes.len()];
        let Some(row) = shown.iter().find(|r| r.system == system && r.mode == mode) else {
            continue;
        };
        let ok_max = scale(mode, |b| b.ok, 10.0);
        let failed_max = scale(mode, |b| b.failed, 10.0);
        let caption = format!(
            "{} · {} · {} reloads · {} ok, {} failed",
            system.name(),
            mode,
            row.reloads.len(),
            row.report.ok,
            row.report.failed_total()
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .right_y_label_area_size(48)
            .build_cartesian_2d(0f64..span, 0f64..ok_max)?
            .set_secondary_coord(0f64..span, 0f64..failed_max);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .y_labels(4)
            .x_desc("seconds")
            .y_desc("ok / 100 ms")
            .label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 11))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_labels(4)
            .y_desc("failed / 100 ms")
            .label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 11))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        let grey = RGBColor(170, 170, 170);
        chart.draw_series(row.reloads.iter().map(|(at, _)| {
            let x = at.as_secs_f64();
            PathElement::new(vec![(x, 0.0), (x, ok_max)], grey.stroke_width(1))
        }))?;
        let buckets = whole(row);
        let half = row.report.bucket_width.as_secs_f64() / 2.0;
        let x = |b: &baton_loadgen::Bucket| b.start.as_secs_f64() + half;
        chart.draw_series(LineSeries::new(
            buckets.iter().map(|b| (x(b), b.ok as f64)),
            BLUE.stroke_width(2),
        ))?;
        chart.draw_secondary_series(LineSeries::new(
            buckets.iter().map(|b| (x(b), b.failed as f64)),
            RED.stroke_width(2),
        ))?;
        // A dot on every bucket that failed anything, however few.
        chart.draw_secondary_series(
            buckets
                .iter()
                .filter(|b| b.failed > 0)
                .map(|b| Circle::new((x(b), b.failed as f64), 3, RED.filled())),
        )?;
    }
    root.present()?;
    Ok(())
}
