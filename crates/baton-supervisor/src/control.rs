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

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::local_users;
use crate::runtime_dir::{self, Dir, Kind, Rule, RuntimeDirError};
use crate::status::{ReloadRecord, Status};

/// The protocol version this baton speaks.
pub const VERSION: u32 = 1;

/// The longest request line accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What went wrong with the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A live baton already answers on the path.
    #[error(
        "another baton is already running with control socket {0}: stop it, or give this one another --name or --control"
    )]
    InUse(PathBuf),
    /// No control socket could be found for `baton ctl`.
    #[error("{0}")]
    NotFound(String),
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

/// A request, as sent on the wire: `{"v":1,"cmd":"status"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// The protocol version.
    pub v: u32,
    /// The command.
    pub cmd: Command,
}

/// The commands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Report listeners, generations, reloads and counters.
    Status,
    /// Reload, wait for the outcome.
    Reload,
    /// Drain every generation and exit.
    Stop,
}

/// A response: `ok`, and what the command returns, or `error`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// The protocol version.
    pub v: u32,
    /// Whether the command succeeded (a failed reload is `false`).
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    /// For `reload`: the reload, complete or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadRecord>,
}

impl Response {
    /// A success with nothing more to say.
    pub fn ok() -> Self {
        Response {
            v: VERSION,
            ok: true,
            ..Response::default()
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            v: VERSION,
            ok: false,
            error: Some(message.into()),
            ..Response::default()
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

/// Find the control socket for `baton ctl` when no name or path is given:
/// the only one in [`default_dir`], or an error listing them.
pub fn discover() -> Result<PathBuf, ControlError> {
    let dir = default_dir();
    let mut sockets: Vec<PathBuf> = match Dir::open(&dir, Rule::Own, false) {
        Ok(checked) => std::fs::read_dir(checked.entry("."))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(|name| dir.join(name)))
                    .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                    .collect()
            })
            .unwrap_or_default(),
        Err(error) if error.is_not_found() => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    sockets.sort();
    match sockets.len() {
        0 => Err(ControlError::NotFound(format!(
            "no running baton found (no control socket in {}): is baton running as this user? use --name or --control",
            dir.display()
        ))),
        1 => Ok(sockets.remove(0)),
        _ => {
            let names: Vec<String> = sockets
                .iter()
                .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
                .collect();
            Err(ControlError::NotFound(format!(
                "several batons are running ({}): choose one with --name",
                names.join(", ")
            )))
        }
    }
}

/// The checked directory that holds the socket `path`, and the socket's
/// name in it: baton's own directory by the strict rule (made if
/// `create`), any other by the rule for a directory named by `--control`.
fn socket_dir(path: &Path, create: bool) -> Result<(Dir, &str), ControlError> {
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
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, requests.clone(), in_flight.clone()));
            }
            Err(error) => tracing::warn!(%error, "control socket: accept failed"),
        }
    }
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
        let _ = send(&mut write, &Response::error(refusal)).await;
        return;
    }
    let mut reader = BufReader::new(read);
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => return,
        };
        let _answering = in_flight.begin();
        let response = match line {
            Ok(line) => match parse(&line) {
                Ok(command) => call(&requests, command).await,
                Err(error) => Response::error(error),
            },
            Err(too_long) => Response::error(too_long),
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

/// Parse a request line.
pub fn parse(line: &str) -> Result<Command, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "unsupported protocol version {v}: this baton speaks {VERSION}"
            ));
        }
        None => {
            return Err(format!(
                "missing protocol version: send {{\"v\":{VERSION},\"cmd\":…}}"
            ));
        }
    }
    let request: Request = serde_json::from_value(value)
        .map_err(|e| format!("invalid request: {e} (commands: status, reload, stop)"))?;
    Ok(request.cmd)
}

async fn call(requests: &mpsc::Sender<ControlRequest>, command: Command) -> Response {
    let (reply, answer) = oneshot::channel();
    if requests
        .send(ControlRequest { command, reply })
        .await
        .is_err()
    {
        return Response::error("baton is shutting down");
    }
    answer
        .await
        .unwrap_or_else(|_| Response::error("baton is shutting down"))
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("a response serializes");
    line.push(b'\n');
    write.write_all(&line).await
}

/// The client side: send one command, wait for its response (a reload
/// waits for its outcome, however long it takes).
pub fn request(path: &Path, command: Command) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let (dir, name) = socket_dir(path, false)?;
    match dir.kind(name).map_err(io_err)? {
        Some(Kind::Socket) | None => {}
        Some(_) => return Err(ControlError::NotASocket(path.to_owned())),
    }
    let mut stream = StdUnixStream::connect(dir.entry(name)).map_err(io_err)?;
    // Before a word is sent or believed: is this baton, or someone posing?
    let uid = local_users::peer_uid(&stream).map_err(io_err)?;
    if !local_users::believable_server(uid, dir.owner()) {
        return Err(ControlError::Untrusted {
            path: path.to_owned(),
            uid,
            ours: nix::unistd::geteuid().as_raw(),
        });
    }
    let mut line = serde_json::to_vec(&Request {
        v: VERSION,
        cmd: command,
    })
    .expect("serializes");
    line.push(b'\n');
    // A refused peer is answered and disconnected without its request
    // being read: the write may then fail (EPIPE) while the refusal waits
    // to be read. Read it before reporting the write's error.
    let written = stream.write_all(&line);
    let mut answer = String::new();
    let read = std::io::BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(io_err)?;
        read.map_err(io_err)?;
    }
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse(r#"{"v":1,"cmd":"status"}"#), Ok(Command::Status));
        assert_eq!(parse(r#"{"v":1,"cmd":"reload"}"#), Ok(Command::Reload));
        assert!(parse("status").unwrap_err().starts_with("invalid JSON"));
        assert!(
            parse(r#"{"cmd":"status"}"#)
                .unwrap_err()
                .contains("missing protocol version")
        );
        assert!(
            parse(r#"{"v":2,"cmd":"status"}"#)
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(
            parse(r#"{"v":1,"cmd":"dance"}"#)
                .unwrap_err()
                .contains("commands: status, reload, stop")
        );
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
