//! The worker side of baton: take the listening sockets the supervisor
//! hands over, tell it when you are ready, and drain without failing a
//! request when the stop signal comes.
//!
//! baton (like systemd) starts a worker with its listening sockets at
//! descriptors 3, 4, … and `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES` in
//! the environment, plus `NOTIFY_SOCKET` for the readiness message. On a
//! reload it starts the next generation, waits for its `READY=1`, and then
//! sends the old generation its stop signal (SIGTERM by default).
//!
//! - [`listeners`] takes the inherited sockets (systemd's protocol, or
//!   Server::Starter's `SERVER_STARTER_PORT`).
//! - [`notify_ready`] / [`notify`] speak the sd_notify protocol;
//!   [`watchdog_interval`] says how often to send `WATCHDOG=1`.
//! - [`stop_signal`] resolves when SIGTERM, SIGINT or SIGQUIT arrives.
//! - [`http::serve`] serves hyper services (HTTP/1 and HTTP/2) and drains
//!   keep-alive connections without the usual race: see its module
//!   documentation.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use baton_worker::http::{serve, ServeOptions};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{Request, Response, body::Incoming, service::service_fn};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let stop = baton_worker::stop_signal()?; // first: SIGTERM must not kill us
//!     let inherited = baton_worker::listeners()?;
//!     let listener = match inherited.into_iter().next() {
//!         Some(named) => named.listener.into_tokio()?,
//!         None => baton_worker::TokioListener::Tcp(
//!             tokio::net::TcpListener::bind("127.0.0.1:8080").await?,
//!         ),
//!     };
//!     let service = service_fn(|_req: Request<Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
//!     });
//!     let server = tokio::spawn(serve(
//!         listener,
//!         service,
//!         async move { stop.await; },
//!         ServeOptions::default(),
//!     ));
//!     baton_worker::notify_ready()?;
//!     server.await?;
//!     Ok(())
//! }
//! ```

mod env;
mod error;
pub mod http;
mod listen;
mod notify;
mod signal;

pub use error::Error;
pub use listen::{Listener, NamedListener, Stream, TokioListener, listeners};
pub use notify::{notify, notify_ready, watchdog_interval};
pub use signal::{StopSignal, stop_signal};
