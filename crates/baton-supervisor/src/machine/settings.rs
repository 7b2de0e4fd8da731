//! What the machine decides by: readiness, deadlines, the stop signal, the
//! drain cap, the crash backoff, the start limit and the worker watchdog. Every field has a type that cannot
//! hold a value the machine would have to reject, and [`Settings::default`]
//! is the one place where baton's defaults are written.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// When a new generation counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// When it sends `READY=1` to its notify socket.
    Notify,
    /// When it is still alive after this delay (or sends `READY=1` sooner).
    Delay(Duration),
    /// When one of its processes waits for connections on a socket baton
    /// handed it, as the kernel shows (`--ready auto`); `READY=1` alone
    /// does not count.
    Auto,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::Delay(Duration::from_secs(1))
    }
}

/// The signal that asks a generation to drain and exit, as its number.
///
/// The machine names signals by number so that it needs no platform crate;
/// SIGKILL and SIGSTOP cannot be asked to drain anything and are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StopSignal(i32);

impl StopSignal {
    /// SIGTERM, the default.
    pub const TERM: StopSignal = StopSignal(15);

    /// A stop signal from its number; `None` for SIGKILL, SIGSTOP and
    /// numbers that are no signal.
    pub fn new(number: i32) -> Option<Self> {
        const KILL: i32 = 9;
        const STOP: i32 = 19;
        const MAX: i32 = 64;
        match number {
            KILL | STOP => None,
            1..=MAX => Some(StopSignal(number)),
            _ => None,
        }
    }

    /// Its number.
    pub fn number(self) -> i32 {
        self.0
    }
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal::TERM
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&signal_name(self.0))
    }
}

/// `SIGTERM` for 15; `signal 42` for a number with no classic name.
pub fn signal_name(number: i32) -> String {
    // The Linux numbering, which is what baton runs on.
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(number)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("signal {number}"), |name| (*name).to_owned())
}

/// Restart backoff after crashes: the first restart is immediate, then
/// `initial`, doubling up to `max`; it resets once a worker stays up for
/// `reset_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the second restart in a row.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How long a worker must stay up to forget earlier crashes.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before the restart that follows `crashes` consecutive crashes.
    pub fn delay(&self, crashes: u32) -> Duration {
        match crashes {
            0 | 1 => Duration::ZERO,
            n => {
                let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
                self.initial.saturating_mul(factor).min(self.max)
            }
        }
    }
}

/// The settings the machine decides by.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// When a new generation counts as ready.
    pub readiness: Readiness,
    /// How long a new generation may take to become ready.
    pub ready_timeout: Duration,
    /// The signal that asks a generation to drain and exit.
    pub stop_signal: StopSignal,
    /// How long a draining generation may take before its group is killed.
    pub drain_timeout: Duration,
    /// How many generations may drain at once; a reload beyond it kills
    /// the oldest.
    pub max_draining: NonZeroUsize,
    /// Restart backoff after crashes.
    pub backoff: Backoff,
    /// Failed starts in a row, before any generation was ever ready, after
    /// which baton gives up and exits (systemd's `StartLimitBurst`). Once
    /// one was ready, failures are only backed off.
    pub start_limit: NonZeroU32,
    /// The sd_notify watchdog asked of workers (`WATCHDOG_USEC`): an active
    /// generation that sends no `WATCHDOG=1` for this long is replaced.
    pub watchdog: Option<Duration>,
    /// baton's own drain first (`--preload`): the generation stops taking
    /// connections, and the stop signal waits until its connections are
    /// done, for at most half of `drain_timeout`.
    pub quiesce: bool,
}

impl Settings {
    /// The default drain cap.
    pub const DEFAULT_MAX_DRAINING: NonZeroUsize = NonZeroUsize::new(4).unwrap();
    /// The default start limit.
    pub const DEFAULT_START_LIMIT: NonZeroU32 = NonZeroU32::new(5).unwrap();
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            readiness: Readiness::default(),
            ready_timeout: Duration::from_secs(60),
            stop_signal: StopSignal::TERM,
            drain_timeout: Duration::from_secs(30),
            max_draining: Settings::DEFAULT_MAX_DRAINING,
            backoff: Backoff::default(),
            start_limit: Settings::DEFAULT_START_LIMIT,
            watchdog: None,
            quiesce: false,
        }
    }
}
