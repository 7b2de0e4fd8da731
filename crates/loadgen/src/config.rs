//! What a load run does: target, request, concurrency, bounds and pacing.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::header::HeaderName;

/// Upper bound on `(duration + timeout) / timeline_bucket`.
const MAX_TIMELINE_BUCKETS: u128 = 100_000;

/// Where the requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP address; it must be a loopback address (127.0.0.0/8 or ::1),
    /// because this client exists to load servers on the same machine.
    Tcp(SocketAddr),
    /// A unix stream socket at this path.
    Unix(PathBuf),
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target::Tcp(addr)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "tcp://{addr}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How a client task uses connections.
///
/// Both matter for baton: a reload treats idle keep-alive connections and
/// fresh connections waiting in the accept queue differently, and each has
/// its own way to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One request per new connection; the request carries
    /// `Connection: close`.
    NewConnection,
    /// One connection reused for request after request. A new connection is
    /// opened only when the server asked to close (`Connection: close`) or
    /// closed the connection while no request was outstanding.
    KeepAlive,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::NewConnection => "new-connection",
            Mode::KeepAlive => "keep-alive",
        })
    }
}

/// Everything a load run needs. Build it with [`Config::new`] and change
/// the public fields (`Config { clients: 32, ..Config::new(target) }`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to connect.
    pub target: Target,
    /// The request target of every `GET`, in origin form (`/`, `/slow?ms=5`).
    pub path: String,
    /// Number of client tasks, each with its own connection: the
    /// concurrency.
    pub clients: usize,
    /// Fresh connection per request, or one reused connection per client.
    pub mode: Mode,
    /// No request starts after this much time from the start; requests in
    /// flight at that moment still complete (or time out).
    pub duration: Duration,
    /// Total number of requests over all clients; `None` for no cap.
    pub max_requests: Option<u64>,
    /// A request (connect, send, whole body) that takes longer fails as
    /// [`FailureKind::Timeout`](crate::FailureKind::Timeout).
    pub timeout: Duration,
    /// Requests per second per client; `None` runs a closed loop (the next
    /// request starts as soon as the previous one ended).
    pub rate_per_client: Option<f64>,
    /// A response header whose distinct values are collected from the
    /// successful responses (default `x-pid`: which worker answered).
    pub track_header: Option<HeaderName>,
    /// Width of one bucket of the report's timeline.
    pub timeline_bucket: Duration,
}

impl Config {
    /// A config for `target` with the defaults: `GET /`, 8 clients,
    /// keep-alive, 10 s, no request cap, 30 s timeout, closed loop,
    /// tracking `x-pid`, 100 ms timeline buckets.
    pub fn new(target: impl Into<Target>) -> Self {
        Config {
            target: target.into(),
            path: "/".to_owned(),
            clients: 8,
            mode: Mode::KeepAlive,
            duration: Duration::from_secs(10),
            max_requests: None,
            timeout: Duration::from_secs(30),
            rate_per_client: None,
            track_header: Some(HeaderName::from_static("x-pid")),
            timeline_bucket: Duration::from_millis(100),
        }
    }

    /// Checks the config before any connection is made, so a bad config
    /// sends no traffic at all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Target::Tcp(addr) = self.target {
            // to_canonical: ::ffff:127.0.0.1 is loopback too.
            if !addr.ip().to_canonical().is_loopback() {
                return Err(ConfigError::NotLoopback(addr));
            }
        }
        if self.clients == 0 {
            return Err(ConfigError::NoClients);
        }
        if self.duration.is_zero() {
            return Err(ConfigError::ZeroDuration);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        // Every task keeps a dense timeline up to its last request, which
        // ends at most `duration + timeout` after the start: bound its size.
        let span = self.duration.saturating_add(self.timeout);
        if self.timeline_bucket.is_zero()
            || span.as_nanos() / self.timeline_bucket.as_nanos() > MAX_TIMELINE_BUCKETS
        {
            return Err(ConfigError::TimelineBucket(self.timeline_bucket));
        }
        if let Some(rate) = self.rate_per_client
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ConfigError::InvalidRate(rate));
        }
        if !self.path.starts_with('/') || self.path.parse::<hyper::Uri>().is_err() {
            return Err(ConfigError::InvalidPath(self.path.clone()));
        }
        Ok(())
    }
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Traffic may only go to this machine.
    #[error("target {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    /// `clients` was 0.
    #[error("clients must be at least 1")]
    NoClients,
    /// `duration` was 0.
    #[error("duration must be more than zero")]
    ZeroDuration,
    /// `timeout` was 0.
    #[error("timeout must be more than zero")]
    ZeroTimeout,
    /// `timeline_bucket` was 0, or so small that `duration + timeout` spans
    /// more than 100 000 buckets.
    #[error("timeline bucket {0:?} is zero or too small for duration + timeout")]
    TimelineBucket(Duration),
    /// `rate_per_client` was not a positive finite number.
    #[error("rate per client must be a positive finite number, not {0}")]
    InvalidRate(f64),
    /// `path` is not an origin-form request target.
    #[error("path {0:?} is not an origin-form request target (like /a?b)")]
    InvalidPath(String),
    /// [`Load::start`](crate::Load::start) was called outside a tokio runtime.
    #[error("Load::start needs a tokio runtime")]
    NoRuntime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Config {
        Config::new(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    #[test]
    fn defaults_are_valid() {
        local().validate().unwrap();
        Config::new(Target::Unix("/tmp/x.sock".into()))
            .validate()
            .unwrap();
        Config::new("[::1]:80".parse::<SocketAddr>().unwrap())
            .validate()
            .unwrap();
    }

    #[test]
    fn refuses_other_hosts() {
        for addr in [
            "10.0.0.1:80",
            "192.168.1.1:80",
            "[2001:db8::1]:80",
            "0.0.0.0:80",
        ] {
            let cfg = Config::new(addr.parse::<SocketAddr>().unwrap());
            assert!(
                matches!(cfg.validate(), Err(ConfigError::NotLoopback(_))),
                "{addr}"
            );
        }
        let mapped = Config::new("[::ffff:127.0.0.1]:80".parse::<SocketAddr>().unwrap());
        mapped.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        type Expected = fn(&ConfigError) -> bool;
        let cases: Vec<(Config, Expected)> = vec![
            (
                Config {
                    clients: 0,
                    ..local()
                },
                |e| matches!(e, ConfigError::NoClients),
            ),
            (
                Config {
                    duration: Duration::ZERO,
                    ..local()
                },
                |e| matches!(e, ConfigError::ZeroDuration),
            ),
            (
                Config {
                    timeout: Duration::ZERO,
                    ..local()
                },
                |e| matches!(e, ConfigError::ZeroTimeout),
            ),
            (
                Config {
                    timeline_bucket: Duration::ZERO,
                    ..local()
                },
                |e| matches!(e, ConfigError::TimelineBucket(_)),
            ),
            (
                Config {
                    timeline_bucket: Duration::from_micros(1),
                    ..local()
                },
                |e| matches!(e, ConfigError::TimelineBucket(_)),
            ),
            (
                Config {
                    rate_per_client: Some(0.0),
                    ..local()
                },
                |e| matches!(e, ConfigError::InvalidRate(_)),
            ),
            (
                Config {
                    rate_per_client: Some(f64::NAN),
                    ..local()
                },
                |e| matches!(e, ConfigError::InvalidRate(_)),
            ),
            (
                Config {
                    path: "http://example.com/".into(),
                    ..local()
                },
                |e| matches!(e, ConfigError::InvalidPath(_)),
            ),
            (
                Config {
                    path: "/a b".into(),
                    ..local()
                },
                |e| matches!(e, ConfigError::InvalidPath(_)),
            ),
        ];
        for (cfg, expected) in cases {
            let err = cfg.validate().expect_err("must be rejected");
            assert!(expected(&err), "unexpected error {err:?}");
        }
    }
}
