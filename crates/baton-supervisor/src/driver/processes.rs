//! The process table: the one owner of every pid baton started — worker
//! leaders (whose pid is also their process group id), the build step, the
//! guardian — and the one reaper.
//!
//! Spawning is a short synchronous fork/exec and reaping is `waitpid(-1)`
//! on the same task, so a child can never be reaped before its pid is in
//! the table. baton is a child subreaper: orphans of the workers become its
//! children and are reaped here too (and ignored), so no zombie is left.
//!
//! A process group id can be reused once the group is empty and its leader
//! reaped, so a group is signalled only while the table holds it, and
//! dropped from the guardian's list the moment it is found empty.
//!
//! A guardian that exits is replaced (at most once a second) and told
//! every group still alive. The groups of escaped processes (a worker's
//! `setsid` daemon) are the guardian's too, once the sampler has found
//! them.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::guardian::Guardian;
use crate::machine::{Generation, ProcessExit};
use crate::spawn::{self, SpawnError, SpawnRequest};
use crate::status::{EscapedProcess, GuardianStatus};

/// The least time between two starts of a guardian: one that dies at once
/// is not restarted in a tight loop.
const GUARDIAN_RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// One generation's process group.
#[derive(Debug)]
struct Group {
    /// The leader's pid, which is also the group id.
    pid: i32,
    leader_reaped: bool,
    empty: bool,
}

/// What a round of reaping found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reaped {
    /// A generation's leader exited.
    Leader {
        generation: Generation,
        status: ProcessExit,
    },
    /// A generation's group has no process left.
    GroupEmpty { generation: Generation },
    /// The current build step exited.
    Build { pid: i32, status: ProcessExit },
}

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct ProcessTable {
    groups: BTreeMap<Generation, Group>,
    /// The build step that counts, if one runs.
    build: Option<i32>,
    /// Builds killed for newer changes, not reaped yet.
    cancelled_builds: Vec<i32>,
    /// The live guardian, if baton runs with one.
    guardian: Option<Guardian>,
    /// Whether baton runs with a guardian (and replaces one that exits).
    guarded: bool,
    guardian_started: Instant,
    guardian_restarts: u32,
    /// The groups of escaped processes the guardian was told about.
    escaped: HashSet<i32>,
}

impl ProcessTable {
    pub fn new(guardian: Option<Guardian>) -> Self {
        ProcessTable {
            groups: BTreeMap::new(),
            build: None,
            cancelled_builds: Vec::new(),
            guarded: guardian.is_some(),
            guardian,
            guardian_started: Instant::now(),
            guardian_restarts: 0,
            escaped: HashSet::new(),
        }
    }

    /// Start a generation's leader in a process group of its own.
    pub fn spawn_worker(
        &mut self,
        generation: Generation,
        request: &SpawnRequest<'_>,
    ) -> Result<i32, SpawnError> {
        let pid = spawn::spawn(request)?;
        self.watch_group(pid);
        self.groups.insert(
            generation,
            Group {
                pid,
                leader_reaped: false,
                empty: false,
            },
        );
        Ok(pid)
    }

    /// Start the build step; a build still running is killed first (the
    /// newest change wins).
    pub fn spawn_build(&mut self, request: &SpawnRequest<'_>) -> Result<i32, SpawnError> {
        if let Some(old) = self.cancel_build() {
            tracing::info!(pid = old, "build cancelled: newer changes");
        }
        let pid = spawn::spawn(request)?;
        self.watch_group(pid);
        self.build = Some(pid);
        Ok(pid)
    }

    /// Kill the running build's group, if any; returns its pid.
    fn cancel_build(&mut self) -> Option<i32> {
        let old = self.build.take()?;
        let _ = killpg(Pid::from_raw(old), Signal::SIGKILL);
        self.cancelled_builds.push(old);
        Some(old)
    }

    /// The pid of a generation's leader, while its group is known.
    pub fn pid(&self, generation: Generation) -> Option<i32> {
        self.groups.get(&generation).map(|g| g.pid)
    }

    /// The groups that still have processes, with their generations.
    pub fn live_groups(&self) -> impl Iterator<Item = (Generation, i32)> + '_ {
        self.groups
            .iter()
            .filter(|(_, g)| !g.empty)
            .map(|(&generation, g)| (generation, g.pid))
    }

    /// Ask a generation to drain: its stop signal, then SIGCONT, as systemd
    /// does, so that a stopped worker runs and acts on it.
    pub fn drain(&self, generation: Generation, signal: Signal) {
        self.signal(generation, signal);
        self.signal(generation, Signal::SIGCONT);
    }

    /// Pids and groups of baton's own children that belong to no
    /// generation: the guardian, the builds.
    pub fn helpers(&self) -> (HashSet<i32>, HashSet<i32>) {
        let pids = self.guardian.iter().map(Guardian::pid).collect();
        let groups = self
            .build
            .iter()
            .chain(&self.cancelled_builds)
            .copied()
            .collect();
        (pids, groups)
    }

    /// The guardian, for `status`.
    pub fn guardian(&self) -> Option<GuardianStatus> {
        self.guarded.then(|| GuardianStatus {
            pid: self.guardian.as_ref().map(Guardian::pid),
            restarts: self.guardian_restarts,
        })
    }

    /// Signal a generation's whole process group, unless it is empty.
    pub fn signal(&self, generation: Generation, signal: Signal) {
        let Some(group) = self.groups.get(&generation).filter(|g| !g.empty) else {
            return;
        };
        match killpg(Pid::from_raw(group.pid), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => tracing::warn!(
                generation,
                pid = group.pid,
                %error,
                signal = signal.as_str(),
                "cannot signal the worker group"
            ),
        }
    }

    /// The machine is done with a generation.
    pub fn forget(&mut self, generation: Generation) {
        if let Some(group) = self.groups.remove(&generation)
            && !group.empty
            && let Some(guardian) = &self.guardian
        {
            guardian.forget(group.pid);
        }
    }

    /// Tell the guardian the groups of escaped processes (a `setsid`
    /// daemon's session), so that they die with the workers should baton
    /// be killed; and forget those gone. Never baton's own group, which
    /// holds what started baton (a `| tee`), nor its session leader's.
    pub fn guard_escaped(&mut self, escaped: &[EscapedProcess]) {
        let own = nix::unistd::getpgrp().as_raw();
        let session = nix::unistd::getsid(None).map_or(own, |s| s.as_raw());
        let now: HashSet<i32> = (escaped.iter())
            .map(|p| p.pgid)
            .filter(|&g| g > 1 && g != own && g != session)
            .collect();
        if let Some(guardian) = &self.guardian {
            for &gone in self.escaped.difference(&now) {
                guardian.forget(gone);
            }
            for &new in now.difference(&self.escaped) {
                guardian.add(new);
                tracing::info!(
                    pgid = new,
                    "guarding an escaped process group: the guardian kills it should baton die"
                );
            }
        }
        self.escaped = now;
    }

    fn watch_group(&self, pgid: i32) {
        if let Some(guardian) = &self.guardian {
            guardian.add(pgid);
        }
    }

    /// Reap every exited child, then find the groups that emptied.
    pub fn reap(&mut self) -> Vec<Reaped> {
        let mut found = Vec::new();
        while let Some((pid, status)) = reap_one() {
            if let Some(event) = self.on_reaped(pid, status) {
                found.push(event);
            }
        }
        // A member reaped by another member sends baton no SIGCHLD: look.
        for (&generation, group) in &mut self.groups {
            if group.leader_reaped
                && !group.empty
                && killpg(Pid::from_raw(group.pid), None) == Err(Errno::ESRCH)
            {
                group.empty = true;
                if let Some(guardian) = &self.guardian {
                    guardian.forget(group.pid);
                }
                found.push(Reaped::GroupEmpty { generation });
            }
        }
        self.keep_guardian();
        found
    }

    /// Start a new guardian if the last one exited, and tell it every
    /// group still alive.
    fn keep_guardian(&mut self) {
        if !self.guarded
            || self.guardian.is_some()
            || self.guardian_started.elapsed() < GUARDIAN_RESTART_INTERVAL
        {
            return;
        }
        self.guardian_started = Instant::now();
        match Guardian::start() {
            Ok(guardian) => {
                let live = self.groups.values().filter(|g| !g.empty).map(|g| g.pid);
                let escaped = self.escaped.iter().copied();
                for pgid in
                    (live.chain(self.build).chain(escaped)).chain(self.cancelled_builds.clone())
                {
                    guardian.add(pgid);
                }
                self.guardian_restarts += 1;
                tracing::warn!(
                    pid = guardian.pid(),
                    restarts = self.guardian_restarts,
                    "guardian replaced"
                );
                self.guardian = Some(guardian);
            }
            Err(error) => {
                tracing::error!(%error, "cannot start a new guardian: trying again in a second")
            }
        }
    }

    fn on_reaped(&mut self, pid: i32, status: ProcessExit) -> Option<Reaped> {
        if self.guardian.as_ref().is_some_and(|g| g.pid() == pid) {
            // Its pid is reaped: dropping it only closes the pipe.
            self.guardian = None;
            tracing::error!(pid, %status, "the guardian exited: replacing it");
            return None;
        }
        if let Some(i) = self.cancelled_builds.iter().position(|&p| p == pid) {
            self.cancelled_builds.swap_remove(i);
            self.forget_group(pid);
            return None;
        }
        if self.build == Some(pid) {
            self.build = None;
            self.forget_group(pid);
            return Some(Reaped::Build { pid, status });
        }
        match self.groups.iter_mut().find(|(_, g)| g.pid == pid) {
            Some((&generation, group)) => {
                group.leader_reaped = true;
                Some(Reaped::Leader { generation, status })
            }
            None => {
                tracing::debug!(pid, %status, "reaped an orphan");
                None
            }
        }
    }

    fn forget_group(&self, pgid: i32) {
        if let Some(guardian) = &self.guardian {
            guardian.forget(pgid);
        }
    }

    /// baton exits: the guardian kills what it still knows of.
    pub fn finish(self) {
        if let Some(guardian) = self.guardian {
            guardian.finish();
        }
    }
}

/// One `waitpid(-1, WNOHANG)`; `None` once no exited child is left.
fn reap_one() -> Option<(i32, ProcessExit)> {
    loop {
        return match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => Some((pid.as_raw(), ProcessExit::Code(code))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                Some((pid.as_raw(), ProcessExit::Signal(signal as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => None,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(error) => {
                tracing::warn!(%error, "waitpid failed");
                None
            }
        };
    }
}
