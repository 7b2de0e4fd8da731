//! Serving HTTP/1 and HTTP/2 with hyper, and draining without failing a
//! request.
//!
//! # How the drain works
//!
//! When the shutdown future resolves, [`serve`]:
//!
//! 1. stops accepting and drops the listener. It is this process's copy of
//!    a socket the supervisor keeps open, so connections that arrive from
//!    now on wait in the socket's accept queue for the next generation;
//!    nobody is refused.
//! 2. answers every HTTP/1 request from then on with `Connection: close`;
//!    hyper closes such a connection right after the response. A client
//!    sees the header before it could send the next request, so it opens a
//!    new connection (to the next generation) instead of racing the close.
//! 3. leaves idle HTTP/1 keep-alive connections open for a grace period
//!    ([`ServeOptions::idle_grace`], 1 s by default). A client that was
//!    already sending its next request when the drain began gets that
//!    request served (with `Connection: close`). Only a connection that has
//!    sent nothing and has no response in progress for a whole grace period
//!    is closed. Closing "idle" keep-alive connections at once, as hyper's
//!    `graceful_shutdown` and most servers do, resets the requests that
//!    were on the wire at that moment.
//! 4. sends HTTP/2 connections a GOAWAY at once (new streams go to a new
//!    connection, streams in progress finish).
//! 5. returns when every connection is closed, i.e. when every request in
//!    flight got its response (or when [`ServeOptions::drain_timeout`]
//!    passes, if set).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Stream, TokioListener};

/// The error type services and bodies may return.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A listener [`serve`] can accept connections from.
///
/// Implemented for tokio's `TcpListener` and `UnixListener` and for
/// [`TokioListener`].
pub trait Accept: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Accepts the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<Self::Io> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        // Best effort: a response should not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<Self::Io> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok(stream)
    }
}

impl Accept for TokioListener {
    type Io = Stream;

    async fn accept(&mut self) -> io::Result<Self::Io> {
        TokioListener::accept(self).await
    }
}

/// Options of [`serve`]. Start from [`ServeOptions::default`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long an HTTP/1 connection may stay silent after the drain began
    /// before it is closed (default 1 s). A request that arrives within it
    /// is served, with `Connection: close`.
    pub idle_grace: Duration,
    /// How long after the drain began connections are closed whatever they
    /// are doing (default: never; the supervisor's drain deadline bounds
    /// the drain anyway).
    pub drain_timeout: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            idle_grace: Duration::from_secs(1),
            drain_timeout: None,
        }
    }
}

impl ServeOptions {
    /// Sets [`idle_grace`](ServeOptions::idle_grace).
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// Sets [`drain_timeout`](ServeOptions::drain_timeout).
    pub fn drain_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// Serves `listener` with `service` (HTTP/1 and HTTP/2, detected per
/// connection) until `shutdown` resolves, then drains as the
/// [module documentation](self) describes and returns once every
/// connection is closed.
///
/// Each connection runs in its own tokio task. Accept errors (such as
/// running out of file descriptors) are logged and retried, never fatal.
/// HTTP upgrades (WebSocket) are not supported.
///
/// ```no_run
/// use std::convert::Infallible;
/// use baton_worker::http::{serve, ServeOptions};
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::Incoming, service::service_fn};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let stop = baton_worker::stop_signal()?;
/// let mut inherited = baton_worker::listeners()?;
/// let listener = inherited.remove(0).listener.into_tokio()?;
/// let service = service_fn(|_req: Request<Incoming>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
/// });
/// let server = tokio::spawn(serve(
///     listener,
///     service,
///     async move { stop.await; },
///     ServeOptions::default(),
/// ));
/// baton_worker::notify_ready()?;
/// server.await?; // returns after the drain
/// # Ok(()) }
/// ```
pub async fn serve<L, S, B, F>(mut listener: L, service: S, shutdown: F, opts: ServeOptions)
where
    L: Accept,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer for HTTP/1 on purpose: with one, hyper's 30 s
    // header_read_timeout also closes keep-alive connections that sit idle
    // for 30 s, racing with the client's next request.
    builder.http2().timer(TokioTimer::new());
    let drain = Drain {
        draining: CancellationToken::new(),
        abort: CancellationToken::new(),
        idle_grace: opts.idle_grace,
    };
    let tracker = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(io) => {
                    tracker.spawn(serve_connection(
                        builder.clone(),
                        io,
                        service.clone(),
                        drain.clone(),
                    ));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    if !is_connection_error(&err) {
                        // Out of descriptors or memory: give the
                        // connections in progress a moment to free some,
                        // without spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            },
        }
    }
    // Closes only this process's descriptor: the socket stays open in the
    // supervisor, and new connections wait for the next generation. Never
    // `shutdown(2)` it: that would stop it for every process.
    drop(listener);
    tracing::debug!(connections = tracker.len(), "draining");
    drain.draining.cancel();
    tracker.close();
    match opts.drain_timeout {
        None => tracker.wait().await,
        Some(timeout) => {
            if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
                tracing::warn!(
                    connections = tracker.len(),
                    "drain timeout: closing the connections left"
                );
                drain.abort.cancel();
                tracker.wait().await;
            }
        }
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What every connection task shares.
#[derive(Clone)]
struct Drain {
    /// Cancelled when the drain begins.
    draining: CancellationToken,
    /// Cancelled at the drain timeout: drop every connection.
    abort: CancellationToken,
    idle_grace: Duration,
}

/// What one connection's task knows about it.
#[derive(Default)]
struct ConnState {
    /// Reads that returned data: a change means the client sent something.
    reads: AtomicU64,
    /// Requests whose response has not been fully handed to hyper.
    in_flight: AtomicUsize,
    /// The client speaks HTTP/2.
    h2: AtomicBool,
}

impl ConnState {
    fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }
}

async fn serve_connection<I, S, B>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(Tracked {
        inner: io,
        state: state.clone(),
        first: true,
    });
    let service = DrainService {
        inner: service,
        state: state.clone(),
        draining: drain.draining.clone(),
    };
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => Some(result),
        () = drain.abort.cancelled() => return,
        () = drain.draining.cancelled() => None,
    };
    if let Some(result) = result {
        log_result(result);
        return;
    }
    // Draining. HTTP/1: wait until the client has been silent, with no
    // response in progress, for a whole grace period (requests served
    // meanwhile carry `Connection: close`, so the connection usually ends
    // by itself first). HTTP/2: GOAWAY right away.
    while !state.is_h2() {
        let reads = state.reads.load(Ordering::Relaxed);
        tokio::select! {
            result = conn.as_mut() => { log_result(result); return; }
            () = drain.abort.cancelled() => return,
            () = tokio::time::sleep(drain.idle_grace) => {}
        }
        if state.reads.load(Ordering::Relaxed) == reads
            && state.in_flight.load(Ordering::Relaxed) == 0
        {
            break;
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        result = conn.as_mut() => log_result(result),
        () = drain.abort.cancelled() => {}
    }
}

fn log_result(result: Result<(), BoxError>) {
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// The I/O object handed to hyper: counts the reads that bring data and
/// recognises the HTTP/2 connection preface.
struct Tracked<I> {
    inner: I,
    state: Arc<ConnState>,
    first: bool,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.state.reads.fetch_add(1, Ordering::Relaxed);
            if std::mem::take(&mut this.first) && new.starts_with(b"PRI * HTTP/2") {
                this.state.h2.store(true, Ordering::Relaxed);
            }
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Counts a request as in flight until its response body is dropped (hyper
/// drops it once it has taken the last frame).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wraps the user's service: tracks requests in flight and adds
/// `Connection: close` to HTTP/1 responses once the drain has begun.
struct DrainService<S> {
    inner: S,
    state: Arc<ConnState>,
    draining: CancellationToken,
}

impl<S, B> Service<Request<Incoming>> for DrainService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Body + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.state.clone());
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.state.h2.store(true, Ordering::Relaxed);
        }
        let response = self.inner.call(req);
        let draining = self.draining.clone();
        Box::pin(async move {
            let mut response = response.await?;
            // Decided when the response is ready, not when the request
            // came: a request in flight when the drain began gets it too.
            if http1 && draining.is_cancelled() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                _in_flight: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
