//! The handle of a running load: start, watch, stop, collect the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Uri;
use hyper::header::HeaderValue;
use tokio::task::JoinHandle;

use crate::client::{self, Workload};
use crate::config::{Config, ConfigError, Target};
use crate::progress::{Progress, Snapshot};
use crate::report::{self, Recorder, Report};

/// A running load. Dropping it stops it (no new request starts), so a test
/// that panics midway does not leave traffic running.
#[must_use = "dropping a Load stops it at once"]
#[derive(Debug)]
pub struct Load {
    progress: Arc<Progress>,
    tasks: Vec<JoinHandle<Recorder>>,
    start: Instant,
    bucket: Duration,
}

/// [`Load::wait_for`] gave up: every client ended before the condition held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the load ended before the awaited condition held ({0})")]
pub struct Ended(pub Snapshot);

impl Load {
    /// Starts `config.clients` client tasks on the current tokio runtime.
    ///
    /// Fails, before any connection is made, on an invalid config (see
    /// [`Config::validate`]) or outside a runtime.
    pub fn start(config: Config) -> Result<Load, ConfigError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let uri: Uri = config
            .path
            .parse()
            .map_err(|_| ConfigError::InvalidPath(config.path.clone()))?;
        let host = match &config.target {
            // SocketAddr's Display is exactly Host syntax ("[::1]:80").
            Target::Tcp(addr) => HeaderValue::try_from(addr.to_string())
                .expect("a socket address is a valid header value"),
            Target::Unix(_) => HeaderValue::from_static("localhost"),
        };
        let start = Instant::now();
        let plan = Arc::new(Workload {
            target: config.target,
            uri,
            host,
            mode: config.mode,
            timeout: config.timeout,
            period: config
                .rate_per_client
                .map(|rate| Duration::from_secs_f64(1.0 / rate)),
            track_header: config.track_header,
            start,
            deadline: start + config.duration,
            bucket: config.timeline_bucket,
        });
        let progress = Arc::new(Progress::new(config.max_requests, config.clients));
        let tasks = (0..config.clients)
            .map(|index| {
                runtime.spawn(client::run(
                    plan.clone(),
                    progress.clone(),
                    index,
                    config.clients,
                ))
            })
            .collect();
        // Clients check the deadline before each request; this wakes the
        // paced ones that sleep through it, and marks the load stopped.
        let timer = progress.clone();
        runtime.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until((start + config.duration).into()) => {
                    timer.stop();
                }
                () = timer.stopped() => {}
            }
        });
        Ok(Load {
            progress,
            tasks,
            start,
            bucket: config.timeline_bucket,
        })
    }

    /// Starts no new request from now on; requests in flight still complete
    /// and are counted. Returns how many requests had started before, all of
    /// which the report will count as ok or failed. Idempotent.
    pub fn stop(&self) -> u64 {
        self.progress.stop()
    }

    /// Live counters.
    pub fn snapshot(&self) -> Snapshot {
        self.progress.snapshot()
    }

    /// Requests that ended ok so far.
    pub fn ok_so_far(&self) -> u64 {
        self.snapshot().ok
    }

    /// Requests that failed so far.
    pub fn failed_so_far(&self) -> u64 {
        self.snapshot().failed
    }

    /// Waits, without polling, until `cond` holds for the live counters
    /// (e.g. `|s| s.ok >= 100` before a reload); fails with [`Ended`] once
    /// every client has ended without it holding. Bound it with
    /// `tokio::time::timeout` if the condition may never hold.
    pub async fn wait_for(&self, cond: impl FnMut(&Snapshot) -> bool) -> Result<Snapshot, Ended> {
        self.progress.wait_for(cond).await.map_err(Ended)
    }

    /// Waits until the load ends by itself (duration, request cap, or an
    /// earlier [`Load::stop`]) and every request in flight has completed or
    /// timed out, then merges the report. Does not stop the load: call
    /// [`Load::stop`] first to end it now.
    ///
    /// # Panics
    ///
    /// Resumes the panic of a client task that panicked.
    pub async fn finish(mut self) -> Report {
        let mut recorders = Vec::with_capacity(self.tasks.len());
        for task in std::mem::take(&mut self.tasks) {
            match task.await {
                Ok(rec) => recorders.push(rec),
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                // Cancelled: the runtime is shutting down; report what is left.
                Err(_) => {}
            }
        }
        let started = self.progress.snapshot().started;
        report::merge(
            self.start,
            self.bucket,
            started,
            recorders,
            self.progress.take_samples(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.progress.stop();
    }
}
