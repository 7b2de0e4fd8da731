//! End-to-end runs of the load client against tiny servers started inside
//! each test. Every test is bounded by a request cap or the load duration;
//! none sleeps to synchronise.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_loadgen::{Config, ConfigError, FailureKind, HeaderName, Load, Mode, Report, Target};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// Where a request landed: which connection (numbered from 0 in accept
/// order) and which request on it (from 1).
#[derive(Clone, Copy)]
struct Ctx {
    conn: u64,
    nth: u64,
}

type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
type Handler = Arc<dyn Fn(Ctx, Request<Incoming>) -> Reply + Send + Sync>;

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Ctx, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    Arc::new(move |ctx, req| Box::pin(f(ctx, req)))
}

/// 200 with the connection number as `x-pid`, so a report's distinct
/// header values count the connections the client used.
fn ok_with_conn_id() -> Handler {
    handler(|ctx, _req| async move { reply(StatusCode::OK, ctx) })
}

fn reply(status: StatusCode, ctx: Ctx) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("x-pid", ctx.conn.to_string())
        .body(Full::new(Bytes::from_static(b"hello\n")))
        .expect("valid response")
}

/// Serves HTTP/1 connections from `listener` until the test's runtime
/// ends; returns the number of accepted connections so far.
fn serve<L>(listener: L, handler: Handler) -> Arc<AtomicU64>
where
    L: Accept,
{
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let io = listener.accept_io().await;
            let conn = counter.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let requests = Arc::new(AtomicU64::new(0));
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let ctx = Ctx {
                        conn,
                        nth: requests.fetch_add(1, Ordering::SeqCst) + 1,
                    };
                    let reply = handler(ctx, req);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                // Errors are the client's doing (resets, timeouts): ignore.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    accepted
}

/// TCP and unix listeners, for [`serve`].
trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = Self::Io> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> Self::Io {
        self.accept().await.expect("accept").0
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> Self::Io {
        self.accept().await.expect("accept").0
    }
}

async fn tcp_server(handler: Handler) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (addr, serve(listener, handler))
}

/// A load capped at `requests`; the 30 s duration is only a backstop.
fn capped(target: impl Into<Target>, mode: Mode, clients: usize, requests: u64) -> Config {
    Config {
        mode,
        clients,
        max_requests: Some(requests),
        duration: Duration::from_secs(30),
        ..Config::new(target)
    }
}

async fn run(config: Config) -> Report {
    Load::start(config).expect("valid config").finish().await
}

/// What must hold for any report: every started request is accounted for,
/// and the timeline adds up to the totals.
fn assert_consistent(report: &Report) {
    let s = report.summary();
    assert_eq!(report.started, report.ok + report.failed_total(), "{s}");
    assert_eq!(report.latencies.len() as u64, report.ok, "{s}");
    let timeline_ok: u64 = report.timeline.iter().map(|b| b.ok).sum();
    let timeline_failed: u64 = report.timeline.iter().map(|b| b.failed).sum();
    assert_eq!(timeline_ok, report.ok, "{s}");
    assert_eq!(timeline_failed, report.failed_total(), "{s}");
    assert!(report.error_samples.len() as u64 <= report.failed_total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_one_connection_per_client() {
    let (addr, accepted) = tcp_server(ok_with_conn_id()).await;
    let report = run(capped(addr, Mode::KeepAlive, 4, 400)).await;
    assert_consistent(&report);
    assert_eq!(report.ok, 400, "{}", report.summary());
    assert_eq!(report.failed_total(), 0, "{:?}", report.error_samples);
    assert_eq!(report.distinct_header_values(), 4);
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    assert_eq!(report.header_values.values().sum::<u64>(), 400);
    assert!(report.percentile(50.0) <= report.percentile(99.0));
    assert!(report.percentile(99.0) <= report.latencies.max());
    assert!(report.requests_per_second() > 0.0);
    assert!(
        report
            .summary()
            .starts_with("requests=400 ok=400 failed=0 (")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connection_mode_opens_one_per_request() {
    let (addr, accepted) = tcp_server(ok_with_conn_id()).await;
    let report = run(capped(addr, Mode::NewConnection, 4, 200)).await;
    assert_consistent(&report);
    assert_eq!(report.ok, 200, "{}", report.summary());
    assert_eq!(report.failed_total(), 0, "{:?}", report.error_samples);
    assert_eq!(report.distinct_header_values(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reconnects_when_the_server_says_close() {
    const PER_CONN: u64 = 5;
    let (addr, accepted) = tcp_server(handler(|ctx, _req| async move {
        let mut response = reply(StatusCode::OK, ctx);
        if ctx.nth == PER_CONN {
            response
                .headers_mut()
                .insert("connection", "close".parse().unwrap());
        }
        response
    }))
    .await;
    let report = run(capped(addr, Mode::KeepAlive, 2, 100)).await;
    assert_consistent(&report);
    assert_eq!(report.ok, 100, "{}", report.summary());
    assert_eq!(report.failed_total(), 0, "{:?}", report.error_samples);
    // Each connection carries at most PER_CONN requests.
    assert!(report.header_values.values().all(|&n| n <= PER_CONN));
    assert!(accepted.load(Ordering::SeqCst) >= 100 / PER_CONN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_status_is_a_failure_but_keeps_the_connection() {
    let (addr, accepted) = tcp_server(handler(|ctx, _req| async move {
        let status = if ctx.nth % 2 == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        reply(status, ctx)
    }))
    .await;
    let report = run(capped(addr, Mode::KeepAlive, 1, 10)).await;
    assert_consistent(&report);
    assert_eq!(report.ok, 5, "{}", report.summary());
    assert_eq!(report.failures(FailureKind::Status), 5);
    assert_eq!(report.failed_total(), 5);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(
        report.error_samples[0].contains("503"),
        "{:?}",
        report.error_samples
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_refused() {
    // Bind then drop: the port is (almost certainly) closed afterwards.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let report = run(capped(addr, mode, 3, 30)).await;
        assert_consistent(&report);
        assert_eq!(report.ok, 0);
        assert_eq!(
            report.failures(FailureKind::Refused),
            30,
            "{}",
            report.summary()
        );
        assert!(report.error_samples[0].starts_with("refused: connect: "));
        assert!(report.latencies.max().is_none());
    }
}

/// Accepts connections and drops them at once; with `reset`, with
/// `SO_LINGER` 0 so the kernel sends RST instead of FIN.
async fn dropping_server(reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            if reset {
                stream.set_zero_linger().unwrap();
            }
            drop(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_counted_failures() {
    for reset in [false, true] {
        let addr = dropping_server(reset).await;
        for mode in [Mode::NewConnection, Mode::KeepAlive] {
            let report = run(capped(addr, mode, 4, 100)).await;
            assert_consistent(&report);
            let s = report.summary();
            assert_eq!(report.ok, 0, "{s}");
            assert_eq!(report.failed_total(), 100, "{s}");
            let dropped =
                report.failures(FailureKind::Reset) + report.failures(FailureKind::Closed);
            assert_eq!(dropped, 100, "{s} {:?}", report.error_samples);
            if reset {
                assert!(report.failures(FailureKind::Reset) > 0, "{s}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lets_requests_in_flight_complete() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let server_gate = gate.clone();
    let (addr, _) = tcp_server(handler(move |ctx, _req| {
        let gate = server_gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            reply(StatusCode::OK, ctx)
        }
    }))
    .await;
    let load = Load::start(Config {
        clients: 3,
        duration: Duration::from_secs(30),
        ..Config::new(addr)
    })
    .unwrap();
    let held = load.wait_for(|s| s.started == 3).await.unwrap();
    assert_eq!(held.in_flight(), 3);
    assert_eq!(load.stop(), 3);
    // Only now can the held requests answer; nothing new may start.
    gate.add_permits(3);
    let report = load.finish().await;
    assert_consistent(&report);
    assert_eq!(report.started, 3, "{}", report.summary());
    assert_eq!(report.ok, 3, "{:?}", report.error_samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counters_and_stop_end_an_unbounded_load() {
    let (addr, _) = tcp_server(ok_with_conn_id()).await;
    let load = Load::start(Config {
        clients: 2,
        duration: Duration::from_secs(30),
        ..Config::new(addr)
    })
    .unwrap();
    let snap = load.wait_for(|s| s.ok >= 50).await.unwrap();
    assert!(snap.ok >= 50 && !snap.stopped);
    assert!(load.ok_so_far() >= 50);
    assert_eq!(load.failed_so_far(), 0);
    let started = load.stop();
    assert!(load.snapshot().stopped);
    let report = load.finish().await;
    assert_consistent(&report);
    assert_eq!(report.started, started);
    assert!(report.elapsed < Duration::from_secs(30));
    assert_eq!(report.failed_total(), 0, "{:?}", report.error_samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bounds_the_load() {
    let (addr, _) = tcp_server(ok_with_conn_id()).await;
    let report = run(Config {
        clients: 2,
        duration: Duration::from_millis(300),
        ..Config::new(addr)
    })
    .await;
    assert_consistent(&report);
    assert!(report.ok > 0, "{}", report.summary());
    assert!(report.elapsed >= Duration::from_millis(200));
    assert!(report.elapsed < Duration::from_secs(10));
    // 100 ms buckets over ~300 ms.
    assert!((3..=10).contains(&report.timeline.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out() {
    let (addr, _) = tcp_server(handler(|ctx, _req| async move {
        std::future::pending::<()>().await;
        reply(StatusCode::OK, ctx)
    }))
    .await;
    let report = run(Config {
        timeout: Duration::from_millis(100),
        ..capped(addr, Mode::KeepAlive, 2, 4)
    })
    .await;
    assert_consistent(&report);
    assert_eq!(
        report.failures(FailureKind::Timeout),
        4,
        "{}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_tracked_header_reach_the_report() {
    let (addr, _) = tcp_server(handler(|ctx, req| async move {
        let mut response = reply(StatusCode::OK, ctx);
        let path = req.uri().to_string().parse().unwrap();
        response.headers_mut().insert("x-path", path);
        response
    }))
    .await;
    let report = run(Config {
        path: "/slow?ms=0".into(),
        track_header: Some(HeaderName::from_static("x-path")),
        ..capped(addr, Mode::KeepAlive, 2, 20)
    })
    .await;
    assert_eq!(
        report.header_values.into_iter().collect::<Vec<_>>(),
        vec![("/slow?ms=0".to_owned(), 20)]
    );
}

/// A socket path unique to this test process, removed on drop.
struct SocketPath(PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_target() {
    let path = SocketPath(
        std::env::temp_dir().join(format!("baton-loadgen-test-{}.sock", std::process::id())),
    );
    let _ = std::fs::remove_file(&path.0);
    let listener = UnixListener::bind(&path.0).unwrap();
    let accepted = serve(listener, ok_with_conn_id());
    let report = run(capped(
        Target::Unix(path.0.clone()),
        Mode::NewConnection,
        2,
        20,
    ))
    .await;
    assert_eq!(report.ok, 20, "{:?}", report.error_samples);
    assert_eq!(accepted.load(Ordering::SeqCst), 20);

    // A missing socket file is a connect failure, not a refusal.
    let missing = Target::Unix(path.0.with_extension("missing"));
    let report = run(capped(missing, Mode::KeepAlive, 1, 3)).await;
    assert_eq!(
        report.failures(FailureKind::ConnectOther),
        3,
        "{}",
        report.summary()
    );
}

#[test]
fn start_checks_config_and_runtime() {
    let remote: SocketAddr = "192.0.2.1:80".parse().unwrap();
    assert!(matches!(
        Load::start(Config::new(remote)),
        Err(ConfigError::NotLoopback(_))
    ));
    let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert!(matches!(
        Load::start(Config::new(local)),
        Err(ConfigError::NoRuntime)
    ));
}
