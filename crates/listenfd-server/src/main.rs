//! An HTTP server as systemfd users write it: its socket comes from the
//! `listenfd` crate (`LISTEN_FDS`, checked against `LISTEN_PID`), else it
//! binds 127.0.0.1:3000 itself. It knows nothing of baton: no `READY=1`,
//! no baton crate. On SIGTERM it stops accepting and finishes the
//! connections it has. Every response carries `X-Pid`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use listenfd::ListenFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut listenfd = ListenFd::from_env();
    let listener = match listenfd.take_tcp_listener(0)? {
        Some(listener) => listener,
        None => std::net::TcpListener::bind("127.0.0.1:3000")?,
    };
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    say(&format!("serving on {}", listener.local_addr()?));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(async move {
                    let service = service_fn(|_: Request<hyper::body::Incoming>| async {
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                        response
                            .headers_mut()
                            .insert("x-pid", std::process::id().into());
                        Ok::<_, Infallible>(response)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = terminate.recv() => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    say("drained");
    Ok(())
}

/// One whole line to stderr in one write: `eprintln!` may write it in
/// pieces, between which another process's line can land.
fn say(what: &str) {
    use std::io::Write;
    let line = format!("listenfd-server pid={} {what}\n", std::process::id());
    let _ = std::io::stderr().write_all(line.as_bytes());
}
