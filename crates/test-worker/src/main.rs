//! An HTTP worker with knobs, for baton's tests and benches.
//!
//! It takes its listening sockets from baton (or systemd, or
//! Server::Starter) through `baton_worker`, or binds `--bind` itself, says
//! `READY=1`, serves, and drains on SIGTERM. Knobs make it misbehave:
//! start slowly, never get ready, exit at once, ignore the stop signal,
//! crash, answer slowly, leave a child behind, shut the shared listener
//! down, start a daemon that escapes its process group, fall silent towards
//! the watchdog. With `WATCHDOG_USEC` set it sends `WATCHDOG=1` every half
//! interval once ready. With `--from-gen N` the knobs apply only to
//! generations `>= N` (`BATON_GENERATION`; 0 when unset), with `--to-gen N`
//! only to those `<= N`, so one command line can make only some
//! generations misbehave.
//!
//! Lines on stderr (one event each, `P` = this process's pid):
//!
//! ```text
//! test-worker pid=P generation=G listening=ADDR[,ADDR...]
//! test-worker pid=P fork-child pid=C
//! test-worker pid=P setsid-daemon pid=D
//! test-worker pid=P exit-at-start code=N
//! test-worker pid=P never-ready
//! test-worker pid=P ready
//! test-worker pid=P watchdog interval_ms=I
//! test-worker pid=P watchdog silent after=N
//! test-worker pid=P stop signal=SIGTERM draining|ignored
//! test-worker pid=P crash-after requests=N
//! test-worker pid=P status-flood sent=N
//! test-worker pid=P crashing
//! test-worker pid=P drained
//! test-worker pid=P shutdown-listener how=rd|rdwr fd=N
//! test-worker pid=P signal=SIGUSR1
//! test-worker pid=P error: MESSAGE
//! ```
//!
//! `ADDR` is `host:port` for TCP, `unix:PATH` for a unix socket.

use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_worker::Listener;
use baton_worker::http::{ServeOptions, serve};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

mod children;

/// One line to stderr in a single write: baton's own log lines share the
/// pipe, and `eprintln!` may write a line in pieces that interleave.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

/// An HTTP worker with knobs for baton's tests and benches.
#[derive(Debug, Parser)]
#[command(name = "test-worker", version)]
struct Args {
    /// Wait this long before serving and saying READY=1 (e.g. 500ms, 2s, 1m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    startup_delay: Option<Duration>,

    /// Never serve and never say READY=1 (still exits on the stop signal).
    #[arg(long)]
    never_ready: bool,

    /// Exit with CODE right after the start line.
    #[arg(long, value_name = "CODE")]
    exit_at_start: Option<u8>,

    /// Ignore the stop signal (SIGTERM, SIGINT, SIGQUIT) and keep serving.
    #[arg(long)]
    ignore_stop: bool,

    /// After N requests: stop accepting, finish the responses in flight,
    /// then abort(). Later requests are never answered.
    #[arg(long, value_name = "N")]
    crash_after: Option<u64>,

    /// Sleep this long in every request.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    work: Option<Duration>,

    /// Fork a child that ignores SIGTERM and sleeps forever, in this
    /// process group, holding the inherited sockets.
    #[arg(long)]
    fork_child: bool,

    /// Start a daemon that escapes this process group (fork, setsid, fork;
    /// the middle process exits, so the daemon is adopted by the nearest
    /// subreaper), holding the inherited sockets, ignoring SIGTERM and
    /// sleeping forever.
    #[arg(long)]
    setsid_daemon: bool,

    /// Send WATCHDOG=1 this many times (with WATCHDOG_USEC set), then fall
    /// silent while still serving.
    #[arg(long, value_name = "N")]
    stop_watchdog_after: Option<u64>,

    /// Bind this address when no socket is inherited: HOST:PORT (port 0
    /// picks one; the start line tells which), or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,

    /// How long a draining HTTP/1 keep-alive connection may stay silent
    /// before it is closed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    idle_grace: Duration,

    /// Apply the misbehaviour knobs only when BATON_GENERATION >= N.
    #[arg(long, value_name = "N")]
    from_gen: Option<u64>,

    /// Apply the misbehaviour knobs only when BATON_GENERATION <= N.
    #[arg(long, value_name = "N")]
    to_gen: Option<u64>,

    /// Call `shutdown(2)` on the first listening socket right after the
    /// start line (`rd` or `rdwr`): it stops listening for every process
    /// that holds it, baton included. A fault for baton to repair.
    #[arg(long, value_name = "rd|rdwr", value_parser = parse_shutdown)]
    shutdown_listener: Option<libc::c_int>,

    /// Catch these signals (names like USR1, ALRM; repeatable or
    /// comma-separated) and log each one instead of dying of it. Not
    /// gated by --from-gen.
    #[arg(long, value_name = "SIGNAL", value_delimiter = ',', value_parser = parse_signal)]
    log_signals: Vec<libc::c_int>,

    /// Once ready, send N `STATUS=` messages to NOTIFY_SOCKET as fast as
    /// it takes them (a worker that floods baton's log).
    #[arg(long, value_name = "N")]
    status_flood: Option<u64>,

    /// Read this file at startup and answer `GET /answer` with its content
    /// (stands in for "the code" a dev-loop build step produces).
    #[arg(long, value_name = "FILE")]
    answer_file: Option<std::path::PathBuf>,
}

/// The misbehaviours that apply to this generation.
#[derive(Debug, Default)]
struct Knobs {
    startup_delay: Option<Duration>,
    never_ready: bool,
    exit_at_start: Option<u8>,
    ignore_stop: bool,
    crash_after: Option<u64>,
    work: Option<Duration>,
    fork_child: bool,
    setsid_daemon: bool,
    stop_watchdog_after: Option<u64>,
    shutdown_listener: Option<libc::c_int>,
    status_flood: Option<u64>,
}

impl Knobs {
    fn for_generation(args: &Args, generation: u64) -> Knobs {
        if args.from_gen.is_some_and(|from| generation < from)
            || args.to_gen.is_some_and(|to| generation > to)
        {
            return Knobs::default();
        }
        Knobs {
            startup_delay: args.startup_delay,
            never_ready: args.never_ready,
            exit_at_start: args.exit_at_start,
            ignore_stop: args.ignore_stop,
            crash_after: args.crash_after,
            work: args.work,
            fork_child: args.fork_child,
            setsid_daemon: args.setsid_daemon,
            stop_watchdog_after: args.stop_watchdog_after,
            shutdown_listener: args.shutdown_listener,
            status_flood: args.status_flood,
        }
    }
}

/// What was true when `main` began, before anything else ran.
struct Startup {
    main_ns: u64,
    /// Open descriptors and what they point to.
    fds: Vec<(i32, String)>,
    listen_fds: Option<String>,
    listen_pid: Option<String>,
    listen_fdnames: Option<String>,
}

fn main() -> ExitCode {
    let startup = Startup {
        main_ns: monotonic_ns(),
        fds: snapshot_fds(),
        listen_fds: std::env::var("LISTEN_FDS").ok(),
        listen_pid: std::env::var("LISTEN_PID").ok(),
        listen_fdnames: std::env::var("LISTEN_FDNAMES").ok(),
    };
    let args = Args::parse();
    match run(args, startup) {
        Ok(code) => code,
        Err(err) => {
            log!("test-worker pid={} error: {err:#}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, startup: Startup) -> anyhow::Result<ExitCode> {
    let pid = std::process::id();
    let generation: u64 = match std::env::var("BATON_GENERATION") {
        Ok(g) => g.parse().context("BATON_GENERATION is not a number")?,
        Err(_) => 0,
    };
    let knobs = Knobs::for_generation(&args, generation);

    // Still single-threaded here: the runtime starts below.
    let mut listeners: Vec<Listener> = baton_worker::listeners()?
        .into_iter()
        .map(|named| named.listener)
        .collect();
    if listeners.is_empty() {
        let Some(addr) = &args.bind else {
            bail!("no inherited listening socket (LISTEN_FDS, SERVER_STARTER_PORT) and no --bind");
        };
        listeners.push(bind(addr)?);
    }
    let listening: Vec<String> = listeners.iter().map(Listener::describe).collect();
    log!(
        "test-worker pid={pid} generation={generation} listening={}",
        listening.join(",")
    );
    if knobs.fork_child {
        let child = children::fork_child().context("fork")?;
        log!("test-worker pid={pid} fork-child pid={child}");
    }
    if knobs.setsid_daemon {
        let daemon = children::setsid_daemon().context("starting the daemon")?;
        log!("test-worker pid={pid} setsid-daemon pid={daemon}");
    }
    if let (Some(how), Some(first)) = (knobs.shutdown_listener, listeners.first()) {
        let fd = match first {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        };
        // SAFETY: shutdown on a descriptor this process holds; no memory is touched.
        if unsafe { libc::shutdown(fd, how) } != 0 {
            bail!("shutdown(fd {fd}): {}", std::io::Error::last_os_error());
        }
        let how = if how == libc::SHUT_RD { "rd" } else { "rdwr" };
        log!("test-worker pid={pid} shutdown-listener how={how} fd={fd}");
    }
    if let Some(code) = knobs.exit_at_start {
        log!("test-worker pid={pid} exit-at-start code={code}");
        return Ok(ExitCode::from(code));
    }

    let answer = match &args.answer_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading --answer-file {}", path.display()))?,
        ),
        None => None,
    };
    let app = Arc::new(App {
        answer,
        pid,
        generation,
        startup,
        knobs,
        ready_ns: OnceLock::new(),
        stop_ns: OnceLock::new(),
        requests: AtomicU64::new(0),
        crash: CancellationToken::new(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        log_signals(pid, &args.log_signals)?;
        work(app, listeners, args.idle_grace).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn bind(addr: &str) -> anyhow::Result<Listener> {
    if let Some(path) = addr.strip_prefix("unix:") {
        let listener = std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("binding unix socket {path}"))?;
        return Ok(Listener::Unix(listener));
    }
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(Listener::Tcp(listener))
}

/// `--log-signals`: one line per signal received, for as long as the runtime runs.
fn log_signals(pid: u32, signals: &[libc::c_int]) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for &number in signals {
        let mut stream = signal(SignalKind::from_raw(number))
            .with_context(|| format!("catching signal {number}"))?;
        let name = signal_name(number);
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                log!("test-worker pid={pid} signal={name}");
            }
        });
    }
    Ok(())
}

/// The signals `--log-signals` knows by name.
const SIGNALS: [(&str, libc::c_int); 12] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("WINCH", libc::SIGWINCH),
    ("PWR", libc::SIGPWR),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("IO", libc::SIGIO),
];

fn parse_signal(text: &str) -> Result<libc::c_int, String> {
    let name = text.strip_prefix("SIG").unwrap_or(text);
    SIGNALS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, number)| number)
        .ok_or_else(|| format!("unknown signal {text:?}"))
}

fn signal_name(number: libc::c_int) -> String {
    SIGNALS
        .iter()
        .find(|&&(_, n)| n == number)
        .map_or_else(|| number.to_string(), |(name, _)| format!("SIG{name}"))
}

fn parse_shutdown(text: &str) -> Result<libc::c_int, String> {
    match text {
        "rd" => Ok(libc::SHUT_RD),
        "rdwr" => Ok(libc::SHUT_RDWR),
        _ => Err("expected rd or rdwr".into()),
    }
}

struct App {
    /// `--answer-file`'s content, as read at startup.
    answer: Option<Vec<u8>>,
    pid: u32,
    generation: u64,
    startup: Startup,
    knobs: Knobs,
    ready_ns: OnceLock<u64>,
    stop_ns: OnceLock<u64>,
    /// Requests received so far.
    requests: AtomicU64,
    /// Cancelled when `--crash-after` triggers.
    crash: CancellationToken,
}

async fn work(app: Arc<App>, listeners: Vec<Listener>, idle_grace: Duration) -> anyhow::Result<()> {
    let pid = app.pid;
    // First, so that a stop signal during startup does not kill us.
    let stop = baton_worker::stop_signal()?;
    let stopping = CancellationToken::new();
    tokio::spawn({
        let app = app.clone();
        let stopping = stopping.clone();
        async move {
            let signal = stop.await;
            let _ = app.stop_ns.set(monotonic_ns());
            if app.knobs.ignore_stop {
                log!("test-worker pid={pid} stop signal={signal} ignored");
            } else {
                log!("test-worker pid={pid} stop signal={signal} draining");
                stopping.cancel();
            }
        }
    });

    if let Some(delay) = app.knobs.startup_delay {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopping.cancelled() => {
                log!("test-worker pid={pid} drained");
                return Ok(());
            }
        }
    }
    if app.knobs.never_ready {
        // Not serving either: a worker that is killed for missing its ready
        // deadline must not have taken connections off the queue.
        log!("test-worker pid={pid} never-ready");
        stopping.cancelled().await;
        log!("test-worker pid={pid} drained");
        return Ok(());
    }

    let mut servers = Vec::new();
    for listener in listeners {
        let listener = listener.into_tokio()?;
        let service = service_fn({
            let app = app.clone();
            move |req| handle(app.clone(), req)
        });
        let shutdown = {
            let stopping = stopping.clone();
            let crash = app.crash.clone();
            async move {
                tokio::select! {
                    () = stopping.cancelled() => {}
                    () = crash.cancelled() => {}
                }
            }
        };
        let opts = ServeOptions::default().idle_grace(idle_grace);
        servers.push(tokio::spawn(serve(listener, service, shutdown, opts)));
    }
    // Recorded just before sending, so that whoever saw READY=1 finds it.
    let _ = app.ready_ns.set(monotonic_ns());
    baton_worker::notify_ready()?;
    log!("test-worker pid={pid} ready");
    if let Some(n) = app.knobs.status_flood {
        tokio::task::spawn_blocking(move || {
            for i in 0..n {
                let _ = baton_worker::notify(&format!("STATUS=flood {i}"));
            }
            log!("test-worker pid={pid} status-flood sent={n}");
        });
    }
    if let Some(interval) = baton_worker::watchdog_interval() {
        tokio::spawn(watchdog(pid, interval, app.knobs.stop_watchdog_after));
    }

    for server in servers {
        server.await.context("serving")?;
    }
    if app.crash.is_cancelled() {
        log!("test-worker pid={pid} crashing");
        std::process::abort();
    }
    log!("test-worker pid={pid} drained");
    Ok(())
}

/// Send `WATCHDOG=1` every half interval; after `limit` pings, fall silent.
async fn watchdog(pid: u32, interval: Duration, limit: Option<u64>) {
    log!(
        "test-worker pid={pid} watchdog interval_ms={}",
        interval.as_millis()
    );
    let mut tick = tokio::time::interval(interval / 2);
    let mut sent = 0;
    loop {
        tick.tick().await;
        if limit.is_some_and(|limit| sent >= limit) {
            log!("test-worker pid={pid} watchdog silent after={sent}");
            return;
        }
        if let Err(error) = baton_worker::notify("WATCHDOG=1") {
            log!("test-worker pid={pid} error: {error}");
            return;
        }
        sent += 1;
    }
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = app.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if app.knobs.crash_after == Some(n) {
        crash(app.clone(), n);
    }
    if let Some(work) = app.knobs.work {
        tokio::time::sleep(work).await;
    }
    let mut response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => Response::new(Full::new(Bytes::from(format!(
            "pid={} generation={}\n",
            app.pid, app.generation
        )))),
        (&Method::GET, "/fds") => json(&fds_json(&app)),
        (&Method::GET, "/timings") => json(&serde_json::json!({
            "main_ns": app.startup.main_ns,
            "ready_ns": app.ready_ns.get(),
            "stop_ns": app.stop_ns.get(),
        })),
        (&Method::GET, path) if path.starts_with("/env/") => env_var(&path["/env/".len()..]),
        (&Method::GET, "/answer") if app.answer.is_some() => Response::new(Full::new(Bytes::from(
            app.answer.clone().unwrap_or_default(),
        ))),
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert("x-pid", HeaderValue::from(app.pid));
    headers.insert("x-generation", HeaderValue::from(app.generation));
    Ok(response)
}

/// `GET /env/NAME`: the value of the environment variable NAME, or 404.
fn env_var(name: &str) -> Response<Full<Bytes>> {
    match std::env::var_os(name) {
        Some(value) => Response::new(Full::new(Bytes::from(value.to_string_lossy().into_owned()))),
        None => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not set\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn fds_json(app: &App) -> serde_json::Value {
    let s = &app.startup;
    let fds: Vec<i32> = s.fds.iter().map(|(fd, _)| *fd).collect();
    let targets: serde_json::Map<String, serde_json::Value> = s
        .fds
        .iter()
        .map(|(fd, target)| (fd.to_string(), target.clone().into()))
        .collect();
    serde_json::json!({
        "pid": app.pid,
        "fds": fds,
        "targets": targets,
        "LISTEN_FDS": s.listen_fds,
        "LISTEN_PID": s.listen_pid,
        "LISTEN_FDNAMES": s.listen_fdnames,
    })
}

/// `--crash-after`: stop accepting and answer what was accepted (the drain
/// does that), then abort: a crash that loses nothing already accepted, so
/// that a test can tell whether what waited in the accept queue was lost.
fn crash(app: Arc<App>, n: u64) {
    log!("test-worker pid={} crash-after requests={n}", app.pid);
    app.crash.cancel();
}

/// The descriptors open now, with their `/proc/self/fd` link targets.
fn snapshot_fds() -> Vec<(i32, String)> {
    let mut fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    // The directory's own descriptor was in the listing and is closed now:
    // keep only what is still open.
    // SAFETY: F_GETFD only reads the flags of a descriptor number.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    fds.sort_unstable();
    fds.into_iter()
        .map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (fd, target)
        })
        .collect()
}

/// CLOCK_MONOTONIC in nanoseconds.
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

/// A duration in humantime's grammar, as baton reads them: `500ms`, `2s`,
/// `1s 500ms`, `250us`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 2s, 1m ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1s 500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn from_gen_gates_the_knobs() {
        let args = Args::parse_from(["test-worker", "--never-ready", "--from-gen", "2"]);
        assert!(!Knobs::for_generation(&args, 0).never_ready);
        assert!(!Knobs::for_generation(&args, 1).never_ready);
        assert!(Knobs::for_generation(&args, 2).never_ready);
        assert!(Knobs::for_generation(&args, 3).never_ready);
        let args = Args::parse_from(["test-worker", "--never-ready"]);
        assert!(Knobs::for_generation(&args, 0).never_ready);
        let args = Args::parse_from([
            "test-worker",
            "--never-ready",
            "--from-gen",
            "2",
            "--to-gen",
            "2",
        ]);
        assert!(!Knobs::for_generation(&args, 1).never_ready);
        assert!(Knobs::for_generation(&args, 2).never_ready);
        assert!(!Knobs::for_generation(&args, 3).never_ready);
    }

    #[test]
    fn the_snapshot_leaves_out_the_directory() {
        let fds = snapshot_fds();
        let numbers: Vec<i32> = fds.iter().map(|(fd, _)| *fd).collect();
        assert!(numbers.contains(&0) && numbers.contains(&1) && numbers.contains(&2));
        assert!(
            fds.iter().all(|(_, target)| !target.ends_with("/fd")),
            "{fds:?}"
        );
    }
}
