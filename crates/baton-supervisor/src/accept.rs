//! What the control and metrics servers share about accepting: a cap on
//! the connections each holds, and what to do when `accept` fails.
//!
//! Out of descriptors (`EMFILE`, `ENFILE`) or memory, `accept` fails at
//! once for as long as the shortage lasts, and the connection stays in
//! the queue: retrying at once spins and logs without end. The loop pauses
//! instead, and logs at most once per [`LOG_INTERVAL`], with how many
//! accepts failed since its last line.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The pause after an `accept` that failed for want of descriptors or memory.
pub const PAUSE: Duration = Duration::from_millis(100);

/// The least time between two log lines about failed accepts.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The failed accepts of one server.
#[derive(Debug)]
pub struct AcceptErrors {
    server: &'static str,
    /// Failures not told yet.
    untold: u64,
    /// Failures since the last success (what a pause follows).
    since_success: u64,
    last_line: Option<Instant>,
}

impl AcceptErrors {
    /// The errors of the server named `server` in log lines.
    pub fn new(server: &'static str) -> Self {
        AcceptErrors {
            server,
            untold: 0,
            since_success: 0,
            last_line: None,
        }
    }

    /// An accept failed: log it (at most once per interval) and, when the
    /// process is out of something, pause before the next one.
    pub async fn failed(&mut self, error: io::Error) {
        self.untold += 1;
        self.since_success += 1;
        let now = Instant::now();
        if self
            .last_line
            .is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL)
        {
            tracing::warn!(
                server = self.server,
                failures = self.untold,
                %error,
                "accept failed: pausing, connections wait in the queue"
            );
            self.untold = 0;
            self.last_line = Some(now);
        }
        if exhausted(&error) {
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// An accept succeeded. Not told, and the interval goes on: under a
    /// shortage, accepts fail and succeed in turn as descriptors come and
    /// go, and each turn must not be a line.
    pub fn succeeded(&mut self) {
        self.since_success = 0;
    }
}

/// Whether `accept` failed because the process or the system ran out of
/// descriptors or memory (retrying at once cannot help).
pub fn exhausted(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The connections a server may hold at once.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    /// At most `max` connections.
    pub fn new(max: usize) -> Self {
        Slots(Arc::new(Semaphore::new(max)))
    }

    /// A slot for one more connection, held until the permit is dropped;
    /// `None` when all are taken.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_descriptors_is_exhaustion_a_reset_is_not() {
        assert!(exhausted(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(exhausted(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!exhausted(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = Slots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shortage_pauses_and_is_told_once_per_interval() {
        let mut errors = AcceptErrors::new("test");
        let start = Instant::now();
        for _ in 0..5 {
            errors
                .failed(io::Error::from_raw_os_error(libc::EMFILE))
                .await;
        }
        assert_eq!(start.elapsed(), PAUSE * 5);
        // One line so far; the other four wait for the next interval.
        assert_eq!(errors.untold, 4);
        assert_eq!(errors.since_success, 5);
        errors.succeeded();
        assert_eq!(errors.since_success, 0);
        // Failing again within the interval is counted, not told.
        errors
            .failed(io::Error::from_raw_os_error(libc::EMFILE))
            .await;
        assert_eq!(errors.untold, 5);
        tokio::time::sleep(LOG_INTERVAL).await;
        errors
            .failed(io::Error::from_raw_os_error(libc::EMFILE))
            .await;
        assert_eq!(errors.untold, 0, "told, with the six since the last line");
    }
}
