//! The machine's vocabulary: the [`Event`]s the driver tells it, the
//! [`Action`]s it asks the driver to carry out, and the [`Notice`]s it
//! makes for whoever watches (logs, systemd, the reload ledger, metrics).

use std::fmt;
use std::time::Duration;

use super::settings::{Settings, StopSignal, signal_name};

/// A generation number: 1 for the first worker, then one more per start.
pub type Generation = u64;

/// The number the reload ledger gave a reload request.
pub type ReloadId = u64;

/// How a process ended, as `waitpid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessExit {
    /// It called `exit` with this code.
    Code(i32),
    /// A signal (this number) killed it.
    Signal(i32),
}

impl ProcessExit {
    /// True for `exit(0)`.
    pub fn success(self) -> bool {
        self == ProcessExit::Code(0)
    }
}

impl fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProcessExit::Code(code) => write!(f, "exit code {code}"),
            ProcessExit::Signal(sig) => write!(f, "killed by {}", signal_name(sig)),
        }
    }
}

/// Something that happened, told to the machine by the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// baton has bound its sockets: start the first generation.
    Start,
    /// SIGHUP, `ctl reload`, systemd or a watched change asked for a reload.
    ReloadRequested {
        /// The ledger's number for it; every id is answered exactly once.
        id: ReloadId,
    },
    /// The driver could not start the process of a generation (no child
    /// exists).
    SpawnFailed {
        /// The generation it was asked to spawn.
        generation: Generation,
        /// Why, for the log and the answer to the reload.
        error: String,
    },
    /// `READY=1` arrived on the generation's notify socket (under
    /// [`Readiness::Auto`](super::Readiness::Auto) it does not count).
    Ready {
        /// The generation whose socket it arrived on.
        generation: Generation,
    },
    /// `WATCHDOG=1` arrived on the generation's notify socket.
    WatchdogPing {
        /// The generation whose socket it arrived on.
        generation: Generation,
    },
    /// What baton saw of a generation's processes it was asked to
    /// [observe](Action::Observe).
    Observed {
        /// The generation looked at.
        generation: Generation,
        /// Whether one of its processes waits for connections on a socket
        /// baton handed it: under `Auto`, it is ready.
        waiting: bool,
        /// What baton saw, in words, for the log and for a timeout's reason.
        seen: String,
    },
    /// The generation's leader process exited (its group may live on).
    LeaderExited {
        /// Whose leader (the group id is the leader's pid).
        generation: Generation,
        /// How it ended.
        status: ProcessExit,
    },
    /// The generation's process group has no process left.
    GroupEmpty {
        /// Whose group emptied; it is gone for good.
        generation: Generation,
    },
    /// Under baton's own drain: the generation takes no more connections
    /// and has finished the ones it had.
    Quiesced {
        /// The generation.
        generation: Generation,
    },
    /// The time [`poll_timeout`](super::Machine::poll_timeout) named has come.
    Timeout,
    /// New settings (a re-read config file) for decisions from now on.
    SettingsChanged(Settings),
    /// SIGTERM, a first SIGINT or `ctl stop`: drain everything, then exit.
    ShutdownRequested,
    /// A second SIGINT: kill everything now, then exit.
    ForceShutdown,
}

/// Why a generation is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnCause {
    /// The first generation.
    Start,
    /// A reload request.
    Reload,
    /// Nothing serves (a crash, a failed start): try again.
    Restart,
    /// The active generation missed its watchdog deadline: its replacement.
    Watchdog,
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the process of this new generation on the listening sockets;
    /// answer [`Event::SpawnFailed`] if no process could be started.
    Spawn {
        /// The generation to start.
        generation: Generation,
        /// Whether the next plan (re-read config) applies to it.
        cause: SpawnCause,
    },
    /// Watch the generation's processes until one of them waits on a
    /// socket baton handed it, and tell what was seen as
    /// [`Event::Observed`]; stop once the generation is no longer starting.
    Observe {
        /// The starting generation.
        generation: Generation,
    },
    /// Send the stop signal to the generation's process group: its drain
    /// begins.
    Drain {
        /// The generation asked to drain.
        generation: Generation,
        /// What to send.
        signal: StopSignal,
    },
    /// Drain the generation baton's way (`--preload`): raise its flag, so
    /// that it stops taking connections, and watch it until it is quiet
    /// ([`Event::Quiesced`]). The stop signal follows as an
    /// [`Action::Drain`].
    Quiesce {
        /// The generation.
        generation: Generation,
    },
    /// SIGKILL the generation's whole process group.
    Kill {
        /// The generation whose group dies.
        generation: Generation,
    },
    /// The generation is gone for good: release what it held (its notify
    /// socket, its process table entry).
    Forget {
        /// The generation let go.
        generation: Generation,
    },
    /// Tell whoever watches.
    Notice(Notice),
    /// Every generation is gone after a shutdown: baton may exit.
    Exit,
    /// Every generation is gone after the machine gave up (no worker was
    /// ever ready): baton exits with a failure, saying `reason`.
    GiveUp {
        /// One line: why.
        reason: String,
    },
}

/// Why a starting generation did not become the active one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Its process could not be started.
    SpawnFailed(String),
    /// Its leader exited before it was ready.
    Exited(ProcessExit),
    /// It was not ready within the ready timeout.
    NotReady(Duration),
    /// It was to send `READY=1` (`--ready notify`) and sent nothing within
    /// the ready timeout.
    NeverNotified(Duration),
    /// Under `--ready auto`, it was not seen waiting on a socket baton
    /// handed it within the ready timeout; `seen` says what baton saw.
    NotWaiting {
        /// The ready timeout.
        timeout: Duration,
        /// What baton last saw of its processes.
        seen: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::SpawnFailed(error) => write!(f, "could not start: {error}"),
            Failure::Exited(status) => write!(f, "exited before ready ({status})"),
            Failure::NotReady(timeout) => write!(f, "not ready within {timeout:?}"),
            Failure::NeverNotified(timeout) => write!(
                f,
                "not ready within {timeout:?}: no READY=1 arrived on its NOTIFY_SOCKET; does it support sd_notify? try --ready auto or --ready delay=1s"
            ),
            Failure::NotWaiting { timeout, seen } => {
                write!(f, "not ready within {timeout:?}: {seen}")
            }
        }
    }
}

/// What the machine tells the operator. Observers read these; none of
/// them changes what the machine decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A generation is being started; `reloads` are the requests it answers.
    Starting {
        /// The new generation.
        generation: Generation,
        /// Why it is started.
        cause: SpawnCause,
        /// The reload requests it answers (empty unless `cause` is a reload).
        reloads: Vec<ReloadId>,
    },
    /// A generation is ready and now serves. `previous` is the generation it
    /// replaces (now draining), if one was serving.
    Ready {
        /// The new active generation.
        generation: Generation,
        /// The one it replaces.
        previous: Option<Generation>,
        /// Spawn to ready.
        ready_after: Duration,
        /// The reload requests it completes.
        reloads: Vec<ReloadId>,
        /// Whether a coalesced reload starts right after.
        reload_follows: bool,
    },
    /// A starting generation failed; the active one (if any) keeps serving.
    StartFailed {
        /// The generation that failed.
        generation: Generation,
        /// Why.
        failure: Failure,
        /// The generation that still serves, if any.
        active: Option<Generation>,
        /// The reload requests that failed with it.
        reloads: Vec<ReloadId>,
        /// Whether a coalesced reload starts right after.
        reload_follows: bool,
    },
    /// A reload was asked for while one runs: it will run once that ends.
    ReloadCoalesced {
        /// The request that waits.
        id: ReloadId,
    },
    /// Reload requests that will never run: baton is shutting down.
    ReloadsCancelled {
        /// The requests.
        reloads: Vec<ReloadId>,
    },
    /// The active generation's leader exited on its own.
    Crashed {
        /// The generation that crashed.
        generation: Generation,
        /// How it ended.
        status: ProcessExit,
    },
    /// A restart will happen after this backoff delay.
    RestartScheduled {
        /// The backoff.
        delay: Duration,
        /// Consecutive crashes so far.
        crashes: u32,
    },
    /// The active generation sent no `WATCHDOG=1` within its watchdog
    /// interval: it is replaced by a new generation, as by a reload.
    WatchdogMissed {
        /// The silent generation.
        generation: Generation,
        /// Its interval.
        interval: Duration,
        /// The generation that will take over (started now, or already
        /// starting); none during shutdown.
        replacement: Option<Generation>,
    },
    /// No generation was ever ready and `failed_starts` starts in a row
    /// failed: the machine gives up, shuts down and then exits with
    /// [`Action::GiveUp`].
    GivingUp {
        /// Failed starts in a row.
        failed_starts: u32,
        /// How the last one failed.
        failure: Failure,
    },
    /// A generation was sent its stop signal and drains.
    Draining {
        /// The generation that drains.
        generation: Generation,
    },
    /// A draining generation missed its drain deadline and is killed.
    DrainTimedOut {
        /// The generation killed.
        generation: Generation,
    },
    /// Baton's own drain waited as long as it may (half the drain
    /// timeout): the stop signal goes although connections remain.
    QuiesceCutShort {
        /// The generation.
        generation: Generation,
        /// How long it waited.
        waited: Duration,
    },
    /// Too many generations were draining: the oldest is killed.
    Evicted {
        /// The generation killed.
        generation: Generation,
        /// The limit.
        max_draining: usize,
    },
    /// Every process of a generation is gone.
    Exited {
        /// The generation that is gone.
        generation: Generation,
        /// How its leader ended (None if it never started).
        status: Option<ProcessExit>,
        /// Stop signal to gone, if it was asked to drain.
        drained_in: Option<Duration>,
    },
    /// Shutdown has begun.
    ShuttingDown {
        /// Whether it kills at once instead of draining.
        force: bool,
    },
}
