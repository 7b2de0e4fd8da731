//! The control socket behind `baton ctl`: a unix stream socket speaking
//! JSON lines, one request and one response per line (docs/protocol.md).
//!
//! Each connection has its own task, and the driver answers through a
//! oneshot channel, so a slow or stuck client only ever blocks itself.
//! Peers of another uid are refused (`SO_PEERCRED`; root may always
//! connect), whatever the socket file's mode says.

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::accept::{AcceptErrors, Slots};
use crate::runtime_dir::{self, Dir, Kind, Rule, RuntimeDirError};

mod client;
mod wire;

pub use self::client::{discover, request};
pub use self::wire::{Command, ErrorCode, Request, Response, VERSION};

/// The longest request line accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The most control connections open at once; one more is answered with
/// an error and closed.
pub const MAX_CONNECTIONS: usize = 32;

/// A connection that sends no request for this long is closed (one
/// waiting for its answer, a reload's outcome above all, is not idle).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong with the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A live baton already answers on the path.
    #[error(
        "another baton is already running with control socket {0}: stop it, or give this one another --name or --control"
    )]
    InUse(PathBuf),
    /// The socket file exists but nobody answers on it.
    #[error(
        "no baton answers on control socket {0}: the file is stale (the baton that made it is gone); start baton again, or remove the file"
    )]
    Stale(PathBuf),
    /// Nothing at the path `baton ctl` was given or derived.
    #[error(
        "no control socket at {0}: no baton is running there (is the --name or --control right?)"
    )]
    Missing(PathBuf),
    /// `baton ctl` found no live control socket in the default directory.
    #[error(
        "no running baton found (no live control socket in {}{}): is baton running as this user? use --name or --control",
        dir.display(),
        stale_list(stale)
    )]
    NotRunning {
        /// Where it looked.
        dir: PathBuf,
        /// The socket files nobody answers on there.
        stale: Vec<String>,
    },
    /// `baton ctl` found several live control sockets, by name.
    #[error("several batons are running ({}): choose one with --name or --control", .0.join(", "))]
    Ambiguous(Vec<String>),
    /// A system call failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The response was not valid.
    #[error("baton answered something that is not a protocol response: {0}")]
    Protocol(String),
    /// The directory of the socket cannot be trusted.
    #[error(transparent)]
    Unsafe(#[from] RuntimeDirError),
    /// The path names something that is not a socket.
    #[error(
        "control socket {0} exists and is not a socket: baton deletes nothing it did not make; remove it, or choose another --control"
    )]
    NotASocket(PathBuf),
    /// The server is another user's process.
    #[error(
        "refusing the answer on {path}: the server runs as uid {uid}, neither yours ({ours}) nor root: another user's program may pose as baton"
    )]
    Untrusted {
        /// The path.
        path: PathBuf,
        /// The server's uid.
        uid: u32,
        /// The client's uid.
        ours: u32,
    },
}

fn stale_list(stale: &[String]) -> String {
    if stale.is_empty() {
        String::new()
    } else {
        format!("; stale, nobody answers: {}", stale.join(", "))
    }
}

impl ControlError {
    /// Whether the error means that no baton runs there: no socket file
    /// (or no directory), or a stale one. `baton ctl` exits 3 for it.
    pub fn no_baton(&self) -> bool {
        match self {
            ControlError::NotRunning { .. } | ControlError::Stale(_) | ControlError::Missing(_) => {
                true
            }
            ControlError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            ControlError::Unsafe(error) => error.is_not_found(),
            _ => false,
        }
    }
}

/// A request handed to the driver, with the channel for its answer.
#[derive(Debug)]
pub struct ControlRequest {
    /// The command.
    pub command: Command,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// The directory where control sockets live by default: `/run/baton` for
/// root, `$XDG_RUNTIME_DIR/baton` otherwise, else `/tmp/baton-UID`.
pub fn default_dir() -> PathBuf {
    runtime_dir::base()
}

/// The default control socket of the baton named `name`.
pub fn default_path(name: &str) -> PathBuf {
    default_dir().join(format!("{name}.sock"))
}

/// The checked directory that holds the socket `path`, and the socket's
/// name in it: baton's own directory by the strict rule (made if
/// `create`), any other by the rule for a directory named by `--control`.
pub(crate) fn socket_dir(path: &Path, create: bool) -> Result<(Dir, &str), ControlError> {
    let (parent, name) = runtime_dir::split(path)?;
    let rule = if parent == default_dir() {
        Rule::Own
    } else {
        Rule::Holder
    };
    Ok((Dir::open(parent, rule, create)?, name))
}

/// Bind the control socket: refuse if a live baton answers there, or if
/// the path is not a socket (a regular file is never deleted), replace a
/// stale socket, create the directory (mode 0700) if needed, and set the
/// socket's mode. Call it before the runtime starts; [`serve`] takes it on.
pub fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let (dir, name) = socket_dir(path, true)?;
    match dir.kind(name).map_err(io_err)? {
        None => {}
        Some(Kind::Socket) => match StdUnixStream::connect(dir.entry(name)) {
            Ok(_) => return Err(ControlError::InUse(path.to_owned())),
            // connect() to a regular file fails the same way: hence the
            // check of its kind above.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                dir.remove(name).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        },
        Some(_) => return Err(ControlError::NotASocket(path.to_owned())),
    }
    let listener = std::os::unix::net::UnixListener::bind(dir.entry(name)).map_err(io_err)?;
    dir.chmod(name, mode).map_err(io_err)?;
    Ok(listener)
}

/// Requests handed to the driver whose answers are not written yet, so
/// that baton can let the last answers (`stop`, a reload cut short by
/// shutdown) reach their clients before it exits.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<(AtomicUsize, Notify)>);

impl InFlight {
    fn begin(&self) -> InFlightGuard {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Wait until every answer is written, or `limit` has passed.
    pub async fn settle(&self, limit: Duration) {
        let all_written = async {
            loop {
                let notified = self.0.1.notified();
                if self.0.0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_written).await;
    }
}

struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.0.fetch_sub(1, Ordering::SeqCst);
        self.0.0.1.notify_waiters();
    }
}

/// Accept control connections until the task is dropped; each request
/// becomes a [`ControlRequest`] to the driver.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    requests: mpsc::Sender<ControlRequest>,
    in_flight: InFlight,
) {
    if let Err(error) = listener.set_nonblocking(true) {
        tracing::error!(%error, "control socket disabled");
        return;
    }
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "control socket disabled");
            return;
        }
    };
    let slots = Slots::new(MAX_CONNECTIONS);
    let mut errors = AcceptErrors::new("control");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                errors.succeeded();
                let Some(slot) = slots.take() else {
                    refuse_busy(&stream);
                    continue;
                };
                let (requests, in_flight) = (requests.clone(), in_flight.clone());
                tokio::spawn(async move {
                    connection(stream, requests, in_flight).await;
                    drop(slot);
                });
            }
            Err(error) => errors.failed(error).await,
        }
    }
}

/// Answer a connection beyond [`MAX_CONNECTIONS`] without waiting for it,
/// then close it.
fn refuse_busy(stream: &UnixStream) {
    let response = Response::error(
        ErrorCode::TooManyConnections,
        format!("too many control connections (the limit is {MAX_CONNECTIONS}): try again later"),
    );
    let mut line = serde_json::to_vec(&response).expect("a response serializes");
    line.push(b'\n');
    // A fresh socket's buffer takes one line; if not, closing says enough.
    let _ = stream.try_write(&line);
}

/// Whether a peer may talk to baton: the same uid, or root.
fn allowed(stream: &UnixStream) -> Result<(), String> {
    let ours = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == ours || cred.uid() == 0 => Ok(()),
        Ok(cred) => Err(format!(
            "permission denied: uid {} may not control this baton (uid {ours})",
            cred.uid()
        )),
        Err(e) => Err(format!(
            "permission denied: cannot read peer credentials: {e}"
        )),
    }
}

async fn connection(
    stream: UnixStream,
    requests: mpsc::Sender<ControlRequest>,
    in_flight: InFlight,
) {
    let refusal = allowed(&stream).err();
    let (read, mut write) = stream.into_split();
    if let Some(refusal) = refusal {
        tracing::warn!(%refusal, "control connection refused");
        let response = Response::error(ErrorCode::PermissionDenied, refusal);
        let _ = send(&mut write, &response).await;
        return;
    }
    let mut reader = BufReader::new(read);
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader)).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None) | Err(_)) => return,
            Err(_idle) => {
                let idle = Response::error(
                    ErrorCode::IdleTimeout,
                    format!(
                        "closing the connection: no request for {} s",
                        IDLE_TIMEOUT.as_secs()
                    ),
                );
                let _ = send(&mut write, &idle).await;
                return;
            }
        };
        let _answering = in_flight.begin();
        let response = match line {
            Ok(line) => match parse(&line) {
                Ok(command) => call(&requests, command).await,
                Err((code, error)) => Response::error(code, error),
            },
            Err(too_long) => Response::error(ErrorCode::RequestTooLarge, too_long),
        };
        if send(&mut write, &response).await.is_err() {
            return;
        }
    }
}

/// Read one line of at most [`MAX_REQUEST`] bytes. An over-long line is
/// consumed to its end and reported, so the connection can go on.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> io::Result<Option<Result<String, String>>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(None);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => (&buf[..end], end + 1),
            None => (buf, 0),
        };
        if !too_long {
            line.extend_from_slice(chunk);
            if line.len() > MAX_REQUEST {
                too_long = true;
                line = Vec::new();
            }
        }
        let used = if done > 0 { done } else { chunk.len() };
        reader.consume(used);
        if done > 0 {
            break;
        }
    }
    if too_long {
        return Ok(Some(Err(format!(
            "request too large: the limit is {MAX_REQUEST} bytes per line"
        ))));
    }
    Ok(Some(Ok(String::from_utf8_lossy(&line).into_owned())))
}

/// Parse a request line; an error comes with its code.
pub fn parse(line: &str) -> Result<Command, (ErrorCode, String)> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| (ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err((
                ErrorCode::UnsupportedVersion,
                format!("unsupported protocol version {v}: this baton speaks {VERSION}"),
            ));
        }
        None => {
            return Err((
                ErrorCode::MissingVersion,
                format!("missing protocol version: send {{\"v\":{VERSION},\"cmd\":…}}"),
            ));
        }
    }
    // A string that names no command, as opposed to no `cmd` at all.
    let unknown = value
        .get("cmd")
        .and_then(|cmd| cmd.as_str())
        .is_some_and(|cmd| serde_json::from_value::<Command>(cmd.into()).is_err());
    let request: Request = serde_json::from_value(value).map_err(|e| {
        let code = if unknown {
            ErrorCode::NoSuchCommand
        } else {
            ErrorCode::InvalidRequest
        };
        (
            code,
            format!("invalid request: {e} (commands: status, reload, stop)"),
        )
    })?;
    Ok(request.cmd)
}

async fn call(requests: &mpsc::Sender<ControlRequest>, command: Command) -> Response {
    let (reply, answer) = oneshot::channel();
    if requests
        .send(ControlRequest { command, reply })
        .await
        .is_err()
    {
        return Response::error(ErrorCode::ShuttingDown, "baton is shutting down");
    }
    answer
        .await
        .unwrap_or_else(|_| Response::error(ErrorCode::ShuttingDown, "baton is shutting down"))
}

/// Write one response; a client that reads nothing for [`IDLE_TIMEOUT`]
/// loses its connection rather than hold it forever.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("a response serializes");
    line.push(b'\n');
    tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&line))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse(r#"{"v":1,"cmd":"status"}"#), Ok(Command::Status));
        assert_eq!(parse(r#"{"v":1,"cmd":"reload"}"#), Ok(Command::Reload));
        for (line, code, says) in [
            ("status", ErrorCode::InvalidJson, "invalid JSON"),
            (
                r#"{"cmd":"status"}"#,
                ErrorCode::MissingVersion,
                "missing protocol version",
            ),
            (
                r#"{"v":2,"cmd":"status"}"#,
                ErrorCode::UnsupportedVersion,
                "unsupported",
            ),
            (
                r#"{"v":1,"cmd":"dance"}"#,
                ErrorCode::NoSuchCommand,
                "commands: status, reload, stop",
            ),
            (
                r#"{"v":1}"#,
                ErrorCode::InvalidRequest,
                "missing field `cmd`",
            ),
            (
                r#"{"v":1,"cmd":7}"#,
                ErrorCode::InvalidRequest,
                "commands: status",
            ),
        ] {
            let (got, message) = parse(line).unwrap_err();
            assert_eq!(got, code, "{line}: {message}");
            assert!(message.contains(says), "{line}: {message}");
        }
    }

    #[tokio::test]
    async fn an_oversized_line_is_an_error_and_the_next_line_is_read() {
        let mut input = vec![b'x'; MAX_REQUEST + 10];
        input.push(b'\n');
        input.extend_from_slice(b"{\"v\":1}\n");
        let mut reader = BufReader::with_capacity(1024, &input[..]);
        assert!(read_line(&mut reader).await.unwrap().unwrap().is_err());
        assert_eq!(
            read_line(&mut reader).await.unwrap().unwrap(),
            Ok("{\"v\":1}".to_owned())
        );
        assert_eq!(read_line(&mut reader).await.unwrap(), None);
    }

    /// A control server on a fresh socket; the receiver plays the driver.
    fn server(dir: &Path) -> (PathBuf, mpsc::Receiver<ControlRequest>) {
        let path = dir.join("c.sock");
        let listener = bind(&path, 0o600).unwrap();
        let (requests, driver) = mpsc::channel(64);
        tokio::spawn(serve(listener, requests, InFlight::default()));
        (path, driver)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_and_one_waiting_for_its_answer_is_not() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, mut driver) = server(dir.path());
        let start = tokio::time::Instant::now();
        let mut idle = UnixStream::connect(&path).await.unwrap();
        let mut waiting = UnixStream::connect(&path).await.unwrap();
        waiting
            .write_all(b"{\"v\":1,\"cmd\":\"reload\"}\n")
            .await
            .unwrap();
        let reload = driver.recv().await.unwrap();
        let mut said = String::new();
        idle.read_to_string(&mut said).await.unwrap();
        assert!(said.contains("no request for 60 s"), "{said}");
        assert!(said.contains(r#""code":"idle_timeout""#), "{said}");
        assert!(start.elapsed() >= IDLE_TIMEOUT);
        // Long past the idle timeout, the reload's answer still arrives.
        tokio::time::sleep(IDLE_TIMEOUT * 2).await;
        reload.reply.send(Response::ok()).unwrap();
        let mut answer = String::new();
        BufReader::new(&mut waiting)
            .read_line(&mut answer)
            .await
            .unwrap();
        assert_eq!(answer, "{\"v\":1,\"ok\":true}\n");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_answered_and_closed() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, mut driver) = server(dir.path());
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(UnixStream::connect(&path).await.unwrap());
        }
        let mut refused = String::new();
        let mut extra = UnixStream::connect(&path).await.unwrap();
        extra.read_to_string(&mut refused).await.unwrap();
        assert!(
            refused.contains("too many control connections"),
            "{refused}"
        );
        assert!(
            refused.contains(r#""code":"too_many_connections""#),
            "{refused}"
        );
        // A slot freed is a slot taken again, once baton has seen the
        // connection close.
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let stop = loop {
            let mut again = UnixStream::connect(&path).await.unwrap();
            again
                .write_all(b"{\"v\":1,\"cmd\":\"stop\"}\n")
                .await
                .unwrap();
            tokio::select! {
                request = driver.recv() => break request.unwrap(),
                _ = again.read_to_string(&mut refused) => {
                    assert!(tokio::time::Instant::now() < deadline, "no slot came back");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        assert_eq!(stop.command, Command::Stop);
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/app.sock");
        let live = bind(&path, 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(bind(&path, 0o600), Err(ControlError::InUse(_))));
        drop(live);
        let stale = request(&path, Command::Status).unwrap_err().to_string();
        assert!(
            stale.starts_with("no baton answers on control socket"),
            "{stale}"
        );
        assert!(stale.contains("stale"), "{stale}");
        bind(&path, 0o600).expect("a stale socket file is replaced");
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        std::fs::write(&path, "precious").unwrap();
        let error = bind(&path, 0o600).unwrap_err();
        assert!(matches!(error, ControlError::NotASocket(_)), "{error}");
        assert!(error.to_string().contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        assert!(matches!(
            request(&path, Command::Status),
            Err(ControlError::NotASocket(_))
        ));
    }
}
