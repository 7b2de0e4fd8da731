//! A worker's `STATUS=` messages become log lines, at most
//! [`PER_SECOND`] per generation and second: a worker that sends them in
//! a loop must not turn baton's log into a flood. What is left out is
//! counted and told in one line when the next second's first status
//! comes, or when the generation is forgotten.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::machine::Generation;

/// Status lines logged per generation and second.
pub(super) const PER_SECOND: u32 = 5;

const WINDOW: Duration = Duration::from_secs(1);

/// Per generation: the current second and what it let through.
#[derive(Debug, Default)]
pub(super) struct StatusLines {
    windows: BTreeMap<Generation, Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    shown: u32,
    suppressed: u64,
}

/// What to log for one status message.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Admit {
    /// Log this status.
    pub show: bool,
    /// First log that so many were left out before it.
    pub suppressed: Option<u64>,
}

impl StatusLines {
    /// A status message of `generation` arrived at `now`.
    pub fn admit(&mut self, generation: Generation, now: Instant) -> Admit {
        let window = self.windows.entry(generation).or_insert(Window {
            start: now,
            shown: 0,
            suppressed: 0,
        });
        let mut suppressed = None;
        if now.saturating_duration_since(window.start) >= WINDOW {
            suppressed = (window.suppressed > 0).then_some(window.suppressed);
            *window = Window {
                start: now,
                shown: 0,
                suppressed: 0,
            };
        }
        let show = window.shown < PER_SECOND;
        if show {
            window.shown += 1;
        } else {
            window.suppressed += 1;
        }
        Admit { show, suppressed }
    }

    /// The generation is gone: how many of its lines were left out and
    /// not told yet.
    pub fn forget(&mut self, generation: Generation) -> Option<u64> {
        self.windows
            .remove(&generation)
            .and_then(|w| (w.suppressed > 0).then_some(w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_per_second_and_counted() {
        let mut lines = StatusLines::default();
        let t0 = Instant::now();
        let shown = (0..1000).filter(|_| lines.admit(1, t0).show).count();
        assert_eq!(shown, PER_SECOND as usize);
        // Another generation has its own allowance.
        assert!(lines.admit(2, t0).show);
        let next = lines.admit(1, t0 + WINDOW);
        assert_eq!(
            next,
            Admit {
                show: true,
                suppressed: Some(1000 - u64::from(PER_SECOND))
            }
        );
        assert_eq!(lines.admit(1, t0 + WINDOW).suppressed, None);
        // Two shown so far in this second: three more, then seven left out.
        for _ in 0..10 {
            lines.admit(1, t0 + WINDOW);
        }
        assert_eq!(lines.forget(1), Some(7));
        assert_eq!(lines.forget(1), None);
        assert_eq!(lines.forget(2), None);
    }
}
