//! The reload state machine: events in, actions out, no I/O.
//!
//! Every decision baton makes lives here: when to start a generation, when a
//! reload is complete, which generation drains, when to give up on one, how
//! long to back off after crashes. The [driver](crate::driver) feeds it
//! [`Event`]s (signals, child exits, notify messages, timers) and carries out
//! the [`Action`]s it returns. Because nothing here touches a process, a
//! socket or a clock, every rule is a unit test of plain function calls.
//!
//! A generation moves through
//! `Starting → Active → Draining → (gone)`, or `Starting → Killing → (gone)`
//! when it fails. At most one generation is `Starting` and at most one is
//! `Active`; any number (bounded by `max_draining`) may be `Draining`.
//! A generation is gone only when its whole process group is empty
//! ([`Event::GroupEmpty`]), not when its leader exits: an orphan of a drained
//! worker still holds the listening socket.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use nix::sys::signal::Signal;

/// A generation number: 1 for the first worker, then one more per start.
pub type Generation = u64;

/// How a process ended, as `waitpid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// A signal (this number) killed it.
    Signal(i32),
}

impl ExitStatus {
    /// True for `exit(0)`.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(sig) => match Signal::try_from(sig) {
                Ok(signal) => write!(f, "killed by {}", signal.as_str()),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

/// When a new generation counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// When it sends `READY=1` to its notify socket.
    Notify,
    /// When it is still alive after this delay (or sends `READY=1` sooner).
    Delay(Duration),
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
    pub stop_signal: Signal,
    /// How long a draining generation may take before its group is killed.
    pub drain_timeout: Duration,
    /// How many generations may drain at once.
    pub max_draining: NonZeroUsize,
    /// Restart backoff after crashes.
    pub backoff: Backoff,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            readiness: Readiness::Delay(Duration::from_secs(1)),
            ready_timeout: Duration::from_secs(60),
            stop_signal: Signal::SIGTERM,
            drain_timeout: Duration::from_secs(30),
            max_draining: NonZeroUsize::new(4).expect("not zero"),
            backoff: Backoff::default(),
        }
    }
}

/// Something that happened, told to the machine by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// baton has bound its sockets: start the first generation.
    Start,
    /// SIGHUP (or, later, a control request or a watched change).
    ReloadRequested,
    /// The driver started the process of a generation.
    Spawned {
        /// The generation.
        generation: Generation,
        /// Its leader's pid (also its process group id).
        pid: i32,
    },
    /// The driver could not start the process of a generation.
    SpawnFailed {
        /// The generation.
        generation: Generation,
        /// Why, for the log.
        error: String,
    },
    /// `READY=1` arrived on the generation's notify socket.
    Ready {
        /// The generation whose socket it arrived on.
        generation: Generation,
    },
    /// The generation's leader process exited (its group may live on).
    LeaderExited {
        /// The generation.
        generation: Generation,
        /// How it ended.
        status: ExitStatus,
    },
    /// The generation's process group has no process left.
    GroupEmpty {
        /// The generation.
        generation: Generation,
    },
    /// A timer the machine asked for has fired.
    TimerFired(Timer),
    /// SIGTERM, or a first SIGINT: drain everything, then exit.
    ShutdownRequested,
    /// A second SIGINT: kill everything now, then exit.
    ForceShutdown,
}

/// A timer the machine asks the driver to run. Timers are never cancelled:
/// one that fires when it no longer matters is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// `--ready delay=`: the generation counts as ready if still starting.
    ReadyDelay(Generation),
    /// The generation must be ready by now.
    ReadyDeadline(Generation),
    /// The generation must have drained by now.
    DrainDeadline(Generation),
    /// The generation has stayed up long enough to forget earlier crashes.
    Stable(Generation),
    /// Backoff is over: restart. The number tells stale timers apart.
    Restart(u64),
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the process of this new generation on the listening sockets.
    Spawn {
        /// The generation to start.
        generation: Generation,
    },
    /// Send a signal to the generation's process group.
    Signal {
        /// The generation.
        generation: Generation,
        /// The signal.
        signal: Signal,
    },
    /// SIGKILL the generation's whole process group.
    KillGroup {
        /// The generation.
        generation: Generation,
    },
    /// Feed [`Event::TimerFired`] back after this delay.
    StartTimer {
        /// The timer.
        timer: Timer,
        /// Its delay.
        after: Duration,
    },
    /// Tell the operator (a log line; later status and metrics).
    Report(Report),
    /// Every generation is gone after a shutdown: baton may exit.
    Exit,
}

/// Why a starting generation did not become the active one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Its process could not be started.
    SpawnFailed(String),
    /// Its leader exited before it was ready.
    Exited(ExitStatus),
    /// It was not ready within the ready timeout.
    NotReady(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::SpawnFailed(error) => write!(f, "could not start: {error}"),
            Failure::Exited(status) => write!(f, "exited before ready ({status})"),
            Failure::NotReady(timeout) => write!(f, "not ready within {timeout:?}"),
        }
    }
}

/// What the machine tells the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// A generation is ready and now serves. `previous` is the generation it
    /// replaces (now draining), if one was serving.
    Ready {
        /// The new active generation.
        generation: Generation,
        /// The one it replaces.
        previous: Option<Generation>,
    },
    /// A starting generation failed; the active one (if any) keeps serving.
    StartFailed {
        /// The generation that failed.
        generation: Generation,
        /// Why.
        failure: Failure,
        /// Whether a generation still serves.
        active: Option<Generation>,
    },
    /// A reload was asked for while one runs: it will run once that ends.
    ReloadCoalesced,
    /// A reload was asked for during shutdown and is ignored.
    ReloadIgnored,
    /// The active generation's leader exited on its own.
    Crashed {
        /// The generation.
        generation: Generation,
        /// How it ended.
        status: ExitStatus,
    },
    /// A restart will happen after this backoff delay.
    RestartScheduled {
        /// The delay.
        delay: Duration,
        /// Consecutive crashes so far.
        crashes: u32,
    },
    /// A generation was sent its stop signal and drains.
    Draining {
        /// The generation.
        generation: Generation,
    },
    /// A draining generation missed its drain deadline and is killed.
    DrainTimedOut {
        /// The generation.
        generation: Generation,
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
        /// The generation.
        generation: Generation,
        /// How its leader ended (None if it never started).
        status: Option<ExitStatus>,
    },
    /// Shutdown has begun.
    ShuttingDown {
        /// Whether it kills at once instead of draining.
        force: bool,
    },
}

/// Where a generation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Started, not ready yet.
    Starting,
    /// Ready and serving.
    Active,
    /// Sent its stop signal; finishing its connections.
    Draining,
    /// Its group was sent SIGKILL; waiting for it to be gone.
    Killing,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Active => "active",
            Phase::Draining => "draining",
            Phase::Killing => "killing",
        })
    }
}

/// What the machine knows of one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationState {
    /// Where it is in its life.
    pub phase: Phase,
    /// Its leader's pid, once spawned.
    pub pid: Option<i32>,
    /// How its leader ended, once it has.
    pub leader_status: Option<ExitStatus>,
}

/// The reload state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    generations: BTreeMap<Generation, GenerationState>,
    last_generation: Generation,
    reload_pending: bool,
    /// The number of the pending restart timer, if a restart waits.
    restart_pending: Option<u64>,
    restart_timers: u64,
    crashes: u32,
    shutting_down: bool,
}

impl Machine {
    /// A machine with no generation yet; feed it [`Event::Start`].
    pub fn new(settings: Settings) -> Self {
        Machine {
            settings,
            generations: BTreeMap::new(),
            last_generation: 0,
            reload_pending: false,
            restart_pending: None,
            restart_timers: 0,
            crashes: 0,
            shutting_down: false,
        }
    }

    /// The settings it decides by.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// New settings (a re-read config file); they apply to decisions from
    /// now on, timers already running keep their delays.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Every generation not yet gone, oldest first.
    pub fn generations(&self) -> impl Iterator<Item = (Generation, &GenerationState)> {
        self.generations.iter().map(|(&g, s)| (g, s))
    }

    /// One generation, if not yet gone.
    pub fn generation(&self, generation: Generation) -> Option<&GenerationState> {
        self.generations.get(&generation)
    }

    /// The generation that serves, if any.
    pub fn active(&self) -> Option<Generation> {
        self.in_phase(Phase::Active).next()
    }

    /// The generation being started, if any.
    pub fn starting(&self) -> Option<Generation> {
        self.in_phase(Phase::Starting).next()
    }

    /// Consecutive crashes not yet forgotten.
    pub fn crashes(&self) -> u32 {
        self.crashes
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Take one event, return what to do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => self.spawn_next(&mut out),
            Event::ReloadRequested => self.on_reload(&mut out),
            Event::Spawned { generation, pid } => {
                if let Some(state) = self.generations.get_mut(&generation) {
                    state.pid = Some(pid);
                }
            }
            Event::SpawnFailed { generation, error } => {
                // No process was started, so there is no group to wait for.
                if self.phase(generation) == Some(Phase::Starting) {
                    self.generations.remove(&generation);
                    self.start_failed(generation, Failure::SpawnFailed(error), &mut out);
                    self.exit_if_done(&mut out);
                }
            }
            Event::Ready { generation } => self.on_ready(generation, &mut out),
            Event::LeaderExited { generation, status } => {
                self.on_leader_exited(generation, status, &mut out)
            }
            Event::GroupEmpty { generation } => {
                if let Some(state) = self.generations.remove(&generation) {
                    out.push(Action::Report(Report::Exited {
                        generation,
                        status: state.leader_status,
                    }));
                }
                self.exit_if_done(&mut out);
            }
            Event::TimerFired(timer) => self.on_timer(timer, &mut out),
            Event::ShutdownRequested => self.on_shutdown(false, &mut out),
            Event::ForceShutdown => self.on_shutdown(true, &mut out),
        }
        out
    }

    fn in_phase(&self, phase: Phase) -> impl Iterator<Item = Generation> + '_ {
        self.generations
            .iter()
            .filter(move |(_, s)| s.phase == phase)
            .map(|(&g, _)| g)
    }

    fn phase(&self, generation: Generation) -> Option<Phase> {
        self.generations.get(&generation).map(|s| s.phase)
    }

    fn set_phase(&mut self, generation: Generation, phase: Phase) {
        if let Some(state) = self.generations.get_mut(&generation) {
            state.phase = phase;
        }
    }

    fn spawn_next(&mut self, out: &mut Vec<Action>) {
        self.restart_pending = None;
        self.last_generation += 1;
        let generation = self.last_generation;
        self.generations.insert(
            generation,
            GenerationState {
                phase: Phase::Starting,
                pid: None,
                leader_status: None,
            },
        );
        out.push(Action::Spawn { generation });
        out.push(Action::StartTimer {
            timer: Timer::ReadyDeadline(generation),
            after: self.settings.ready_timeout,
        });
        if let Readiness::Delay(after) = self.settings.readiness {
            out.push(Action::StartTimer {
                timer: Timer::ReadyDelay(generation),
                after,
            });
        }
    }

    fn on_reload(&mut self, out: &mut Vec<Action>) {
        if self.shutting_down {
            out.push(Action::Report(Report::ReloadIgnored));
        } else if self.starting().is_some() {
            // One reload after the running one sees every change made so far.
            self.reload_pending = true;
            out.push(Action::Report(Report::ReloadCoalesced));
        } else {
            // Also cuts a crash backoff short: the operator asked.
            self.spawn_next(out);
        }
    }

    fn on_ready(&mut self, generation: Generation, out: &mut Vec<Action>) {
        // A late READY=1 of a generation that is no longer starting is ignored.
        if self.phase(generation) != Some(Phase::Starting) {
            return;
        }
        let previous = self.active();
        self.set_phase(generation, Phase::Active);
        out.push(Action::StartTimer {
            timer: Timer::Stable(generation),
            after: self.settings.backoff.reset_after,
        });
        if let Some(previous) = previous {
            self.evict_draining(self.settings.max_draining.get() - 1, out);
            self.drain(previous, out);
        }
        out.push(Action::Report(Report::Ready {
            generation,
            previous,
        }));
        self.run_pending_reload(out);
    }

    fn on_leader_exited(
        &mut self,
        generation: Generation,
        status: ExitStatus,
        out: &mut Vec<Action>,
    ) {
        let Some(state) = self.generations.get_mut(&generation) else {
            return;
        };
        state.leader_status = Some(status);
        match state.phase {
            Phase::Starting => {
                self.kill(generation, out);
                self.start_failed(generation, Failure::Exited(status), out);
            }
            Phase::Active => {
                self.kill(generation, out);
                out.push(Action::Report(Report::Crashed { generation, status }));
                self.crashes += 1;
                // A generation already starting will take over when ready.
                if self.starting().is_none() {
                    self.schedule_restart(out);
                }
            }
            // Its group may live on: wait for GroupEmpty or the deadline.
            Phase::Draining | Phase::Killing => {}
        }
    }

    fn on_timer(&mut self, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::ReadyDelay(generation) => {
                let alive = self
                    .generations
                    .get(&generation)
                    .is_some_and(|s| s.leader_status.is_none());
                if alive {
                    self.on_ready(generation, out);
                }
            }
            Timer::ReadyDeadline(generation) => {
                if self.phase(generation) == Some(Phase::Starting) {
                    self.kill(generation, out);
                    let failure = Failure::NotReady(self.settings.ready_timeout);
                    self.start_failed(generation, failure, out);
                }
            }
            Timer::DrainDeadline(generation) => {
                if self.phase(generation) == Some(Phase::Draining) {
                    self.kill(generation, out);
                    out.push(Action::Report(Report::DrainTimedOut { generation }));
                }
            }
            Timer::Stable(generation) => {
                if self.phase(generation) == Some(Phase::Active) {
                    self.crashes = 0;
                }
            }
            Timer::Restart(number) => {
                if self.restart_pending == Some(number) {
                    self.spawn_next(out);
                }
            }
        }
    }

    fn on_shutdown(&mut self, force: bool, out: &mut Vec<Action>) {
        if self.shutting_down && !force {
            return;
        }
        self.shutting_down = true;
        self.reload_pending = false;
        self.restart_pending = None;
        out.push(Action::Report(Report::ShuttingDown { force }));
        let generations: Vec<_> = self.generations.keys().copied().collect();
        for generation in generations {
            match (force, self.phase(generation)) {
                (true, Some(Phase::Killing)) => {}
                (true, _) => self.kill(generation, out),
                (false, Some(Phase::Starting | Phase::Active)) => self.drain(generation, out),
                (false, _) => {}
            }
        }
        self.exit_if_done(out);
    }

    /// The generation that was starting has failed; decide what comes next.
    fn start_failed(&mut self, generation: Generation, failure: Failure, out: &mut Vec<Action>) {
        let active = self.active();
        out.push(Action::Report(Report::StartFailed {
            generation,
            failure,
            active,
        }));
        if self.shutting_down {
            return;
        }
        if self.reload_pending {
            self.run_pending_reload(out);
        } else if active.is_none() {
            // Nothing serves: keep trying, slower and slower. The sockets
            // stay bound, so clients wait in the accept queue meanwhile.
            self.crashes += 1;
            self.schedule_restart(out);
        }
        // Otherwise a failed reload costs nothing: the active one serves on.
    }

    fn run_pending_reload(&mut self, out: &mut Vec<Action>) {
        if self.reload_pending && self.starting().is_none() && !self.shutting_down {
            self.reload_pending = false;
            self.spawn_next(out);
        }
    }

    fn schedule_restart(&mut self, out: &mut Vec<Action>) {
        let delay = self.settings.backoff.delay(self.crashes);
        if delay.is_zero() {
            self.spawn_next(out);
            return;
        }
        self.restart_timers += 1;
        self.restart_pending = Some(self.restart_timers);
        out.push(Action::StartTimer {
            timer: Timer::Restart(self.restart_timers),
            after: delay,
        });
        out.push(Action::Report(Report::RestartScheduled {
            delay,
            crashes: self.crashes,
        }));
    }

    fn drain(&mut self, generation: Generation, out: &mut Vec<Action>) {
        self.set_phase(generation, Phase::Draining);
        out.push(Action::Signal {
            generation,
            signal: self.settings.stop_signal,
        });
        out.push(Action::StartTimer {
            timer: Timer::DrainDeadline(generation),
            after: self.settings.drain_timeout,
        });
        out.push(Action::Report(Report::Draining { generation }));
    }

    fn kill(&mut self, generation: Generation, out: &mut Vec<Action>) {
        self.set_phase(generation, Phase::Killing);
        out.push(Action::KillGroup { generation });
    }

    /// Kill the oldest draining generations until at most `keep` drain.
    fn evict_draining(&mut self, keep: usize, out: &mut Vec<Action>) {
        let draining: Vec<_> = self.in_phase(Phase::Draining).collect();
        let excess = draining.len().saturating_sub(keep);
        for &generation in &draining[..excess] {
            self.kill(generation, out);
            out.push(Action::Report(Report::Evicted {
                generation,
                max_draining: self.settings.max_draining.get(),
            }));
        }
    }

    fn exit_if_done(&mut self, out: &mut Vec<Action>) {
        if self.shutting_down && self.generations.is_empty() {
            out.push(Action::Exit);
        }
    }
}

#[cfg(test)]
mod tests;
