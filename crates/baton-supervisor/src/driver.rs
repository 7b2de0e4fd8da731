//! Runs the [machine](crate::machine) on tokio: a select loop that turns
//! signals, child exits, notify datagrams, control requests, file changes
//! and the machine's own deadlines into events, and carries out the
//! actions that come back.
//!
//! The driver decides nothing. The machine decides about generations and
//! reloads, the [dev loop](crate::devloop) about builds; the driver does
//! the I/O they ask for:
//!
//! - [`processes`]: the one table of pids and process groups, and the reaper;
//! - [`escapees`]: baton's children outside every generation, stopped at exit;
//! - [`observe`]: logs, systemd and the reload ledger, from the machine's notices;
//! - [`build`]: the dev loop's build step;
//! - [`sampling`]: what each generation costs, measured off the loop;
//! - [`listening`]: listener health: check, repair, hand over;
//! - [`signals`]: what each signal baton receives does.
//! - [`waits`]: optional timers and watchers as futures for the loop;
//! - [`lookouts`]: threads that read a generation's `/proc` for the machine
//!   (`--ready auto`, baton's own drain under `--preload`).
//!
//! Call [`Driver::run`] from a current-thread runtime: the workers' leaders
//! get `PR_SET_PDEATHSIG`, which fires when the *thread* that forked them
//! exits.

mod blueprint;
mod build;
mod escapees;
mod ledger;
mod listening;
mod lookouts;
mod observe;
mod processes;
mod reread;
mod sampling;
mod signals;
mod status_lines;
mod waits;

pub use self::blueprint::{Blueprint, Config, Reloader};
pub use self::ledger::ReloadLedger;
pub use crate::devloop::DevSettings;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use self::listening::{Health, Moment};
use self::lookouts::Lookouts;
use self::observe::{Observer, WatchOutcome};
use self::processes::{ProcessTable, Reaped};
use self::sampling::{Groups, Usages};
use self::waits::{interval, next_batch, sleep_until, tick};
use crate::control::{self, ControlRequest, Response};
use crate::devloop::{DevAction, DevLoop};
use crate::fswatch::{ChangeBatch, WatchError, Watcher};
use crate::guardian::Guardian;
use crate::listeners::Listener;
use crate::machine::{Action, Event, Generation, Machine, Notice, ProcessExit, StopSignal};
use crate::metrics::history::CostHistory;
use crate::metrics::{self, Snapshot};
use crate::preload::drain_page;
use crate::readiness::{Notification, ReadinessDir, ReadinessSocket};
use crate::signals::{SignalTable, Signals};
use crate::spawn::{Role, SpawnRequest};
use crate::status::{GenerationStatus, Status, Trigger};

/// How often to look for generations whose process group emptied without
/// telling baton (a member reaped by another member sends no SIGCHLD here).
const GROUP_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What went wrong setting up the driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The watched paths cannot be watched.
    #[error("{0}")]
    Watch(WatchError),
    /// A signal handler could not be installed.
    #[error("cannot install a signal handler: {0}")]
    Signals(io::Error),
    /// baton cannot become a child subreaper.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(io::Error),
    /// No worker could ever start: the machine gave up (the reason says how).
    #[error("{0}")]
    GaveUp(String),
    /// The pid file cannot be put in place.
    #[error(transparent)]
    PidFile(#[from] crate::pid_file::PidFileError),
}

/// The driver. See the [module docs](self).
pub struct Driver {
    machine: Machine,
    processes: ProcessTable,
    observer: Observer,
    listeners: Vec<Listener>,
    blueprint: Blueprint,
    reloader: Option<Reloader>,
    rereads: reread::Rereads,
    /// Each live generation's notify socket; dropped when it is forgotten.
    readiness: BTreeMap<Generation, ReadinessSocket>,
    notify_dir: ReadinessDir,
    notes: mpsc::UnboundedSender<Notification>,
    notes_rx: mpsc::UnboundedReceiver<Notification>,
    lookouts: Lookouts,
    control: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    control_path: Option<PathBuf>,
    pid_file: Option<crate::pid_file::PidFile>,
    requests: mpsc::Sender<ControlRequest>,
    requests_rx: mpsc::Receiver<ControlRequest>,
    metrics: Option<std::net::TcpListener>,
    snapshots: Option<watch::Sender<Arc<Snapshot>>>,
    cost_history: Arc<CostHistory>,
    dev: Option<(DevLoop, crate::devloop::DevSettings)>,
    watcher: Option<Watcher>,
    sample_groups: watch::Sender<Groups>,
    usage: watch::Receiver<Usages>,
    started: Instant,
    interrupts: u32,
    signal_table: SignalTable,
    health: Health,
    status_lines: status_lines::StatusLines,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("machine", &self.machine)
            .field("processes", &self.processes)
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
        let (requests, requests_rx) = mpsc::channel(64);
        let (sample_groups, _) = watch::channel(Groups::default());
        let (_, usage) = watch::channel(Usages::default());
        Ok(Driver {
            machine: Machine::new(config.blueprint.settings.clone()),
            processes: ProcessTable::new(guardian),
            observer: Observer::new(config.systemd),
            listeners: config.listeners,
            blueprint: config.blueprint,
            reloader: config.reloader,
            rereads: Default::default(),
            readiness: BTreeMap::new(),
            notify_dir: ReadinessDir::new(config.runtime),
            notes,
            notes_rx,
            lookouts: Lookouts::new(),
            control_path: config.control.as_ref().map(|(_, path)| path.clone()),
            control: config.control,
            pid_file: config.pid_file,
            requests,
            requests_rx,
            metrics: config.metrics,
            snapshots: None,
            cost_history: Arc::default(),
            dev: config
                .dev
                .map(|settings| (DevLoop::new(&settings), settings)),
            watcher: None,
            sample_groups,
            usage,
            started: Instant::now(),
            interrupts: 0,
            signal_table: config.signals,
            health: Health::default(),
            status_lines: Default::default(),
        })
    }

    /// Start the first generation and supervise until shutdown is complete.
    pub async fn run(mut self) -> Result<(), DriverError> {
        let mut signals =
            Signals::install(self.signal_table.clone()).map_err(DriverError::Signals)?;
        let mut child = signal(SignalKind::child()).map_err(DriverError::Signals)?;
        if let Some(pid_file) = &mut self.pid_file {
            pid_file.publish()?;
            tracing::info!(path = %pid_file.path().display(), "pid file");
        }
        let mut group_check = interval(GROUP_CHECK_INTERVAL);
        let mut listener_check = interval(listening::CHECK_INTERVAL);
        // Pings prove that baton's own loop runs: a worker in crash
        // backoff must not get baton killed.
        let mut watchdog = self
            .observer
            .systemd()
            .watchdog_interval()
            .map(|i| interval(i / 2));
        let tasks = self.start_tasks();

        self.store_fds();
        let mut events = match &mut self.dev {
            Some((dev, settings)) => {
                let watcher = Watcher::start(settings.watch.clone())
                    .await
                    .map_err(DriverError::Watch)?;
                self.watcher = Some(watcher);
                let first = dev.begin();
                self.on_dev(first)
            }
            None => vec![Event::Start],
        };
        loop {
            events.extend(self.reap());
            if self.step_all(events) {
                break;
            }
            self.publish();
            let machine_deadline = self.machine.poll_timeout();
            let dev_deadline = self.dev.as_ref().and_then(|(d, _)| d.poll_timeout());
            events = tokio::select! {
                batch = next_batch(&mut self.watcher) => self.on_changes(batch),
                (waiting, read) = self.rereads.done() => self.on_reread(waiting, read),
                _ = sleep_until(dev_deadline) => self.dev_timeout(),
                _ = sleep_until(machine_deadline) => vec![Event::Timeout],
                _ = tick(&mut watchdog) => {
                    self.observer.tell_systemd(|s| s.watchdog());
                    Vec::new()
                }
                signal = signals.recv() => self.on_signal(&mut signals, signal),
                Some(request) = self.requests_rx.recv() => self.on_control(request),
                Some(note) = self.notes_rx.recv() => self.on_notification(note),
                event = self.lookouts.next() => vec![event],
                // Reaping follows every wake-up: a SIGCHLD may have been
                // coalesced with another signal.
                _ = child.recv() => Vec::new(),
                _ = group_check.tick() => {
                    // A tmp cleaner may have removed the notify directory.
                    let _ = self.notify_dir.repair(&mut self.readiness, &self.notes);
                    Vec::new()
                }
                _ = listener_check.tick() => self.check_listeners(Moment::Routine),
            };
        }
        // Answer whoever still waits, and let those answers be written
        // (a `stop` above all) before the runtime goes away.
        self.observer.ledger.close("baton has stopped");
        tasks.in_flight.settle(Duration::from_secs(1)).await;
        drop(tasks);
        let (timeout, force) = (self.machine.settings().drain_timeout, self.interrupts >= 2);
        escapees::stop(&mut self.processes, timeout, force).await;
        let gave_up = self.machine.gave_up().map(str::to_owned);
        self.finish();
        gave_up.map_or(Ok(()), |reason| Err(DriverError::GaveUp(reason)))
    }

    /// The servers and the sampler are tasks of their own: a slow client
    /// or a slow `/proc` never blocks this loop.
    fn start_tasks(&mut self) -> Tasks {
        let in_flight = control::InFlight::default();
        let mut aborts = Vec::new();
        if let Some((listener, _)) = self.control.take() {
            let requests = self.requests.clone();
            aborts.push(tokio::spawn(control::serve(
                listener,
                requests,
                in_flight.clone(),
            )));
        }
        if let Some(listener) = self.metrics.take() {
            let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
            self.snapshots = Some(tx);
            aborts.push(tokio::spawn(metrics::serve(listener, rx)));
        }
        let (usage, sampler) = sampling::start(self.sample_groups.subscribe());
        self.usage = usage;
        aborts.extend(sampler);
        Tasks { in_flight, aborts }
    }

    /// Feed events, and every event they cause, to the machine. Returns
    /// true once the machine says baton may exit.
    fn step_all(&mut self, events: Vec<Event>) -> bool {
        let mut queue = VecDeque::from(events);
        while let Some(event) = queue.pop_front() {
            for action in self.machine.handle(event, Instant::now()) {
                match action {
                    Action::Spawn { generation, .. } => {
                        if let Err(error) = self.spawn(generation) {
                            queue.push_back(Event::SpawnFailed { generation, error });
                        }
                    }
                    Action::Observe { generation } => {
                        if let Some(group) = self.processes.pid(generation) {
                            self.lookouts.observe(generation, group, &self.listeners);
                        }
                    }
                    Action::Drain { generation, signal } => {
                        self.processes.drain(generation, to_signal(signal))
                    }
                    Action::Quiesce { generation } => {
                        let group = self.processes.pid(generation);
                        queue.extend(self.lookouts.quiesce(generation, group, &self.listeners));
                    }
                    Action::Kill { generation } => {
                        self.processes.signal(generation, Signal::SIGKILL)
                    }
                    Action::Forget { generation } => {
                        self.processes.forget(generation);
                        self.readiness.remove(&generation);
                        self.lookouts.forget(generation);
                        queue.extend(self.listeners_after_exit(generation));
                        if let Some(suppressed) = self.status_lines.forget(generation) {
                            tracing::info!(
                                generation,
                                suppressed,
                                "worker status lines suppressed"
                            );
                        }
                    }
                    Action::Notice(notice) => {
                        if let (Notice::Starting { .. }, Some((dev, _))) = (&notice, &mut self.dev)
                        {
                            dev.on_generation_started();
                        }
                        let outcome = self.observer.observe(notice, &self.processes);
                        self.watch_reload_done(outcome);
                    }
                    Action::Exit | Action::GiveUp { .. } => return true,
                }
            }
        }
        // Observe only until ready (or failed).
        let machine = &self.machine;
        self.lookouts
            .observe_only(|g| machine.generation(g).is_some_and(|s| s.is_starting()));
        false
    }

    /// Start a generation: its notify socket, then its process. An error
    /// means no process exists.
    fn spawn(&mut self, generation: Generation) -> Result<(), String> {
        self.notify_dir
            .repair(&mut self.readiness, &self.notes)
            .map_err(|error| format!("cannot create its notify socket: {error}"))?;
        let notify = self
            .notify_dir
            .listen(generation, self.notes.clone(), self.blueprint.user.as_ref())
            .map_err(|error| format!("cannot create its notify socket: {error}"))?;
        // Whatever is bound anew here goes to this generation.
        self.check_listeners(Moment::BeforeSpawn);
        self.health.handed_to(generation, self.listeners.len());
        let sockets: Vec<(&str, _)> = self
            .listeners
            .iter()
            .map(|l| (l.name(), l.as_fd()))
            .collect();
        let mut env = self.blueprint.worker_environment();
        if self.blueprint.preload {
            let dir = self.notify_dir.dir();
            if let Some(page) = self.lookouts.page(dir, generation, &self.listeners) {
                env.push((drain_page::ENV.into(), page.into()));
            }
        }
        let request = SpawnRequest {
            command: &self.blueprint.command,
            role: Role::Worker {
                generation,
                sockets: &sockets,
                notify_socket: notify.path(),
                watchdog: self.machine.generation(generation).and_then(|g| g.watchdog),
            },
            env,
            output: None,
            user: self.blueprint.user.as_ref(),
        };
        let pid = self
            .processes
            .spawn_worker(generation, &request)
            .map_err(|error| error.to_string())?;
        tracing::info!(generation, pid, "spawned");
        self.readiness.insert(generation, notify);
        Ok(())
    }

    /// Reap, and turn what was reaped into events.
    fn reap(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for reaped in self.processes.reap() {
            match reaped {
                Reaped::Leader { generation, status } => {
                    events.push(Event::LeaderExited { generation, status })
                }
                Reaped::GroupEmpty { generation } => events.push(Event::GroupEmpty { generation }),
                Reaped::Build { pid, status } => events.extend(self.on_build_exit(pid, status)),
            }
        }
        events
    }

    /// A reload was asked for: re-read the config file, then tell the machine.
    fn request_reload(
        &mut self,
        trigger: Trigger,
        waiter: Option<oneshot::Sender<Response>>,
    ) -> Vec<Event> {
        let id = self.observer.ledger.request(trigger, waiter);
        // The machine answers a request during shutdown; reading the
        // config file for it would be wasted (and could bind sockets).
        if self.machine.shutting_down() {
            return vec![Event::ReloadRequested { id }];
        }
        self.observer.reload_requested(id, trigger);
        // A listener bound anew is handed over to the running code: an
        // automatic reload must not pick up a half-edited config file.
        if trigger == Trigger::Listener {
            return vec![Event::ReloadRequested { id }];
        }
        match &self.reloader {
            Some(reloader) => {
                self.rereads.request(reloader, id, trigger);
                Vec::new()
            }
            None => vec![Event::ReloadRequested { id }],
        }
    }

    fn on_control(&mut self, request: ControlRequest) -> Vec<Event> {
        match request.command {
            control::Command::Status => {
                let mut response = Response::ok();
                response.status = Some(Box::new(self.status()));
                let _ = request.reply.send(response);
                Vec::new()
            }
            control::Command::Reload => self.request_reload(Trigger::Ctl, Some(request.reply)),
            control::Command::Stop => {
                let _ = request.reply.send(Response::ok());
                vec![Event::ShutdownRequested]
            }
        }
    }

    fn on_notification(&mut self, note: Notification) -> Vec<Event> {
        let generation = note.generation;
        let sender = note.sender.unwrap_or(0);
        if let Some(status) = &note.status {
            let admit = self.status_lines.admit(generation, Instant::now());
            if let Some(suppressed) = admit.suppressed {
                tracing::info!(generation, suppressed, "worker status lines suppressed");
            }
            if admit.show {
                tracing::info!(generation, sender, %status, "worker status");
            }
        }
        if note.ready {
            tracing::info!(generation, sender, "READY=1 received");
        }
        if let Some(warning) = crate::preload::warning(note.unheld.as_deref(), &self.listeners) {
            tracing::warn!(generation, pid = sender, "{warning}");
        }
        let ping = note.watchdog.then_some(Event::WatchdogPing { generation });
        ping.into_iter()
            .chain(note.ready.then_some(Event::Ready { generation }))
            .collect()
    }

    /// Watched files changed.
    fn on_changes(&mut self, batch: Result<ChangeBatch, WatchError>) -> Vec<Event> {
        let batch = match batch {
            Ok(batch) => batch,
            Err(WatchError::Stopped) => {
                tracing::error!("the file watcher stopped: no more reloads on changes");
                self.watcher = None;
                return Vec::new();
            }
            Err(error) => {
                tracing::warn!(%error, "watch");
                return Vec::new();
            }
        };
        tracing::info!(changes = batch.len(), "changed: {batch}");
        let Some((dev, _)) = &mut self.dev else {
            return Vec::new();
        };
        let next = dev.on_changes(Instant::now());
        self.on_dev(next)
    }

    fn dev_timeout(&mut self) -> Vec<Event> {
        let Some((dev, _)) = &mut self.dev else {
            return Vec::new();
        };
        let next = dev.on_timeout(Instant::now());
        self.on_dev(next)
    }

    /// Carry out what the dev loop decided.
    fn on_dev(&mut self, action: DevAction) -> Vec<Event> {
        match action {
            DevAction::Wait => Vec::new(),
            DevAction::Build => {
                self.start_build();
                Vec::new()
            }
            DevAction::Start => vec![Event::Start],
            DevAction::Reload => self.request_reload(Trigger::Watch, None),
        }
    }

    fn start_build(&mut self) {
        let Some((dev, settings)) = &mut self.dev else {
            return;
        };
        let Some(command) = &settings.build else {
            return;
        };
        match build::start(&mut self.processes, command, &self.blueprint) {
            Ok(pid) => tracing::info!(pid, %command, "build started"),
            Err(error) => {
                tracing::error!(%error, "build could not start");
                dev.on_build_unstartable(Instant::now());
            }
        }
    }

    /// The build exited: reload on success, keep serving on failure.
    fn on_build_exit(&mut self, pid: i32, status: ProcessExit) -> Vec<Event> {
        let Some((dev, _)) = &mut self.dev else {
            return Vec::new();
        };
        let ok = status.success();
        if ok {
            tracing::info!(pid, "build ok");
        } else {
            let failures = dev.failures() + 1;
            match self.machine.active() {
                Some(serving) => {
                    tracing::error!(pid, %status, failures, "build failed: generation {serving} keeps serving")
                }
                None => tracing::error!(pid, %status, failures, "build failed: nothing serves yet"),
            }
        }
        let next = dev.on_build_done(ok, Instant::now());
        self.on_dev(next)
    }

    fn watch_reload_done(&mut self, outcome: WatchOutcome) {
        if let (Some(ok), Some((dev, _))) = (outcome, &mut self.dev) {
            dev.on_reload_done(ok, Instant::now());
        }
    }

    /// Push the sockets baton bound itself into systemd's fd store, so a
    /// restarted baton gets them back (inherited ones are systemd's already).
    fn store_fds(&self) {
        if !self.observer.systemd().is_enabled() {
            return;
        }
        let fds: Vec<(&str, _)> = self
            .listeners
            .iter()
            .filter(|l| !l.is_inherited())
            .map(|l| (l.name(), l.as_fd()))
            .collect();
        if !fds.is_empty() {
            self.observer.tell_systemd(|s| s.store_fds(&fds));
        }
    }

    /// What `status` answers.
    pub fn status(&self) -> Status {
        let usage = self.usage.borrow().clone();
        let costs = &usage.usage;
        let now = Instant::now();
        let unix_now = crate::status::unix_now();
        let generations = self
            .machine
            .generations()
            .map(|(generation, state)| {
                let pid = self.processes.pid(generation);
                let age = now.saturating_duration_since(state.spawned_at);
                GenerationStatus {
                    generation,
                    pid,
                    state: state.phase.name().to_owned(),
                    started_at: unix_now - age.as_secs_f64(),
                    ready_ms: state.ready_after.map(|d| d.as_millis() as u64),
                    silent: state.is_silent(),
                    usage: pid.and_then(|p| costs.get(&p)).cloned().unwrap_or_default(),
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            listeners: self.listener_statuses(),
            generations,
            reloads: self.observer.ledger.history(),
            counters: self.observer.ledger.counters.clone(),
            escaped: usage.escaped.clone(),
            guardian: self.processes.guardian(),
        }
    }

    /// Hand the metrics server a fresh snapshot (with a frame more of
    /// cost history after each sample), and the sampler the groups to measure.
    fn publish(&mut self) {
        let sample = self.usage.borrow().clone();
        self.processes.guard_escaped(&sample.escaped);
        let draining = self
            .machine
            .generations()
            .filter(|(_, s)| s.is_draining())
            .filter_map(|(g, _)| self.processes.pid(g))
            .collect();
        let all = self.processes.live_groups().map(|(_, pid)| pid).collect();
        let known = escapees::known(&self.processes);
        let wanted = Groups {
            all,
            draining,
            known,
        };
        self.sample_groups
            .send_if_modified(|groups| replace_if_changed(groups, wanted));
        if let Some(snapshots) = &self.snapshots {
            let status = self.status();
            if self.usage.has_changed().unwrap_or(false) {
                self.usage.mark_unchanged();
                Arc::make_mut(&mut self.cost_history)
                    .record(crate::status::unix_now(), &status.generations);
            }
            snapshots.send_replace(Arc::new(Snapshot {
                status,
                reload_duration: self.observer.ledger.duration.clone(),
                time_to_ready: self.observer.time_to_ready.clone(),
                history: self.cost_history.clone(),
            }));
        }
    }

    fn finish(self) {
        tracing::info!("every worker is gone: exiting");
        if let Some(path) = &self.control_path {
            let _ = std::fs::remove_file(path);
        }
        let Driver {
            processes,
            listeners,
            ..
        } = self;
        // Unix socket files baton created go with the listeners.
        drop(listeners);
        processes.finish();
    }
}

/// The tasks beside the loop; dropping this aborts them.
struct Tasks {
    in_flight: control::InFlight,
    aborts: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.aborts {
            task.abort();
        }
    }
}

fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    let changed = *slot != value;
    if changed {
        *slot = value;
    }
    changed
}

/// The machine names signals by number; nix by enum.
fn to_signal(signal: StopSignal) -> Signal {
    Signal::try_from(signal.number()).unwrap_or_else(|_| {
        tracing::warn!(%signal, "cannot send this signal: sending SIGTERM instead");
        Signal::SIGTERM
    })
}
