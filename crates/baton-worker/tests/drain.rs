//! The drain of `http::serve`, against real connections: keep-alive load
//! across a generation change, idle keep-alive connections, requests in
//! flight, HTTP/2.
//!
//! The test plays the supervisor: it binds the socket and keeps its own
//! copy open, and each "generation" serves a duplicate of it, as a worker
//! process would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_worker::http::{ServeOptions, serve};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::CONNECTION;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Generous: these bound a wait on an event, they do not pace the test.
const DEADLINE: Duration = Duration::from_secs(30);

/// The supervisor's socket.
fn bind() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// One generation: serves a duplicate of `socket` until the returned
/// sender fires. `/slow` reports on `started` and takes 300 ms.
fn generation(
    socket: &std::net::TcpListener,
    name: &'static str,
    opts: ServeOptions,
    started: Option<mpsc::UnboundedSender<()>>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let dup = socket.try_clone().unwrap();
    dup.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(dup).unwrap();
    let service = service_fn(move |req: Request<Incoming>| {
        let started = started.clone();
        async move {
            if req.uri().path() == "/slow" {
                if let Some(started) = started {
                    let _ = started.send(());
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
        }
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        service,
        async move {
            let _ = stop_rx.await;
        },
        opts,
    ));
    (stop_tx, task)
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn h1(addr: SocketAddr) -> (H1, JoinHandle<Result<(), hyper::Error>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .body(Empty::new())
        .unwrap()
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

#[derive(Default)]
struct Tally {
    gen1: AtomicU64,
    gen2: AtomicU64,
    failed: AtomicU64,
    closes: AtomicU64,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.gen1.load(Ordering::SeqCst) + self.gen2.load(Ordering::SeqCst)
    }
}

/// A keep-alive client that hides no failure: one connection at a time, no
/// retry; it reconnects only when the server said `Connection: close`.
async fn client(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conn = None;
    while !stop.load(Ordering::SeqCst) {
        let (sender, _task) = match &mut conn {
            Some(c) => c,
            None => conn.insert(h1(addr).await),
        };
        if sender.ready().await.is_err() {
            // Closed by the server without a request on the wire and
            // without having said so: that is a failure too.
            tally.failed.fetch_add(1, Ordering::SeqCst);
            eprintln!("connection closed without Connection: close");
            conn = None;
            continue;
        }
        match sender.send_request(get(addr, "/")).await {
            Ok(response) => {
                let close = response
                    .headers()
                    .get(CONNECTION)
                    .is_some_and(|v| v == "close");
                match response.into_body().collect().await {
                    Ok(body) => match &body.to_bytes()[..] {
                        b"gen1" => tally.gen1.fetch_add(1, Ordering::SeqCst),
                        b"gen2" => tally.gen2.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected body {other:?}"),
                    },
                    Err(err) => {
                        eprintln!("body failed: {err}");
                        tally.failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                if close {
                    tally.closes.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
            }
            Err(err) => {
                eprintln!("request failed: {err}");
                tally.failed.fetch_add(1, Ordering::SeqCst);
                conn = None;
            }
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_load_across_a_generation_change_loses_nothing() {
    let (socket, addr) = bind();
    let (stop1, gen1) = generation(&socket, "gen1", ServeOptions::default(), None);
    let stop_clients = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..16)
        .map(|_| tokio::spawn(client(addr, stop_clients.clone(), tally.clone())))
        .collect();

    wait_until("gen1 serves", || tally.gen1.load(Ordering::SeqCst) >= 500).await;
    // The next generation is ready: the old one drains.
    let (stop2, gen2) = generation(&socket, "gen2", ServeOptions::default(), None);
    stop1.send(()).unwrap();
    within("gen1's serve returns", gen1).await.unwrap();
    let after_gen1 = tally.ok();
    wait_until("gen2 serves", || tally.ok() >= after_gen1 + 500).await;

    stop_clients.store(true, Ordering::SeqCst);
    for c in clients {
        within("client stops", c).await.unwrap();
    }
    stop2.send(()).unwrap();
    within("gen2's serve returns", gen2).await.unwrap();

    let failed = tally.failed.load(Ordering::SeqCst);
    eprintln!(
        "gen1={} gen2={} failed={failed} closes={}",
        tally.gen1.load(Ordering::SeqCst),
        tally.gen2.load(Ordering::SeqCst),
        tally.closes.load(Ordering::SeqCst),
    );
    assert_eq!(failed, 0);
    assert!(tally.gen2.load(Ordering::SeqCst) >= 500);
    // Every client connection of gen1 was told to close.
    assert!(tally.closes.load(Ordering::SeqCst) >= 16);
}

#[tokio::test]
async fn idle_keep_alive_connections_get_a_grace_period() {
    let (socket, addr) = bind();
    let grace = Duration::from_millis(500);
    let (stop, server) = generation(
        &socket,
        "gen1",
        ServeOptions::default().idle_grace(grace),
        None,
    );

    // Two keep-alive connections, each with one request behind it.
    let (mut late, late_conn) = h1(addr).await;
    let (mut silent, silent_conn) = h1(addr).await;
    for sender in [&mut late, &mut silent] {
        let response = sender.send_request(get(addr, "/")).await.unwrap();
        assert!(response.headers().get(CONNECTION).is_none());
        response.into_body().collect().await.unwrap();
    }

    let drain_began = Instant::now();
    stop.send(()).unwrap();
    // Within the grace, a request on an idle keep-alive connection is
    // served, and told to close the connection.
    let response = within("late request", late.send_request(get(addr, "/")))
        .await
        .unwrap();
    assert_eq!(response.headers()[CONNECTION], "close");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "gen1"
    );
    within("late connection closes", late_conn)
        .await
        .unwrap()
        .unwrap();

    // The silent one is closed once it has been silent for the grace.
    within("silent connection closes", silent_conn)
        .await
        .unwrap()
        .unwrap();
    let closed_after = drain_began.elapsed();
    assert!(closed_after >= grace, "closed after {closed_after:?}");
    within("serve returns", server).await.unwrap();
    assert!(silent.send_request(get(addr, "/")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_http2_gets_goaway_at_once() {
    let (socket, addr) = bind();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    // A grace far longer than the deadline: the drain must not wait for it.
    let opts = ServeOptions::default().idle_grace(Duration::from_secs(3600));
    let (stop, server) = generation(&socket, "gen1", opts, Some(started_tx));

    // HTTP/1, request in flight.
    let (mut one, one_conn) = h1(addr).await;
    let slow1 = tokio::spawn(one.send_request(get(addr, "/slow")));
    // HTTP/2: one connection with a request in flight, one idle.
    let mut h2 = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        h2.push((sender, tokio::spawn(conn)));
    }
    let (mut busy_h2, busy_h2_conn) = h2.remove(0);
    let (mut idle_h2, idle_h2_conn) = h2.remove(0);
    let response = idle_h2.send_request(get(addr, "/")).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    response.into_body().collect().await.unwrap();
    let slow2 = tokio::spawn(busy_h2.send_request(get(addr, "/slow")));
    for _ in 0..2 {
        within("slow request starts", started.recv()).await.unwrap();
    }

    let drain_began = Instant::now();
    stop.send(()).unwrap();

    let response = within("HTTP/1 slow request", slow1).await.unwrap().unwrap();
    assert_eq!(response.headers()[CONNECTION], "close");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "gen1"
    );
    within("HTTP/1 connection closes", one_conn)
        .await
        .unwrap()
        .unwrap();

    let response = within("HTTP/2 slow request", slow2).await.unwrap().unwrap();
    assert!(response.headers().get(CONNECTION).is_none());
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "gen1"
    );
    within("busy HTTP/2 connection closes", busy_h2_conn)
        .await
        .unwrap()
        .unwrap();
    within("idle HTTP/2 connection closes", idle_h2_conn)
        .await
        .unwrap()
        .unwrap();
    within("serve returns", server).await.unwrap();
    // Nothing waited for the hour-long HTTP/1 idle grace.
    assert!(drain_began.elapsed() < DEADLINE);
}
