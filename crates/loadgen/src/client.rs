//! One client task: its own connection, one request at a time, every
//! outcome recorded. No pool and no retry: a request that fails is counted
//! and never sent again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::rt::{Read, Write};
use hyper::{Request, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

use crate::classify::{Failure, FailureKind};
use crate::config::{Mode, Target};
use crate::progress::Progress;
use crate::report::Recorder;

/// What every client task of a load does, fixed at start.
pub(crate) struct Workload {
    pub(crate) target: Target,
    pub(crate) uri: Uri,
    pub(crate) host: HeaderValue,
    pub(crate) mode: Mode,
    pub(crate) timeout: Duration,
    /// Time between request starts of one client, when paced.
    pub(crate) period: Option<Duration>,
    pub(crate) track_header: Option<HeaderName>,
    pub(crate) start: Instant,
    /// No request starts at or after this instant.
    pub(crate) deadline: Instant,
    pub(crate) bucket: Duration,
}

impl Workload {
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        if self.mode == Mode::NewConnection {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        request
    }
}

/// A connection and the task that drives it.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

/// Calls `Progress::task_ended` however the task ends, so waiters learn
/// that it ended even if it panicked.
struct EndGuard<'a>(&'a Progress);

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        self.0.task_ended();
    }
}

/// Runs client number `index` of `clients` until the load stops, the
/// deadline passes or the request cap is reached.
pub(crate) async fn run(
    plan: Arc<Workload>,
    progress: Arc<Progress>,
    index: usize,
    clients: usize,
) -> Recorder {
    let _end = EndGuard(&progress);
    let mut rec = Recorder::new(plan.start, plan.bucket);
    let mut slot: Option<Conn> = None;
    // Paced clients start spread over one period rather than all at once.
    let mut next_start = plan
        .period
        .map(|period| plan.start + period.mul_f64(index as f64 / clients as f64));
    loop {
        if let Some(at) = next_start {
            tokio::select! {
                biased;
                () = progress.stopped() => break,
                () = tokio::time::sleep_until(at.into()) => {}
            }
        }
        let began = Instant::now();
        if began >= plan.deadline {
            progress.stop();
            break;
        }
        if !progress.try_start() {
            break;
        }
        let result = tokio::time::timeout(plan.timeout, one_request(&plan, &mut slot)).await;
        let ended = Instant::now();
        let failure = match result {
            Ok(Ok(header)) => {
                rec.ok(
                    ended - began,
                    ended,
                    header.as_ref().map(HeaderValue::as_bytes),
                );
                progress.record_ok();
                None
            }
            Ok(Err(failure)) => Some(failure),
            Err(_elapsed) => Some(Failure::timeout(plan.timeout)),
        };
        if let Some(failure) = failure {
            // After a bad status the response was complete and the
            // connection is sound (one_request already honoured
            // `Connection: close`). After any other failure its state is
            // unknown: never reuse it, and stop driving it now rather than
            // when the server gets around to closing it.
            if failure.kind != FailureKind::Status
                && let Some(conn) = slot.take()
            {
                conn.driver.abort();
            }
            rec.failed(failure.kind, ended);
            progress.record_failure(&failure);
        }
        if let (Some(at), Some(period)) = (next_start.as_mut(), plan.period) {
            // A late request delays the schedule instead of causing a burst.
            *at = (*at + period).max(ended);
        }
    }
    if let Some(conn) = slot.take() {
        conn.driver.abort();
    }
    rec
}

/// Sends one request and reads its whole response. Ok carries the tracked
/// header's value.
async fn one_request(
    plan: &Workload,
    slot: &mut Option<Conn>,
) -> Result<Option<HeaderValue>, Failure> {
    if let Some(conn) = slot.as_mut()
        && conn.sender.ready().await.is_err()
    {
        // The server closed an idle connection between two requests. No
        // request was on it, so nothing failed: open a new one, as any
        // HTTP client does.
        *slot = None;
    }
    let conn = match slot {
        Some(conn) => conn,
        None => slot.insert(connect(&plan.target).await?),
    };
    let response = conn
        .sender
        .send_request(plan.request())
        .await
        .map_err(Failure::hyper)?;
    let (parts, mut body) = response.into_parts();
    // Read the whole body: a response is complete only when its last byte
    // arrived, and the connection can carry the next request only then.
    while let Some(frame) = body.frame().await {
        frame.map_err(Failure::hyper)?;
    }
    if plan.mode == Mode::NewConnection || closes(parts.version, &parts.headers) {
        // Dropped, not aborted: the driver finishes the close by itself.
        *slot = None;
    }
    if !parts.status.is_success() {
        return Err(Failure::status(parts.status));
    }
    Ok(plan
        .track_header
        .as_ref()
        .and_then(|name| parts.headers.get(name).cloned()))
}

/// Whether the server will close the connection after this response.
fn closes(version: Version, headers: &HeaderMap) -> bool {
    let has_token = |token: &str| {
        headers.get_all(CONNECTION).iter().any(|value| {
            value
                .to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if version <= Version::HTTP_10 {
        !has_token("keep-alive")
    } else {
        has_token("close")
    }
}

async fn connect(target: &Target) -> Result<Conn, Failure> {
    match target {
        Target::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await.map_err(Failure::connect)?;
            // Small requests must leave at once, not wait for Nagle.
            let _ = stream.set_nodelay(true);
            handshake(TokioIo::new(stream)).await
        }
        Target::Unix(path) => {
            let stream = UnixStream::connect(path).await.map_err(Failure::connect)?;
            handshake(TokioIo::new(stream)).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<Conn, Failure>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(Failure::hyper)?;
    let driver = tokio::spawn(async move {
        // Its error reaches the request that was outstanding through
        // send_request or the body; with none outstanding there is nothing
        // to count.
        let _ = connection.await;
    });
    Ok(Conn { sender, driver })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(CONNECTION, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn connection_close_is_recognised() {
        assert!(!closes(Version::HTTP_11, &headers(&[])));
        assert!(closes(Version::HTTP_11, &headers(&["close"])));
        assert!(closes(Version::HTTP_11, &headers(&["Keep-Alive, Close"])));
        assert!(closes(Version::HTTP_11, &headers(&["upgrade", "CLOSE"])));
        assert!(!closes(Version::HTTP_11, &headers(&["closed"])));
        assert!(closes(Version::HTTP_10, &headers(&[])));
        assert!(!closes(Version::HTTP_10, &headers(&["keep-alive"])));
    }
}
