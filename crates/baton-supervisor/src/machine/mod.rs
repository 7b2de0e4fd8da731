//! The reload state machine: events in, actions out, no I/O.
//!
//! Every decision baton makes lives here: when to start a generation, which
//! reload requests a generation answers, when a reload is complete, which
//! generation drains, when to give up on one, how long to back off after
//! crashes, what a request during shutdown gets. The
//! [driver](crate::driver) feeds it [`Event`]s with the time they happened
//! and carries out the [`Action`]s it returns; it asks
//! [`Machine::poll_timeout`] when to come back with [`Event::Timeout`], the
//! way quinn-proto's connections do. Nothing here touches a process, a
//! socket or a clock, so every rule is a unit test of plain function calls
//! (`machine/tests.rs`, with property tests over random event sequences).
//!
//! A generation moves through `Starting → Active → Draining → (gone)`, or
//! `Starting → Killing → (gone)` when it fails. At most one generation is
//! starting and at most one is active; at most `max_draining` drain. A
//! generation is gone only when its whole process group is empty
//! ([`Event::GroupEmpty`]), not when its leader exits: an orphan of a
//! drained worker still holds the listening socket.
//!
//! Reload requests carry the ledger's ids. A request that arrives while a
//! generation starts waits (coalesced) and is answered by the next
//! generation, the first to see every change made so far; each id is
//! answered exactly once: completed, failed, or cancelled by shutdown.
//!
//! Two rules about faults have files of their own: the worker
//! [watchdog](self::watchdog) (a silent active generation is replaced) and
//! the [start limit](self::start_limit) (a worker that never once became
//! ready is not restarted for ever).

mod events;
mod generation;
mod settings;
mod start_limit;
mod watchdog;

pub use self::events::{
    Action, Event, Failure, Generation, Notice, ProcessExit, ReloadId, SpawnCause,
};
pub use self::generation::{Lifecycle, Phase};
pub use self::settings::{Backoff, Readiness, Settings, StopSignal, signal_name};

use std::collections::BTreeMap;
use std::time::Instant;

/// The reason of an `Auto` timeout when the observer never reported.
const NOTHING_SEEN: &str = "no process was seen waiting on a socket baton handed it";

/// The reload state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    generations: BTreeMap<Generation, Lifecycle>,
    last_generation: Generation,
    /// Reload requests waiting for the next generation (coalesced).
    queued: Vec<ReloadId>,
    /// When the crash backoff ends, if a restart waits.
    restart_at: Option<Instant>,
    crashes: u32,
    shutting_down: bool,
    /// Whether any generation was ever ready.
    ever_ready: bool,
    /// Failed starts in a row while none was ever ready.
    failed_starts: u32,
    /// Why the machine gave up, once it has.
    gave_up: Option<String>,
}

impl Machine {
    /// A machine with no generation yet; feed it [`Event::Start`].
    pub fn new(settings: Settings) -> Self {
        Machine {
            settings,
            generations: BTreeMap::new(),
            last_generation: 0,
            queued: Vec::new(),
            restart_at: None,
            crashes: 0,
            shutting_down: false,
            ever_ready: false,
            failed_starts: 0,
            gave_up: None,
        }
    }

    /// The settings it decides by.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every generation not yet gone, oldest first.
    pub fn generations(&self) -> impl Iterator<Item = (Generation, &Lifecycle)> {
        self.generations.iter().map(|(&g, s)| (g, s))
    }

    /// One generation, if not yet gone.
    pub fn generation(&self, generation: Generation) -> Option<&Lifecycle> {
        self.generations.get(&generation)
    }

    /// The generation that serves, if any.
    pub fn active(&self) -> Option<Generation> {
        self.find(Lifecycle::is_active)
    }

    /// The generation being started, if any.
    pub fn starting(&self) -> Option<Generation> {
        self.find(Lifecycle::is_starting)
    }

    /// Consecutive crashes not yet forgotten.
    pub fn crashes(&self) -> u32 {
        self.crashes
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// When the machine wants [`Event::Timeout`]: the earliest deadline of
    /// any generation or of the crash backoff.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.generations
            .values()
            .filter_map(|s| s.phase.deadline())
            .chain(self.restart_at)
            .min()
    }

    /// Take one event that happened at `now`; return what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut step = Step {
            now,
            out: Vec::new(),
        };
        match event {
            Event::Start => {
                if self.last_generation == 0 && !self.shutting_down {
                    self.spawn_next(SpawnCause::Start, Vec::new(), &mut step);
                }
            }
            Event::ReloadRequested { id } => self.on_reload(id, &mut step),
            Event::SpawnFailed { generation, error } => {
                self.on_spawn_failed(generation, error, &mut step)
            }
            Event::Ready { generation } => self.on_notified(generation, &mut step),
            Event::WatchdogPing { generation } => self.on_watchdog_ping(generation, now),
            Event::Observed {
                generation,
                waiting,
                seen,
            } => self.on_observed(generation, waiting, seen, &mut step),
            Event::LeaderExited { generation, status } => {
                self.on_leader_exited(generation, status, &mut step)
            }
            Event::GroupEmpty { generation } => self.on_group_empty(generation, &mut step),
            Event::Quiesced { generation } => self.send_stop_signal(generation, &mut step),
            Event::Timeout => self.on_timeout(&mut step),
            Event::SettingsChanged(settings) => self.settings = settings,
            Event::ShutdownRequested => self.on_shutdown(false, &mut step),
            Event::ForceShutdown => self.on_shutdown(true, &mut step),
        }
        step.out
    }

    fn find(&self, wanted: fn(&Lifecycle) -> bool) -> Option<Generation> {
        self.generations
            .iter()
            .find(|(_, s)| wanted(s))
            .map(|(&g, _)| g)
    }

    fn phase_mut(&mut self, generation: Generation) -> Option<&mut Phase> {
        self.generations.get_mut(&generation).map(|s| &mut s.phase)
    }

    fn spawn_next(&mut self, cause: SpawnCause, reloads: Vec<ReloadId>, step: &mut Step) {
        self.restart_at = None;
        self.last_generation += 1;
        let generation = self.last_generation;
        let readiness = self.settings.readiness;
        let ready_at = match readiness {
            Readiness::Delay(after) => Some(step.now + after),
            Readiness::Notify | Readiness::Auto => None,
        };
        let phase = Phase::Starting {
            cause,
            reloads: reloads.clone(),
            ready_by: step.now + self.settings.ready_timeout,
            ready_at,
            readiness,
            seen: None,
        };
        self.generations.insert(
            generation,
            Lifecycle {
                spawned_at: step.now,
                ready_after: None,
                watchdog: self.settings.watchdog,
                phase,
            },
        );
        step.notice(Notice::Starting {
            generation,
            cause,
            reloads,
        });
        step.out.push(Action::Spawn { generation, cause });
        if readiness == Readiness::Auto {
            step.out.push(Action::Observe { generation });
        }
    }

    fn on_reload(&mut self, id: ReloadId, step: &mut Step) {
        if self.shutting_down {
            step.notice(Notice::ReloadsCancelled { reloads: vec![id] });
        } else if self.starting().is_some() {
            // One reload after the running one sees every change made so far.
            self.queued.push(id);
            step.notice(Notice::ReloadCoalesced { id });
        } else {
            // Also cuts a crash backoff short: the operator asked.
            self.spawn_next(SpawnCause::Reload, vec![id], step);
        }
    }

    fn on_spawn_failed(&mut self, generation: Generation, error: String, step: &mut Step) {
        let Some(Phase::Starting { reloads, .. }) = self.phase_mut(generation) else {
            return;
        };
        let reloads = std::mem::take(reloads);
        // No process was started, so there is no group to wait for.
        self.generations.remove(&generation);
        step.out.push(Action::Forget { generation });
        self.start_failed(generation, Failure::SpawnFailed(error), reloads, step);
        self.exit_if_done(step);
    }

    /// `READY=1`: it counts unless the generation started under `Auto`,
    /// where a master that says it before its workers have loaded the app
    /// (gunicorn's does) must not drain the good generation.
    fn on_notified(&mut self, generation: Generation, step: &mut Step) {
        if let Some(Phase::Starting {
            readiness: Readiness::Auto,
            ..
        }) = self.phase_mut(generation)
        {
            return;
        }
        self.on_ready(generation, step);
    }

    fn on_observed(
        &mut self,
        generation: Generation,
        waiting: bool,
        seen: String,
        step: &mut Step,
    ) {
        let Some(Phase::Starting {
            readiness,
            seen: last,
            ..
        }) = self.phase_mut(generation)
        else {
            return;
        };
        if waiting && *readiness == Readiness::Auto {
            self.on_ready(generation, step);
        } else {
            *last = Some(seen);
        }
    }

    fn on_ready(&mut self, generation: Generation, step: &mut Step) {
        let stable_at = Some(step.now + self.settings.backoff.reset_after);
        let previous = self.active();
        let Some(state) = self.generations.get_mut(&generation) else {
            return;
        };
        // A late READY=1 of a generation that is no longer starting is ignored.
        let Phase::Starting { reloads, .. } = &mut state.phase else {
            return;
        };
        let reloads = std::mem::take(reloads);
        let ready_after = step.now.saturating_duration_since(state.spawned_at);
        state.ready_after = Some(ready_after);
        state.phase = Phase::Active {
            stable_at,
            watchdog_by: state.watchdog.map(|interval| step.now + interval),
            silent: false,
        };
        self.ever_ready = true;
        if let Some(previous) = previous {
            self.evict_draining(self.settings.max_draining.get() - 1, step);
            self.drain(previous, step);
        }
        step.notice(Notice::Ready {
            generation,
            previous,
            ready_after,
            reloads,
            reload_follows: self.reload_follows(),
        });
        self.run_queued_reloads(step);
    }

    fn on_leader_exited(&mut self, generation: Generation, status: ProcessExit, step: &mut Step) {
        let Some(phase) = self.phase_mut(generation) else {
            return;
        };
        match phase {
            Phase::Starting { reloads, .. } => {
                let reloads = std::mem::take(reloads);
                self.kill(generation, Some(status), step);
                self.start_failed(generation, Failure::Exited(status), reloads, step);
            }
            Phase::Active { .. } => {
                self.kill(generation, Some(status), step);
                step.notice(Notice::Crashed { generation, status });
                self.crashes += 1;
                // A generation already starting will take over when ready.
                if self.starting().is_none() && !self.shutting_down {
                    self.schedule_restart(step);
                }
            }
            // Its group may live on: wait for GroupEmpty or the deadline.
            Phase::Draining { leader, .. } | Phase::Killing { leader, .. } => {
                *leader = Some(status)
            }
        }
    }

    /// The driver tells this only after the leader's exit: a starting or
    /// active generation's group cannot be empty before that.
    fn on_group_empty(&mut self, generation: Generation, step: &mut Step) {
        let Some(state) = self.generations.get(&generation) else {
            return;
        };
        let (status, drain_since) = match state.phase {
            Phase::Draining { since, leader, .. } => (leader, Some(since)),
            Phase::Killing {
                drain_since,
                leader,
            } => (leader, drain_since),
            Phase::Starting { .. } | Phase::Active { .. } => return,
        };
        self.generations.remove(&generation);
        step.notice(Notice::Exited {
            generation,
            status,
            drained_in: drain_since.map(|since| step.now.saturating_duration_since(since)),
        });
        step.out.push(Action::Forget { generation });
        self.exit_if_done(step);
    }

    fn on_timeout(&mut self, step: &mut Step) {
        let now = step.now;
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            if !self.shutting_down && self.starting().is_none() {
                self.spawn_next(SpawnCause::Restart, Vec::new(), step);
            }
        }
        let due: Vec<Generation> = self
            .generations
            .iter()
            .filter(|(_, s)| s.phase.deadline().is_some_and(|at| at <= now))
            .map(|(&g, _)| g)
            .collect();
        let timeout = self.settings.ready_timeout;
        for generation in due {
            let Some(phase) = self.phase_mut(generation) else {
                continue;
            };
            match phase {
                Phase::Starting {
                    ready_by,
                    ready_at: Some(at),
                    ..
                } if *at <= now && *at <= *ready_by => self.on_ready(generation, step),
                Phase::Starting {
                    ready_by,
                    reloads,
                    readiness,
                    seen,
                    ..
                } if *ready_by <= now => {
                    let reloads = std::mem::take(reloads);
                    let failure = match readiness {
                        Readiness::Auto => Failure::NotWaiting {
                            timeout,
                            seen: seen.take().unwrap_or_else(|| NOTHING_SEEN.to_owned()),
                        },
                        Readiness::Notify => Failure::NeverNotified(timeout),
                        Readiness::Delay(_) => Failure::NotReady(timeout),
                    };
                    self.kill(generation, None, step);
                    self.start_failed(generation, failure, reloads, step);
                }
                Phase::Active { stable_at, .. } => {
                    if stable_at.is_some_and(|at| at <= now) {
                        *stable_at = None;
                        self.crashes = 0;
                    }
                    self.on_watchdog_due(generation, step);
                }
                Phase::Draining { deadline, .. } if *deadline <= now => {
                    self.kill(generation, None, step);
                    step.notice(Notice::DrainTimedOut { generation });
                }
                Phase::Draining {
                    since,
                    signal_at: Some(at),
                    ..
                } if *at <= now => {
                    let waited = now.saturating_duration_since(*since);
                    step.notice(Notice::QuiesceCutShort { generation, waited });
                    self.send_stop_signal(generation, step);
                }
                _ => {}
            }
        }
    }

    fn on_shutdown(&mut self, force: bool, step: &mut Step) {
        if self.shutting_down && !force {
            return;
        }
        self.shutting_down = true;
        self.restart_at = None;
        step.notice(Notice::ShuttingDown { force });
        let mut cancelled = std::mem::take(&mut self.queued);
        for state in self.generations.values_mut() {
            if let Phase::Starting { reloads, .. } = &mut state.phase {
                cancelled.append(reloads);
            }
        }
        if !cancelled.is_empty() {
            step.notice(Notice::ReloadsCancelled { reloads: cancelled });
        }
        let generations: Vec<_> = self.generations.keys().copied().collect();
        for generation in generations {
            let state = &self.generations[&generation];
            let live = state.is_starting() || state.is_active();
            match (force, &state.phase) {
                (true, Phase::Killing { .. }) => {}
                (true, _) => self.kill(generation, None, step),
                (false, _) if live => self.drain(generation, step),
                (false, _) => {}
            }
        }
        self.exit_if_done(step);
    }

    /// The generation that was starting has failed; decide what comes next.
    fn start_failed(
        &mut self,
        generation: Generation,
        failure: Failure,
        reloads: Vec<ReloadId>,
        step: &mut Step,
    ) {
        let active = self.active();
        step.notice(Notice::StartFailed {
            generation,
            failure: failure.clone(),
            active,
            reloads,
            reload_follows: self.reload_follows(),
        });
        if self.shutting_down || self.give_up_after(&failure, step) {
            return;
        }
        if !self.queued.is_empty() {
            self.run_queued_reloads(step);
        } else if active.is_none() {
            // Nothing serves: keep trying, slower and slower. The sockets
            // stay bound, so clients wait in the accept queue meanwhile.
            self.crashes += 1;
            self.schedule_restart(step);
        }
        // Otherwise a failed reload costs nothing: the active one serves on.
    }

    fn reload_follows(&self) -> bool {
        !self.queued.is_empty() && !self.shutting_down
    }

    fn run_queued_reloads(&mut self, step: &mut Step) {
        if self.reload_follows() && self.starting().is_none() {
            let reloads = std::mem::take(&mut self.queued);
            self.spawn_next(SpawnCause::Reload, reloads, step);
        }
    }

    fn schedule_restart(&mut self, step: &mut Step) {
        let delay = self.settings.backoff.delay(self.crashes);
        if delay.is_zero() {
            self.spawn_next(SpawnCause::Restart, Vec::new(), step);
            return;
        }
        self.restart_at = Some(step.now + delay);
        step.notice(Notice::RestartScheduled {
            delay,
            crashes: self.crashes,
        });
    }

    fn drain(&mut self, generation: Generation, step: &mut Step) {
        let deadline = step.now + self.settings.drain_timeout;
        // baton's own drain may take half the time; the server's own
        // shutdown, after the stop signal, has the rest.
        let signal_at = self
            .settings
            .quiesce
            .then(|| step.now + self.settings.drain_timeout / 2);
        let Some(phase) = self.phase_mut(generation) else {
            return;
        };
        *phase = Phase::Draining {
            since: step.now,
            deadline,
            signal_at,
            leader: None,
        };
        step.out.push(match signal_at {
            Some(_) => Action::Quiesce { generation },
            None => Action::Drain {
                generation,
                signal: self.settings.stop_signal,
            },
        });
        step.notice(Notice::Draining { generation });
    }

    /// The stop signal of a generation that baton drained itself.
    fn send_stop_signal(&mut self, generation: Generation, step: &mut Step) {
        let Some(Phase::Draining { signal_at, .. }) = self.phase_mut(generation) else {
            return;
        };
        if signal_at.take().is_some() {
            step.out.push(Action::Drain {
                generation,
                signal: self.settings.stop_signal,
            });
        }
    }

    /// SIGKILL the group; `exited` is the leader's status when that is
    /// why.
    fn kill(&mut self, generation: Generation, exited: Option<ProcessExit>, step: &mut Step) {
        let Some(phase) = self.phase_mut(generation) else {
            return;
        };
        let (drain_since, leader) = match *phase {
            Phase::Draining { since, leader, .. } => (Some(since), leader),
            Phase::Killing {
                drain_since,
                leader,
            } => (drain_since, leader),
            Phase::Starting { .. } | Phase::Active { .. } => (None, None),
        };
        *phase = Phase::Killing {
            drain_since,
            leader: exited.or(leader),
        };
        step.out.push(Action::Kill { generation });
    }

    /// Kill the oldest draining generations until at most `keep` drain.
    fn evict_draining(&mut self, keep: usize, step: &mut Step) {
        let draining: Vec<_> = self
            .generations
            .iter()
            .filter(|(_, s)| s.is_draining())
            .map(|(&g, _)| g)
            .collect();
        let excess = draining.len().saturating_sub(keep);
        for &generation in &draining[..excess] {
            self.kill(generation, None, step);
            step.notice(Notice::Evicted {
                generation,
                max_draining: self.settings.max_draining.get(),
            });
        }
    }

    fn exit_if_done(&mut self, step: &mut Step) {
        if self.shutting_down && self.generations.is_empty() {
            step.out.push(match &self.gave_up {
                Some(reason) => Action::GiveUp {
                    reason: reason.clone(),
                },
                None => Action::Exit,
            });
        }
    }
}

/// One call of [`Machine::handle`]: its time and what it decided so far.
struct Step {
    now: Instant,
    out: Vec<Action>,
}

impl Step {
    fn notice(&mut self, notice: Notice) {
        self.out.push(Action::Notice(notice));
    }
}

#[cfg(test)]
mod tests;
