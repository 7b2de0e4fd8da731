//! State shared by the client tasks and the [`Load`](crate::Load) handle:
//! the gate that admits requests, live counters, error samples.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

use crate::classify::Failure;

/// How many error messages a report keeps.
pub(crate) const MAX_ERROR_SAMPLES: usize = 10;

/// The gate's top bit: set once the load is stopped.
const STOPPED: u64 = 1 << 63;

/// A live view of a running load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests admitted so far (each ends as ok or failed).
    pub started: u64,
    /// Requests that ended with a complete 2xx response.
    pub ok: u64,
    /// Requests that failed, any kind.
    pub failed: u64,
    /// Whether new requests are refused (stop, duration or request cap).
    pub stopped: bool,
    /// Whether every client task has ended.
    pub ended: bool,
}

impl Snapshot {
    /// Requests started but not yet ended.
    pub fn in_flight(&self) -> u64 {
        self.started.saturating_sub(self.ok + self.failed)
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "started={} ok={} failed={} in_flight={}{}{}",
            self.started,
            self.ok,
            self.failed,
            self.in_flight(),
            if self.stopped { " stopped" } else { "" },
            if self.ended { " ended" } else { "" },
        )
    }
}

pub(crate) struct Progress {
    /// [`STOPPED`] bit plus the number of requests admitted. One atomic for
    /// both, so "no request starts after stop" and the request cap are
    /// exact: [`Progress::stop`] learns precisely how many started before it.
    gate: AtomicU64,
    max_requests: u64,
    ok: AtomicU64,
    failed: AtomicU64,
    live_tasks: AtomicUsize,
    /// Turns true once the load stops: wakes paced clients waiting for
    /// their next slot, and the deadline timer.
    stopped: watch::Sender<bool>,
    /// Signalled after every change a [`Snapshot`] would show, but only
    /// while someone waits: most runs have no waiter and pay one atomic load.
    changed: Notify,
    waiters: AtomicUsize,
    samples: Mutex<Vec<String>>,
    sampled: AtomicUsize,
}

impl Progress {
    pub(crate) fn new(max_requests: Option<u64>, tasks: usize) -> Self {
        Progress {
            gate: AtomicU64::new(0),
            // The count lives below the STOPPED bit.
            max_requests: max_requests.unwrap_or(u64::MAX).min(STOPPED - 1),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            live_tasks: AtomicUsize::new(tasks),
            stopped: watch::Sender::new(false),
            changed: Notify::new(),
            waiters: AtomicUsize::new(0),
            samples: Mutex::new(Vec::new()),
            sampled: AtomicUsize::new(0),
        }
    }

    /// Admits one request, unless the load is stopped or the cap reached.
    pub(crate) fn try_start(&self) -> bool {
        let admitted = self
            .gate
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |gate| {
                (gate & STOPPED == 0 && gate < self.max_requests).then_some(gate + 1)
            })
            .is_ok();
        if admitted {
            self.changed_now();
        }
        admitted
    }

    /// Admits no more requests; returns how many were admitted before.
    pub(crate) fn stop(&self) -> u64 {
        let before = self.gate.fetch_or(STOPPED, Ordering::SeqCst);
        self.stopped.send_replace(true);
        self.changed_now();
        before & !STOPPED
    }

    /// Resolves once [`Progress::stop`] was called (at once if it was).
    pub(crate) async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        // The sender lives in `self`, so this cannot fail while we borrow it.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    pub(crate) fn record_ok(&self) {
        self.ok.fetch_add(1, Ordering::SeqCst);
        self.changed_now();
    }

    pub(crate) fn record_failure(&self, failure: &Failure) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        // Reserve a slot first so a flood of errors formats at most
        // MAX_ERROR_SAMPLES messages and takes the lock as often.
        if self.sampled.fetch_add(1, Ordering::Relaxed) < MAX_ERROR_SAMPLES {
            let text = failure.describe();
            self.samples
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(text);
        }
        self.changed_now();
    }

    /// Called by each client task as it returns.
    pub(crate) fn task_ended(&self) {
        if self.live_tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Nothing can start any more; say so to snapshots and waiters.
            self.stop();
        } else {
            self.changed_now();
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        // Completions before admissions, so in_flight never reads negative.
        let ok = self.ok.load(Ordering::SeqCst);
        let failed = self.failed.load(Ordering::SeqCst);
        let ended = self.live_tasks.load(Ordering::SeqCst) == 0;
        let gate = self.gate.load(Ordering::SeqCst);
        Snapshot {
            started: gate & !STOPPED,
            ok,
            failed,
            stopped: gate & STOPPED != 0 || gate >= self.max_requests,
            ended,
        }
    }

    pub(crate) fn take_samples(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .samples
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Waits until `cond` holds for a snapshot, or until the load has ended
    /// without it holding.
    pub(crate) async fn wait_for(
        &self,
        mut cond: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot, Snapshot> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _guard = WaiterGuard(&self.waiters);
        loop {
            // Register before looking, so a change between the look and
            // the await still wakes us.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snapshot = self.snapshot();
            if cond(&snapshot) {
                return Ok(snapshot);
            }
            if snapshot.ended {
                return Err(snapshot);
            }
            notified.await;
        }
    }

    fn changed_now(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Progress").field(&self.snapshot()).finish()
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_respects_cap_and_stop() {
        let p = Progress::new(Some(3), 1);
        assert!(p.try_start());
        assert!(p.try_start());
        assert!(!p.snapshot().stopped);
        assert!(p.try_start());
        assert!(!p.try_start(), "cap of 3 reached");
        assert!(p.snapshot().stopped);
        assert_eq!(p.stop(), 3);

        let p = Progress::new(None, 1);
        assert!(p.try_start());
        assert_eq!(p.stop(), 1);
        assert!(!p.try_start(), "stopped");
        assert_eq!(p.snapshot().started, 1);
        assert_eq!(p.stop(), 1, "stop is idempotent");
    }

    #[test]
    fn snapshot_counts_in_flight() {
        let p = Progress::new(None, 2);
        for _ in 0..5 {
            assert!(p.try_start());
        }
        p.record_ok();
        p.record_failure(&Failure::timeout(std::time::Duration::from_secs(1)));
        let s = p.snapshot();
        assert_eq!((s.started, s.ok, s.failed, s.in_flight()), (5, 1, 1, 3));
        assert!(!s.ended);
        p.task_ended();
        assert!(!p.snapshot().ended);
        p.task_ended();
        let s = p.snapshot();
        assert!(s.ended && s.stopped);
        assert_eq!(p.take_samples().len(), 1);
    }

    #[test]
    fn samples_are_bounded() {
        let p = Progress::new(None, 1);
        for _ in 0..100 {
            p.record_failure(&Failure::timeout(std::time::Duration::from_secs(1)));
        }
        assert_eq!(p.take_samples().len(), MAX_ERROR_SAMPLES);
        assert_eq!(p.snapshot().failed, 100);
    }
}
