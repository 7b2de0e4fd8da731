//! One generation's life as the machine sees it. Each phase carries the
//! data that only exists in that phase (a starting generation has a ready
//! deadline, a draining one a drain deadline), so an impossible state —
//! a deadline on the active generation, reloads owed by a draining one —
//! cannot be written.

use std::fmt;
use std::time::{Duration, Instant};

use super::events::{ProcessExit, ReloadId, SpawnCause};
use super::settings::Readiness;

/// Where a generation is in its life, with what that phase needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Started, not ready yet. Its leader is alive: a leader that exits
    /// while starting moves it to `Killing` at once.
    Starting {
        /// Why it was started.
        cause: SpawnCause,
        /// The reload requests it answers.
        reloads: Vec<ReloadId>,
        /// It fails if not ready by then.
        ready_by: Instant,
        /// `--ready delay=`: it counts as ready then, if still starting.
        ready_at: Option<Instant>,
        /// How it becomes ready, fixed when it starts (a re-read config
        /// applies to the next generation).
        readiness: Readiness,
        /// Under `Auto`: what baton last saw of its processes.
        seen: Option<String>,
    },
    /// Ready and serving.
    Active {
        /// Once it has served this long, earlier crashes are forgotten.
        stable_at: Option<Instant>,
        /// With a watchdog: it must send `WATCHDOG=1` by then.
        watchdog_by: Option<Instant>,
        /// It missed its watchdog deadline (and has sent nothing since).
        silent: bool,
    },
    /// Asked to drain; finishing its connections.
    Draining {
        /// When it was asked (its stop signal, or baton's own drain).
        since: Instant,
        /// Its group is killed then.
        deadline: Instant,
        /// Under baton's own drain, until its stop signal is sent: the
        /// signal goes when it is quiet, or at this time.
        signal_at: Option<Instant>,
        /// How its leader ended, if it has.
        leader: Option<ProcessExit>,
    },
    /// Its group was sent SIGKILL; waiting for it to be empty.
    Killing {
        /// When it was asked to drain, if it was.
        drain_since: Option<Instant>,
        /// How its leader ended, if it has.
        leader: Option<ProcessExit>,
    },
}

impl Phase {
    /// Every name [`Phase::name`] gives, in the order of a generation's life.
    pub const NAMES: [&'static str; 4] = ["starting", "active", "draining", "killing"];

    /// The name `status` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting { .. } => "starting",
            Phase::Active { .. } => "active",
            Phase::Draining { .. } => "draining",
            Phase::Killing { .. } => "killing",
        }
    }

    /// The earliest deadline of this phase, if it has one.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Starting {
                ready_by, ready_at, ..
            } => Some(ready_at.map_or(*ready_by, |at| at.min(*ready_by))),
            Phase::Active {
                stable_at,
                watchdog_by,
                ..
            } => earliest(*stable_at, *watchdog_by),
            Phase::Draining {
                deadline,
                signal_at,
                ..
            } => Some(signal_at.map_or(*deadline, |at| at.min(*deadline))),
            Phase::Killing { .. } => None,
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the machine knows of one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// When its spawn was asked for.
    pub spawned_at: Instant,
    /// Spawn to ready, once it was ready.
    pub ready_after: Option<Duration>,
    /// The watchdog interval it was started with (`WATCHDOG_USEC`), if any.
    pub watchdog: Option<Duration>,
    /// Where it is in its life.
    pub phase: Phase,
}

impl Lifecycle {
    /// Whether it is starting.
    pub fn is_starting(&self) -> bool {
        matches!(self.phase, Phase::Starting { .. })
    }

    /// Whether it serves.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active { .. })
    }

    /// Whether it drains.
    pub fn is_draining(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
    }

    /// Whether it serves but missed its watchdog deadline.
    pub fn is_silent(&self) -> bool {
        matches!(self.phase, Phase::Active { silent: true, .. })
    }
}
