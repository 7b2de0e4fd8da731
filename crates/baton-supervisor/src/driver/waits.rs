//! The loop's waits that may have nothing to wait for: an optional
//! interval, watcher or deadline is a future that never resolves, so the
//! select loop needs no branch per case.

use std::time::{Duration, Instant};

use crate::fswatch::{ChangeBatch, WatchError, Watcher};

/// An interval that delays missed ticks instead of bursting them.
pub(super) fn interval(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// The next tick of an optional interval; never, without one.
pub(super) async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next batch of changes; never, without a watcher.
pub(super) async fn next_batch(watcher: &mut Option<Watcher>) -> Result<ChangeBatch, WatchError> {
    match watcher {
        Some(watcher) => watcher.next_batch().await,
        None => std::future::pending().await,
    }
}

/// Sleep until `deadline`; never, without one.
pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
