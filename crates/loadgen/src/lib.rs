//! An HTTP/1 load client that hides no failure, for baton's end-to-end
//! tests, benchmark and demo.
//!
//! Every client task owns one connection (a new one per request, or one
//! kept alive), sends its next request as soon as the last response ended,
//! and never retries: each failed request is counted by [`FailureKind`].
//! Targets are loopback addresses or unix sockets only.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) {
//! use std::time::Duration;
//! use baton_loadgen::{Config, Load, Mode};
//!
//! let load = Load::start(Config {
//!     clients: 16,
//!     mode: Mode::NewConnection,
//!     duration: Duration::from_secs(2),
//!     ..Config::new(addr)
//! })
//! .expect("valid config");
//! let report = load.finish().await;
//! println!("{}", report.summary());
//! # }
//! ```

#![warn(missing_docs)]

mod classify;
mod client;
mod config;
mod load;
mod progress;
mod report;

pub use classify::FailureKind;
pub use config::{Config, ConfigError, Mode, Target};
/// Re-exported so callers can set [`Config::track_header`] without
/// depending on hyper.
pub use hyper::header::HeaderName;
pub use load::{Ended, Load};
pub use progress::Snapshot;
pub use report::{Bucket, Latencies, Report};
