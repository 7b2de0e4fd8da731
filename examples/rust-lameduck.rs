//! A Rust server that reloads under baton without failing a request, also
//! on keep-alive connections: the `baton-worker` crate does the drain.
//!
//! ```sh
//! cargo build --example rust-lameduck
//! baton run --listen http=127.0.0.1:8080 --ready notify -- target/debug/examples/rust-lameduck
//! ```
//!
//! The socket: fd 3 (`LISTEN_FDS`), or 127.0.0.1:8080 when started without
//! baton. Readiness: `READY=1` once it serves (`--ready notify`). The
//! drain: on SIGTERM it stops accepting and answers every request with
//! `Connection: close`; a keep-alive connection is closed only after it
//! stayed silent for a whole grace period (`ServeOptions::idle_grace`, 1 s),
//! so no client sends a request on a connection that is closing.

use std::convert::Infallible;

use baton_worker::http::{ServeOptions, serve};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First: from here on SIGTERM starts the drain instead of killing us.
    let stop = baton_worker::stop_signal()?;
    let listener = match baton_worker::listeners()?.into_iter().next() {
        Some(named) => named.listener.into_tokio()?,
        None => {
            baton_worker::TokioListener::Tcp(tokio::net::TcpListener::bind("127.0.0.1:8080").await?)
        }
    };
    let pid = std::process::id().to_string();
    let service = service_fn(move |_req: Request<Incoming>| {
        let pid = pid.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::from("ok\n")));
            response
                .headers_mut()
                .insert("x-pid", pid.parse().expect("digits"));
            Ok::<_, Infallible>(response)
        }
    });
    let server = tokio::spawn(serve(
        listener,
        service,
        async move {
            stop.await;
        },
        ServeOptions::default(),
    ));
    baton_worker::notify_ready()?;
    eprintln!("rust-lameduck pid={} serving", std::process::id());
    server.await?;
    eprintln!("rust-lameduck pid={} drained", std::process::id());
    Ok(())
}
