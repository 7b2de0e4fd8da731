//! Runs the [machine](crate::machine) on tokio: turns signals, child exits,
//! notify messages and timers into events, and carries out the actions.
//!
//! One task does everything that touches processes. Spawning is a short
//! synchronous fork/exec, and reaping is `waitpid(-1)` in the same task, so
//! a child can never be reaped before the driver knows its pid. baton is a
//! child subreaper: orphans of the workers become its children and are
//! reaped here too, so no zombie is left behind.
//!
//! Call [`Driver::run`] from a current-thread runtime: the workers' leaders
//! get `PR_SET_PDEATHSIG`, which fires when the *thread* that forked them
//! exits.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::guardian::Guardian;
use crate::listeners::Listener;
use crate::machine::{Event, ExitStatus, Generation, Machine, Report, Settings, Timer};
use crate::notify::{Notification, NotifyDir, NotifyReceiver};
use crate::spawn::{self, SpawnRequest, WorkerCommand};

/// How often to look for generations whose process group emptied without
/// telling baton (a member reaped by another member sends no SIGCHLD here).
const GROUP_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What went wrong setting up the driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The private directory for notify sockets could not be created.
    #[error("cannot create the directory for notify sockets: {0}")]
    NotifyDir(io::Error),
    /// A signal handler could not be installed.
    #[error("cannot install a signal handler: {0}")]
    Signals(io::Error),
    /// baton cannot become a child subreaper.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(io::Error),
}

/// Everything the driver runs with.
#[derive(Debug)]
pub struct Config {
    /// The bound sockets, in `--listen` order.
    pub listeners: Vec<Listener>,
    /// The worker's command.
    pub command: WorkerCommand,
    /// The machine's settings.
    pub settings: Settings,
}

/// One generation's process, as the driver knows it.
#[derive(Debug)]
struct Worker {
    pid: Option<i32>,
    /// Held, not read: dropping it closes the generation's notify socket.
    _notify: NotifyReceiver,
    spawned_at: Instant,
    drain_started: Option<Instant>,
    leader_exited: bool,
    group_empty: bool,
}

/// The driver. See the [module docs](self).
#[derive(Debug)]
pub struct Driver {
    machine: Machine,
    listeners: Vec<Listener>,
    command: WorkerCommand,
    notify_dir: NotifyDir,
    workers: BTreeMap<Generation, Worker>,
    guardian: Option<Guardian>,
    guardian_reaped: bool,
    timers: mpsc::UnboundedSender<Timer>,
    timers_rx: mpsc::UnboundedReceiver<Timer>,
    notes: mpsc::UnboundedSender<Notification>,
    notes_rx: mpsc::UnboundedReceiver<Notification>,
    interrupts: u32,
}

impl Driver {
    /// Prepare a driver; `guardian` (if any) is told about every worker group.
    pub fn new(config: Config, guardian: Option<Guardian>) -> Result<Self, DriverError> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on us.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            return Err(DriverError::Subreaper(io::Error::last_os_error()));
        }
        let (timers, timers_rx) = mpsc::unbounded_channel();
        let (notes, notes_rx) = mpsc::unbounded_channel();
        Ok(Driver {
            machine: Machine::new(config.settings),
            listeners: config.listeners,
            command: config.command,
            notify_dir: NotifyDir::new().map_err(DriverError::NotifyDir)?,
            workers: BTreeMap::new(),
            guardian,
            guardian_reaped: false,
            timers,
            timers_rx,
            notes,
            notes_rx,
            interrupts: 0,
        })
    }

    /// Start the first generation and supervise until shutdown is complete.
    pub async fn run(mut self) -> Result<(), DriverError> {
        let install = |kind| signal(kind).map_err(DriverError::Signals);
        let mut hangup = install(SignalKind::hangup())?;
        let mut terminate = install(SignalKind::terminate())?;
        let mut interrupt = install(SignalKind::interrupt())?;
        let mut child = install(SignalKind::child())?;
        let mut group_check = tokio::time::interval(GROUP_CHECK_INTERVAL);
        group_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let mut done = self.step(Event::Start);
        while !done {
            let event = tokio::select! {
                _ = hangup.recv() => Some(Event::ReloadRequested),
                _ = terminate.recv() => Some(Event::ShutdownRequested),
                _ = interrupt.recv() => {
                    self.interrupts += 1;
                    Some(if self.interrupts == 1 { Event::ShutdownRequested } else { Event::ForceShutdown })
                }
                _ = child.recv() => None,
                _ = group_check.tick() => None,
                Some(timer) = self.timers_rx.recv() => Some(Event::TimerFired(timer)),
                Some(note) = self.notes_rx.recv() => self.on_notification(note),
            };
            // Reap on every wake-up: cheap, and a SIGCHLD may have been
            // coalesced with another signal.
            let mut events: Vec<Event> = event.into_iter().collect();
            events.extend(self.reap());
            for event in events {
                done = self.step(event);
                if done {
                    break;
                }
            }
        }
        self.finish();
        Ok(())
    }

    /// Feed one event and every follow-up event it causes to the machine.
    /// Returns true once the machine says baton may exit.
    fn step(&mut self, event: Event) -> bool {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.machine.handle(event) {
                use crate::machine::Action;
                match action {
                    Action::Spawn { generation } => queue.push_back(self.spawn(generation)),
                    Action::Signal { generation, signal } => self.signal(generation, signal),
                    Action::KillGroup { generation } => self.signal(generation, Signal::SIGKILL),
                    Action::StartTimer { timer, after } => self.start_timer(timer, after),
                    Action::Report(report) => self.report(report),
                    Action::Exit => return true,
                }
            }
        }
        false
    }

    fn spawn(&mut self, generation: Generation) -> Event {
        let notify = match self.notify_dir.listen(generation, self.notes.clone()) {
            Ok(notify) => notify,
            Err(error) => {
                let error = format!("cannot create its notify socket: {error}");
                return Event::SpawnFailed { generation, error };
            }
        };
        let sockets: Vec<(&str, _)> = self
            .listeners
            .iter()
            .map(|l| (l.name(), l.as_fd()))
            .collect();
        let request = SpawnRequest {
            command: &self.command,
            sockets: &sockets,
            generation,
            notify_socket: notify.path(),
            env: std::env::vars_os().collect(),
        };
        match spawn::spawn(&request) {
            Ok(pid) => {
                if let Some(guardian) = &self.guardian {
                    guardian.add(pid);
                }
                tracing::info!(generation, pid, "spawned");
                self.workers.insert(
                    generation,
                    Worker {
                        pid: Some(pid),
                        _notify: notify,
                        spawned_at: Instant::now(),
                        drain_started: None,
                        leader_exited: false,
                        group_empty: false,
                    },
                );
                Event::Spawned { generation, pid }
            }
            Err(error) => Event::SpawnFailed {
                generation,
                error: error.to_string(),
            },
        }
    }

    /// Signal a generation's whole process group.
    fn signal(&mut self, generation: Generation, signal: Signal) {
        let Some(worker) = self.workers.get_mut(&generation) else {
            return;
        };
        let Some(pid) = worker.pid.filter(|_| !worker.group_empty) else {
            return;
        };
        if signal != Signal::SIGKILL && worker.drain_started.is_none() {
            worker.drain_started = Some(Instant::now());
        }
        match killpg(Pid::from_raw(pid), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(generation, pid, %error, signal = signal.as_str(), "cannot signal the worker group")
            }
        }
    }

    fn start_timer(&self, timer: Timer, after: Duration) {
        let timers = self.timers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = timers.send(timer);
        });
    }

    fn on_notification(&self, note: Notification) -> Option<Event> {
        let generation = note.generation;
        let sender = note.sender.unwrap_or(0);
        if let Some(status) = &note.status {
            tracing::info!(generation, sender, %status, "worker status");
        }
        if !note.ready {
            return None;
        }
        tracing::info!(generation, sender, "READY=1 received");
        Some(Event::Ready { generation })
    }

    /// Reap every exited child, then find generations whose group is empty.
    fn reap(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid.as_raw(), ExitStatus::Signal(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(error) => {
                    tracing::warn!(%error, "waitpid failed");
                    break;
                }
            };
            if self.guardian.as_ref().is_some_and(|g| g.pid() == pid) {
                self.guardian_reaped = true;
                tracing::error!(pid, %status, "the guardian exited: workers may outlive baton if it is killed");
                continue;
            }
            match self.workers.iter_mut().find(|(_, w)| w.pid == Some(pid)) {
                Some((&generation, worker)) => {
                    worker.leader_exited = true;
                    events.push(Event::LeaderExited { generation, status });
                }
                None => tracing::debug!(pid, %status, "reaped an orphan"),
            }
        }
        for (&generation, worker) in &mut self.workers {
            if worker.leader_exited && !worker.group_empty {
                let pid = worker.pid.expect("a worker whose leader exited had a pid");
                if killpg(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
                    worker.group_empty = true;
                    if let Some(guardian) = &self.guardian {
                        guardian.forget(pid);
                    }
                    events.push(Event::GroupEmpty { generation });
                }
            }
        }
        events
    }

    /// One log line per transition, each with generation and pid.
    fn report(&mut self, report: Report) {
        let pid_of = |workers: &BTreeMap<Generation, Worker>, g: Generation| {
            workers.get(&g).and_then(|w| w.pid).unwrap_or(0)
        };
        match report {
            Report::Ready {
                generation,
                previous,
            } => {
                let worker = self.workers.get(&generation);
                let ready_ms = worker.map_or(0, |w| w.spawned_at.elapsed().as_millis());
                let pid = pid_of(&self.workers, generation);
                match previous {
                    Some(previous) => tracing::info!(
                        generation,
                        pid,
                        ready_ms,
                        previous,
                        previous_pid = pid_of(&self.workers, previous),
                        "reload complete: ready"
                    ),
                    None => tracing::info!(generation, pid, ready_ms, "ready"),
                }
            }
            Report::StartFailed {
                generation,
                failure,
                active,
            } => {
                let pid = pid_of(&self.workers, generation);
                match active {
                    Some(active) => tracing::error!(
                        generation,
                        pid,
                        reason = %failure,
                        active,
                        "reload failed: generation {active} keeps serving"
                    ),
                    None => tracing::error!(generation, pid, reason = %failure, "start failed"),
                }
            }
            Report::ReloadCoalesced => {
                tracing::info!("reload requested during a reload: one more will follow")
            }
            Report::ReloadIgnored => tracing::info!("reload ignored: shutting down"),
            Report::Crashed { generation, status } => {
                let pid = pid_of(&self.workers, generation);
                tracing::error!(generation, pid, %status, "crashed")
            }
            Report::RestartScheduled { delay, crashes } => {
                tracing::warn!(delay_ms = delay.as_millis(), crashes, "restart scheduled")
            }
            Report::Draining { generation } => {
                let pid = pid_of(&self.workers, generation);
                tracing::info!(generation, pid, "draining")
            }
            Report::DrainTimedOut { generation } => {
                let pid = pid_of(&self.workers, generation);
                tracing::warn!(
                    generation,
                    pid,
                    "drain timed out: killing its process group"
                )
            }
            Report::Evicted {
                generation,
                max_draining,
            } => {
                let pid = pid_of(&self.workers, generation);
                tracing::warn!(
                    generation,
                    pid,
                    max_draining,
                    "too many generations draining: killing the oldest"
                )
            }
            Report::Exited { generation, status } => {
                let worker = self.workers.remove(&generation);
                let pid = worker.as_ref().and_then(|w| w.pid).unwrap_or(0);
                let drain_ms = worker
                    .and_then(|w| w.drain_started)
                    .map_or(0, |t| t.elapsed().as_millis());
                let status = status.map_or_else(|| "never started".to_owned(), |s| s.to_string());
                tracing::info!(generation, pid, %status, drain_ms, "exited")
            }
            Report::ShuttingDown { force } => tracing::info!(force, "shutting down"),
        }
    }

    fn finish(self) {
        tracing::info!("every worker is gone: exiting");
        let Driver {
            guardian,
            guardian_reaped,
            listeners,
            ..
        } = self;
        // Unix socket files baton created go with the listeners.
        drop(listeners);
        if let Some(guardian) = guardian {
            guardian.finish(guardian_reaped);
        }
    }
}
