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

mod devloop;
mod reloads;

pub use self::devloop::DevSettings;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use self::devloop::{Build, DevLoop, Next};
use self::reloads::Reloads;
use crate::control::{self, Call, Response};
use crate::fswatch::{ChangeBatch, WatchError, Watcher};
use crate::guardian::Guardian;
use crate::listeners::{self, BindOptions, Listener, ListenerSpec};
use crate::machine::{Event, ExitStatus, Generation, Machine, Report, Settings, Timer};
use crate::metrics::{self, Histogram, Snapshot};
use crate::notify::{Notification, NotifyDir, NotifyReceiver};
use crate::spawn::{self, SpawnRequest, WorkerCommand};
use crate::status::{self, GenerationStatus, ListenerStatus, Sampler, Status, Trigger, Usage};
use crate::systemd::SystemdNotifier;

/// How often to look for generations whose process group emptied without
/// telling baton (a member reaped by another member sends no SIGCHLD here).
const GROUP_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How often to sample what each generation costs.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// What went wrong setting up the driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The private directory for notify sockets could not be created.
    #[error("cannot create the directory for notify sockets: {0}")]
    NotifyDir(io::Error),
    /// The watched paths cannot be watched.
    #[error("{0}")]
    Watch(WatchError),
    /// A signal handler could not be installed.
    #[error("cannot install a signal handler: {0}")]
    Signals(io::Error),
    /// baton cannot become a child subreaper.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(io::Error),
}

/// What a reload may change: re-read from the config file each time.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The listeners; existing ones must stay as they are, in order, and
    /// new ones may only be appended (fd numbers never shift).
    pub listeners: Vec<ListenerSpec>,
    /// How to bind new listeners.
    pub bind: BindOptions,
    /// The worker's command.
    pub command: WorkerCommand,
    /// Variables set for workers on top of baton's own environment.
    pub env: Vec<(OsString, OsString)>,
    /// Timings and readiness.
    pub settings: Settings,
}

/// Produces the [`Plan`] for the next generation (re-reads the config
/// file); an error fails the reload and changes nothing.
pub type Reloader = Box<dyn FnMut() -> Result<Plan, String> + Send>;

/// Everything the driver runs with.
pub struct Config {
    /// The bound sockets, in `--listen` order.
    pub listeners: Vec<Listener>,
    /// What they were bound from.
    pub plan: Plan,
    /// The bound control socket and its path, unless turned off.
    pub control: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    /// The bound metrics listener, if asked for.
    pub metrics: Option<std::net::TcpListener>,
    /// Re-reads the config file on every reload, if there is one.
    pub reloader: Option<Reloader>,
    /// baton's own notify socket towards systemd (disabled when not
    /// started by systemd).
    pub systemd: SystemdNotifier,
    /// The development loop (`--watch`, `--build`), if asked for.
    pub dev: Option<DevSettings>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listeners", &self.listeners)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// One generation's process, as the driver knows it.
#[derive(Debug)]
struct Worker {
    pid: Option<i32>,
    /// Held, not read: dropping it closes the generation's notify socket.
    _notify: NotifyReceiver,
    spawned_at: Instant,
    started_unix: f64,
    ready_ms: Option<u64>,
    drain_started: Option<Instant>,
    leader_exited: bool,
    group_empty: bool,
}

/// The driver. See the [module docs](self).
pub struct Driver {
    machine: Machine,
    listeners: Vec<Listener>,
    /// Each listener's backlog when it was bound.
    backlogs: Vec<i32>,
    plan: Plan,
    reloader: Option<Reloader>,
    control: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    control_path: Option<PathBuf>,
    calls: mpsc::Sender<Call>,
    calls_rx: mpsc::Receiver<Call>,
    metrics: Option<std::net::TcpListener>,
    snapshots: Option<tokio::sync::watch::Sender<Arc<Snapshot>>>,
    reloads: Reloads,
    time_to_ready: Histogram,
    sampler: Option<Sampler>,
    usage: HashMap<i32, Usage>,
    started: Instant,
    systemd: SystemdNotifier,
    announced_ready: bool,
    dev_settings: Option<DevSettings>,
    dev: Option<DevLoop>,
    /// Builds killed for a newer change, not reaped yet.
    cancelled_builds: Vec<i32>,
    notify_dir: NotifyDir,
    workers: BTreeMap<Generation, Worker>,
    guardian: Option<Guardian>,
    guardian_reaped: bool,
    /// Pending timers by deadline (the number keeps equal deadlines
    /// apart). One map instead of a task per timer: a stale timer of a
    /// gone generation is dropped at once instead of holding memory until
    /// it would have fired.
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    notes: mpsc::UnboundedSender<Notification>,
    notes_rx: mpsc::UnboundedReceiver<Notification>,
    interrupts: u32,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("machine", &self.machine)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Prepare a driver; `guardian` (if any) is told about every worker group.
    pub fn new(config: Config, guardian: Option<Guardian>) -> Result<Self, DriverError> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on us.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            return Err(DriverError::Subreaper(io::Error::last_os_error()));
        }
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let (calls, calls_rx) = mpsc::channel(64);
        Ok(Driver {
            machine: Machine::new(config.plan.settings.clone()),
            backlogs: vec![config.plan.bind.backlog; config.listeners.len()],
            listeners: config.listeners,
            plan: config.plan,
            reloader: config.reloader,
            control_path: config.control.as_ref().map(|(_, path)| path.clone()),
            control: config.control,
            calls,
            calls_rx,
            metrics: config.metrics,
            snapshots: None,
            reloads: Reloads::default(),
            time_to_ready: Histogram::default(),
            sampler: Sampler::new(),
            usage: HashMap::new(),
            started: Instant::now(),
            systemd: config.systemd,
            announced_ready: false,
            dev_settings: config.dev,
            dev: None,
            cancelled_builds: Vec::new(),
            notify_dir: NotifyDir::new().map_err(DriverError::NotifyDir)?,
            workers: BTreeMap::new(),
            guardian,
            guardian_reaped: false,
            timers: BTreeMap::new(),
            timer_seq: 0,
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
        let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The servers are tasks of their own: a slow client never blocks this loop.
        let in_flight = control::InFlight::default();
        let _control = self.control.take().map(|(listener, _)| {
            AbortOnDrop(tokio::spawn(control::serve(
                listener,
                self.calls.clone(),
                in_flight.clone(),
            )))
        });
        let _metrics = self.metrics.take().map(|listener| {
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
            self.snapshots = Some(tx);
            AbortOnDrop(tokio::spawn(metrics::serve(listener, rx)))
        });

        self.store_fds();
        // Pings prove that baton's own loop runs: a worker in crash
        // backoff must not get baton killed.
        let mut watchdog = self.systemd.watchdog_interval().map(|interval| {
            let mut timer = tokio::time::interval(interval / 2);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });

        if let Some(settings) = self.dev_settings.take() {
            let watcher = Watcher::start(settings.watch.clone())
                .await
                .map_err(DriverError::Watch)?;
            self.dev = Some(DevLoop::new(watcher, &settings));
        }
        // With a build step, the first generation waits for the first build.
        let mut done = if self.dev.as_ref().is_some_and(|d| d.first_start_pending) {
            self.start_build();
            false
        } else {
            self.step(Event::Start)
        };
        while !done {
            let dev_deadline = self.dev.as_ref().and_then(DevLoop::deadline);
            let event = tokio::select! {
                batch = next_batch(&mut self.dev) => self.on_changes(batch),
                _ = sleep_until(dev_deadline) => {
                    let next = self.dev.as_mut().map_or(Next::Wait, |d| d.on_deadline(Instant::now()));
                    self.act(next)
                }
                _ = tick(&mut watchdog) => {
                    self.tell_systemd(|s| s.watchdog());
                    None
                }
                _ = hangup.recv() => self.reload_requested(Trigger::Signal, None),
                Some(call) = self.calls_rx.recv() => self.on_call(call),
                _ = sample.tick() => { self.sample(); None }
                _ = terminate.recv() => Some(Event::ShutdownRequested),
                _ = interrupt.recv() => {
                    self.interrupts += 1;
                    Some(if self.interrupts == 1 { Event::ShutdownRequested } else { Event::ForceShutdown })
                }
                _ = child.recv() => None,
                _ = group_check.tick() => None,
                _ = sleep_until(self.timers.keys().next().map(|(at, _)| *at)) => {
                    self.timers.pop_first().map(|(_, timer)| Event::TimerFired(timer))
                }
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
            self.publish();
        }
        // Answer whoever still waits, and let those answers be written
        // (a `stop` above all) before the runtime goes away.
        self.reloads.close("baton has stopped");
        in_flight.settle(Duration::from_secs(1)).await;
        self.finish();
        Ok(())
    }

    /// Watched files changed.
    fn on_changes(&mut self, batch: Result<ChangeBatch, WatchError>) -> Option<Event> {
        let batch = match batch {
            Ok(batch) => batch,
            Err(WatchError::Stopped) => {
                tracing::error!("the file watcher stopped: no more reloads on changes");
                self.dev = None;
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, "watch");
                return None;
            }
        };
        tracing::info!(changes = batch.len(), "changed: {batch}");
        let dev = self.dev.as_mut()?;
        let next = dev.on_changes(batch, Instant::now());
        self.act(next)
    }

    /// Carry out what the dev loop decided.
    fn act(&mut self, next: Next) -> Option<Event> {
        match next {
            Next::Wait => None,
            Next::Build => {
                self.start_build();
                None
            }
            Next::Reload => {
                let first = self
                    .dev
                    .as_mut()
                    .is_some_and(|d| std::mem::replace(&mut d.first_start_pending, false));
                if first && self.machine.generations().next().is_none() {
                    Some(Event::Start)
                } else {
                    self.reload_requested(Trigger::Watch, None)
                }
            }
        }
    }

    /// Run the build step in its own process group, its output prefixed;
    /// a build still running (older changes) is killed first.
    fn start_build(&mut self) {
        let Some(dev) = &mut self.dev else { return };
        let Some(command) = dev.build_command.clone() else {
            return;
        };
        if let Some(old) = dev.build.take() {
            let _ = killpg(Pid::from_raw(old.pid), Signal::SIGKILL);
            self.cancelled_builds.push(old.pid);
            tracing::info!(pid = old.pid, "build cancelled: newer changes");
        }
        let started = match spawn_build(&command, &self.plan) {
            Ok(pid) => pid,
            Err(error) => {
                tracing::error!(%error, "build could not start");
                dev.on_build_unstartable(Instant::now());
                return;
            }
        };
        if let Some(guardian) = &self.guardian {
            guardian.add(started);
        }
        tracing::info!(pid = started, %command, "build started");
        dev.build = Some(Build {
            pid: started,
            started: Instant::now(),
        });
    }

    /// A build process exited: reload on success, keep serving on failure.
    fn on_build_exit(&mut self, pid: i32, status: ExitStatus) -> Option<Event> {
        if let Some(guardian) = &self.guardian {
            guardian.forget(pid);
        }
        if let Some(i) = self.cancelled_builds.iter().position(|&p| p == pid) {
            self.cancelled_builds.remove(i);
            return None;
        }
        let dev = self.dev.as_mut()?;
        let build_ms = dev.build.as_ref()?.started.elapsed().as_millis() as u64;
        let ok = status.success();
        if ok {
            tracing::info!(pid, build_ms, "build ok");
        } else {
            let serving = self.machine.active();
            tracing::error!(pid, %status, build_ms, failures = dev.failures() + 1, "build failed: generation {} keeps serving", serving.unwrap_or(0));
        }
        let next = dev.on_build_done(ok, Instant::now());
        self.act(next)
    }

    /// Push the sockets baton bound itself into systemd's fd store, so a
    /// restarted baton gets them back (inherited ones are systemd's already).
    fn store_fds(&self) {
        if !self.systemd.is_enabled() {
            return;
        }
        let fds: Vec<(&str, _)> = self
            .listeners
            .iter()
            .filter(|l| !l.is_inherited())
            .map(|l| (l.name(), l.as_fd()))
            .collect();
        if !fds.is_empty() {
            self.tell_systemd(|s| s.store_fds(&fds));
        }
    }

    /// Tell systemd something; a failure is logged, never fatal.
    fn tell_systemd(
        &self,
        message: impl FnOnce(&SystemdNotifier) -> Result<(), crate::systemd::SystemdError>,
    ) {
        if let Err(error) = message(&self.systemd) {
            tracing::warn!(%error, "cannot notify systemd");
        }
    }

    /// A reload was asked for: re-read the plan, then tell the machine.
    fn reload_requested(
        &mut self,
        trigger: Trigger,
        waiter: Option<tokio::sync::oneshot::Sender<Response>>,
    ) -> Option<Event> {
        let id = self.reloads.request(trigger, waiter);
        if !self.machine.shutting_down() {
            self.tell_systemd(|s| s.reloading(&format!("reload {id} ({trigger}) started")));
        }
        if self.machine.shutting_down() {
            self.reloads.fail_unassigned("baton is shutting down");
            tracing::info!(reload = id, %trigger, "reload ignored: shutting down");
            return None;
        }
        if let Err(reason) = self.replan() {
            self.reloads.fail(id, &reason);
            if trigger == Trigger::Watch
                && let Some(dev) = &mut self.dev
            {
                dev.on_reload_done(false, Instant::now());
            }
            self.tell_systemd(|s| s.reload_done(false, &reason));
            tracing::error!(reload = id, %trigger, result = %"failed", %reason, "reload");
            return None;
        }
        Some(Event::ReloadRequested)
    }

    /// Re-read the config (if any) and apply what the next generation sees.
    fn replan(&mut self) -> Result<(), String> {
        let Some(reloader) = &mut self.reloader else {
            return Ok(());
        };
        let plan = reloader()?;
        let current = &self.plan.listeners;
        if plan.listeners.len() < current.len() || plan.listeners[..current.len()] != current[..] {
            return Err(
                "listeners can only be appended: removing, changing or reordering one needs a restart of baton".into(),
            );
        }
        let added = &plan.listeners[current.len()..];
        let bound = listeners::bind_all(added, plan.bind).map_err(|e| e.to_string())?;
        for listener in &bound {
            tracing::info!(name = %listener.name(), addr = %listener.local_address(), backlog = plan.bind.backlog, "listening");
        }
        self.backlogs
            .extend(bound.iter().map(|_| plan.bind.backlog));
        self.listeners.extend(bound);
        self.machine.set_settings(plan.settings.clone());
        self.plan = plan;
        Ok(())
    }

    fn on_call(&mut self, call: Call) -> Option<Event> {
        match call.command {
            control::Command::Status => {
                let mut response = Response::ok();
                response.status = Some(Box::new(self.status()));
                let _ = call.reply.send(response);
                None
            }
            control::Command::Reload => self.reload_requested(Trigger::Ctl, Some(call.reply)),
            control::Command::Stop => {
                let _ = call.reply.send(Response::ok());
                Some(Event::ShutdownRequested)
            }
        }
    }

    /// Measure every live generation's process group.
    fn sample(&mut self) {
        let Some(sampler) = &mut self.sampler else {
            return;
        };
        let groups: Vec<i32> = self
            .workers
            .values()
            .filter(|w| !w.group_empty)
            .filter_map(|w| w.pid)
            .collect();
        let draining: HashSet<i32> = self
            .machine
            .generations()
            .filter(|(_, s)| s.phase == crate::machine::Phase::Draining)
            .filter_map(|(_, s)| s.pid)
            .collect();
        self.usage = if groups.is_empty() {
            HashMap::new()
        } else {
            sampler.sample(&groups, &draining)
        };
    }

    /// What `status` answers.
    pub fn status(&self) -> Status {
        let generations = self
            .machine
            .generations()
            .map(|(generation, state)| {
                let worker = self.workers.get(&generation);
                let usage = state
                    .pid
                    .and_then(|pid| self.usage.get(&pid))
                    .cloned()
                    .unwrap_or_default();
                GenerationStatus {
                    generation,
                    pid: state.pid,
                    state: state.phase.to_string(),
                    started_at: worker.map_or(0.0, |w| w.started_unix),
                    ready_ms: worker.and_then(|w| w.ready_ms),
                    usage,
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            listeners: self
                .listeners
                .iter()
                .zip(&self.backlogs)
                .map(|(l, &backlog)| ListenerStatus {
                    name: l.name().to_owned(),
                    address: l.local_address().to_owned(),
                    backlog,
                })
                .collect(),
            generations,
            reloads: self.reloads.history(),
            counters: self.reloads.counters.clone(),
        }
    }

    /// Hand the metrics server a fresh snapshot, if it runs.
    fn publish(&self) {
        if let Some(snapshots) = &self.snapshots {
            snapshots.send_replace(Arc::new(Snapshot {
                status: self.status(),
                reload_duration: self.reloads.duration.clone(),
                time_to_ready: self.time_to_ready.clone(),
            }));
        }
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
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(key, _)| !self.plan.env.iter().any(|(k, _)| k == key))
            .collect();
        env.extend(self.plan.env.iter().cloned());
        let request = SpawnRequest {
            command: &self.plan.command,
            sockets: &sockets,
            generation,
            notify_socket: Some(notify.path()),
            env,
            output: None,
        };
        if !self.reloads.on_spawn(generation) && generation > 1 {
            self.reloads.counters.restarts += 1;
        }
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
                        started_unix: status::unix_now(),
                        ready_ms: None,
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

    fn start_timer(&mut self, timer: Timer, after: Duration) {
        self.timer_seq += 1;
        self.timers
            .insert((Instant::now() + after, self.timer_seq), timer);
    }

    /// Drop the timers of a generation that is gone: the machine would
    /// ignore them anyway.
    fn forget_timers(&mut self, gone: Generation) {
        self.timers.retain(|_, timer| match *timer {
            Timer::ReadyDelay(g)
            | Timer::ReadyDeadline(g)
            | Timer::DrainDeadline(g)
            | Timer::Stable(g) => g != gone,
            Timer::Restart(_) => true,
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
            let is_build = self.cancelled_builds.contains(&pid)
                || self
                    .dev
                    .as_ref()
                    .and_then(|d| d.build.as_ref())
                    .is_some_and(|b| b.pid == pid);
            if is_build {
                events.extend(self.on_build_exit(pid, status));
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
                let ready = self
                    .workers
                    .get(&generation)
                    .map_or(Duration::ZERO, |w| w.spawned_at.elapsed());
                let ready_ms = ready.as_millis() as u64;
                if let Some(worker) = self.workers.get_mut(&generation) {
                    worker.ready_ms = Some(ready_ms);
                }
                self.time_to_ready.observe(ready);
                let pid = pid_of(&self.workers, generation);
                let completed = self.reloads.on_ready(generation, previous, ready);
                if completed.iter().any(|r| r.trigger == Trigger::Watch)
                    && let Some(dev) = &mut self.dev
                {
                    dev.on_reload_done(true, Instant::now());
                }
                let serving = format!("generation {generation} (pid {pid}) serving");
                if !self.announced_ready {
                    self.announced_ready = true;
                    self.tell_systemd(|s| s.ready(&serving));
                } else if completed.is_empty() || self.reloads.queued() {
                    // READY=1 would end systemd's reload while the one it
                    // asked for (coalesced) has not run yet.
                    self.tell_systemd(|s| s.status(&serving));
                } else {
                    self.tell_systemd(|s| s.reload_done(true, &serving));
                }
                for record in completed {
                    tracing::info!(
                        reload = record.id,
                        trigger = %record.trigger,
                        result = %"ok",
                        generation,
                        pid,
                        previous = previous.unwrap_or(0),
                        ready_ms,
                        "reload"
                    );
                }
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
                let reason = failure.to_string();
                let failed = self.reloads.on_start_failed(generation, &reason);
                if failed.iter().any(|r| r.trigger == Trigger::Watch)
                    && let Some(dev) = &mut self.dev
                {
                    dev.on_reload_done(false, Instant::now());
                }
                if !failed.is_empty() {
                    let why = format!("generation {generation}: {reason}");
                    if self.reloads.queued() {
                        self.tell_systemd(|s| s.status(&format!("reload failed: {why}")));
                    } else {
                        self.tell_systemd(|s| s.reload_done(false, &why));
                    }
                }
                for record in failed {
                    tracing::error!(
                        reload = record.id,
                        trigger = %record.trigger,
                        result = %"failed",
                        generation,
                        pid,
                        %reason,
                        "reload"
                    );
                }
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
            Report::ReloadIgnored => {
                self.reloads.fail_unassigned("baton is shutting down");
                tracing::info!("reload ignored: shutting down")
            }
            Report::Crashed { generation, status } => {
                self.reloads.counters.crashes += 1;
                let pid = pid_of(&self.workers, generation);
                let text =
                    format!("generation {generation} (pid {pid}) crashed ({status}); restarting");
                self.tell_systemd(|s| s.status(&text));
                tracing::error!(generation, pid, %status, "crashed")
            }
            Report::RestartScheduled { delay, crashes } => {
                self.reloads.counters.backoff_ms = Some(delay.as_millis() as u64);
                let text = format!(
                    "no worker serving: restart in {} ms after {crashes} crashes in a row",
                    delay.as_millis()
                );
                self.tell_systemd(|s| s.status(&text));
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
                self.forget_timers(generation);
                let worker = self.workers.remove(&generation);
                let pid = worker.as_ref().and_then(|w| w.pid).unwrap_or(0);
                let drain = worker.and_then(|w| w.drain_started).map(|t| t.elapsed());
                let drain_ms = drain.map_or(0, |d| d.as_millis());
                let status = status.map_or_else(|| "never started".to_owned(), |s| s.to_string());
                self.reloads.on_exited(generation, &status, drain);
                tracing::info!(generation, pid, %status, drain_ms, "exited")
            }
            Report::ShuttingDown { force } => {
                self.tell_systemd(|s| s.stopping("draining every generation"));
                tracing::info!(force, "shutting down")
            }
        }
    }

    fn finish(self) {
        tracing::info!("every worker is gone: exiting");
        if let Some(path) = &self.control_path {
            let _ = std::fs::remove_file(path);
        }
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

/// Aborts a server task when the driver's loop ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next tick of an optional interval; never, without one.
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next batch of changes; never, without a watcher.
async fn next_batch(dev: &mut Option<DevLoop>) -> Result<ChangeBatch, WatchError> {
    match dev {
        Some(dev) => dev.watcher.next_batch().await,
        None => std::future::pending().await,
    }
}

/// Sleep until `deadline`; never, without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Start `sh -c COMMAND` in the worker's directory, in its own process
/// group, with no socket of baton's, its output piped through a task that
/// prefixes each line with `build | `.
fn spawn_build(command: &str, plan: &Plan) -> io::Result<i32> {
    let (read, write) = std::io::pipe()?;
    let shell = WorkerCommand {
        program: "sh".into(),
        args: vec!["-c".into(), command.into()],
        cwd: plan.command.cwd.clone(),
    };
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| !plan.env.iter().any(|(k, _)| k == key))
        .collect();
    env.extend(plan.env.iter().cloned());
    let request = SpawnRequest {
        command: &shell,
        sockets: &[],
        generation: 0,
        notify_socket: None,
        env,
        output: Some(write.as_fd()),
    };
    let pid = spawn::spawn(&request).map_err(io::Error::other)?;
    drop(write);
    let output = tokio::net::unix::pipe::Receiver::from_owned_fd(read.into())?;
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            use std::io::Write;
            // One write per line: workers share this stderr.
            let _ = std::io::stderr().write_all(format!("build | {line}\n").as_bytes());
        }
    });
    Ok(pid)
}
