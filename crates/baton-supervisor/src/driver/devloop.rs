//! The development loop: watched changes → (build) → reload, with storm
//! protection. The driver owns the processes; this keeps the decisions.
//!
//! - A change while a build runs cancels that build (its whole process
//!   group) and starts a new one; the newest change always wins.
//! - A failed build keeps the current generation serving.
//! - Watch-triggered reloads are at least `min_interval` apart, and back
//!   off exponentially after consecutive failed builds or reloads. SIGHUP
//!   and `ctl reload` never wait for this.

use std::time::{Duration, Instant};

use crate::fswatch::{ChangeBatch, WatchSettings, Watcher};

/// The longest pause after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `--watch`, `--build`, `--min-interval`.
#[derive(Debug, Clone)]
pub struct DevSettings {
    /// What to watch.
    pub watch: WatchSettings,
    /// A shell command to run before each new generation, if any.
    pub build: Option<String>,
    /// The least time between two watch-triggered reloads.
    pub min_interval: Duration,
}

/// A build step in progress.
#[derive(Debug)]
pub(super) struct Build {
    /// Its pid, also its process group id.
    pub pid: i32,
    /// When it started.
    pub started: Instant,
}

/// What the driver should do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing now.
    Wait,
    /// Run the build step.
    Build,
    /// Start the next generation (reload, or the first start).
    Reload,
}

/// The loop's state. See the [module docs](self).
#[derive(Debug)]
pub(super) struct DevLoop {
    pub watcher: Watcher,
    pub build_command: Option<String>,
    pub build: Option<Build>,
    min_interval: Duration,
    /// Changes not acted on yet (waiting for the interval or a backoff).
    pending: Option<ChangeBatch>,
    /// Consecutive failed builds or watch-triggered reloads.
    failures: u32,
    /// No watch-triggered build or reload before this.
    not_before: Option<Instant>,
    /// The first generation waits for the first build.
    pub first_start_pending: bool,
}

impl DevLoop {
    pub fn new(watcher: Watcher, settings: &DevSettings) -> Self {
        DevLoop {
            watcher,
            build_command: settings.build.clone(),
            build: None,
            min_interval: settings.min_interval,
            pending: None,
            failures: 0,
            not_before: None,
            first_start_pending: settings.build.is_some(),
        }
    }

    /// When a deferred change may go ahead.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().and(self.not_before)
    }

    /// Files changed. When this returns `Build` while a build runs, the
    /// driver cancels that one first.
    pub fn on_changes(&mut self, batch: ChangeBatch, now: Instant) -> Next {
        match &mut self.pending {
            Some(pending) => {
                for path in batch.paths {
                    if !pending.paths.contains(&path) {
                        pending.paths.push(path);
                    }
                }
            }
            None => self.pending = Some(batch),
        }
        if self.build.is_some() {
            // The newest change wins: cancel, and build again at once.
            return self.go(now);
        }
        self.ready(now)
    }

    /// The deferral deadline passed.
    pub fn on_deadline(&mut self, now: Instant) -> Next {
        self.ready(now)
    }

    fn ready(&mut self, now: Instant) -> Next {
        if self.pending.is_none() || self.not_before.is_some_and(|t| now < t) {
            return Next::Wait;
        }
        self.go(now)
    }

    fn go(&mut self, now: Instant) -> Next {
        self.pending = None;
        if self.build_command.is_some() {
            Next::Build
        } else {
            self.not_before = Some(now + self.min_interval);
            Next::Reload
        }
    }

    /// The build finished; `ok` is its success. Returns what comes next.
    pub fn on_build_done(&mut self, ok: bool, now: Instant) -> Next {
        if self.build.take().is_none() {
            return Next::Wait;
        }
        if ok {
            self.not_before = Some(now + self.min_interval);
            Next::Reload
        } else {
            self.failed(now);
            Next::Wait
        }
    }

    /// The build command could not even be started: a failure too.
    pub fn on_build_unstartable(&mut self, now: Instant) {
        self.failed(now);
    }

    /// A watch-triggered reload ended.
    pub fn on_reload_done(&mut self, ok: bool, now: Instant) {
        if ok {
            self.failures = 0;
        } else {
            self.failed(now);
        }
    }

    fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let backoff = self.backoff();
        self.not_before = Some(now + backoff);
    }

    /// The pause after the current run of failures.
    pub fn backoff(&self) -> Duration {
        if self.failures == 0 {
            return self.min_interval;
        }
        let base = self.min_interval.max(Duration::from_millis(500));
        let factor = 1u32 << (self.failures - 1).min(16);
        base.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The pure decisions, without a watcher: build a DevLoop around a
    // watcher of an empty temp dir.
    async fn dev(build: Option<&str>, min_interval: Duration) -> (DevLoop, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let settings = DevSettings {
            watch: WatchSettings::new([dir.path()]),
            build: build.map(str::to_owned),
            min_interval,
        };
        let watcher = Watcher::start(settings.watch.clone()).await.unwrap();
        (DevLoop::new(watcher, &settings), dir)
    }

    fn batch(path: &str) -> ChangeBatch {
        ChangeBatch {
            paths: vec![path.into()],
            rescan: false,
        }
    }

    #[tokio::test]
    async fn without_a_build_a_change_reloads_at_most_once_per_interval() {
        let (mut dev, _dir) = dev(None, Duration::from_secs(1)).await;
        let t0 = Instant::now();
        assert_eq!(dev.on_changes(batch("a"), t0), Next::Reload);
        assert_eq!(
            dev.on_changes(batch("b"), t0 + Duration::from_millis(100)),
            Next::Wait
        );
        assert_eq!(dev.deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(dev.on_deadline(t0 + Duration::from_secs(1)), Next::Reload);
        assert_eq!(dev.deadline(), None);
    }

    #[tokio::test]
    async fn a_change_during_a_build_cancels_it_and_builds_again() {
        let (mut dev, _dir) = dev(Some("make"), Duration::ZERO).await;
        let t0 = Instant::now();
        assert!(dev.first_start_pending);
        assert_eq!(dev.on_changes(batch("a"), t0), Next::Build);
        dev.build = Some(Build {
            pid: 10,
            started: t0,
        });
        // The driver cancels pid 10 and starts another build.
        assert_eq!(dev.on_changes(batch("b"), t0), Next::Build);
        assert_eq!(dev.on_build_done(true, t0), Next::Reload);
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_and_success_resets() {
        let (mut dev, _dir) = dev(Some("make"), Duration::from_secs(1)).await;
        let t0 = Instant::now();
        for expected in [1, 2, 4, 8, 16, 30, 30] {
            dev.build = Some(Build {
                pid: 1,
                started: t0,
            });
            assert_eq!(dev.on_build_done(false, t0), Next::Wait);
            assert_eq!(dev.backoff(), Duration::from_secs(expected));
        }
        // A change during the backoff waits for it.
        assert_eq!(dev.on_changes(batch("a"), t0), Next::Wait);
        assert_eq!(dev.on_deadline(t0 + Duration::from_secs(30)), Next::Build);
        dev.on_reload_done(true, t0);
        assert_eq!(dev.failures(), 0);
    }
}
