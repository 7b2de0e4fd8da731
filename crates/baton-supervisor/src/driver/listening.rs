//! Keeping the listeners listening: the driver checks each one before
//! every spawn, after a generation is gone and once a second, repairs what
//! a worker broke (see [`crate::listeners::Fault`]), names the generation
//! that held it, and hands the repaired socket to a new generation through
//! an ordinary reload (trigger `listener`).
//!
//! A new generation follows every repair, in place too: the generations
//! that saw their socket close may not serve it again. tokio, for one,
//! keeps the hang-up (`EPOLLHUP`) of a registered socket for good, so a
//! tokio worker accepts on a revived listener in a busy loop that starves
//! the connections it takes. A fresh process registers it afresh.

use std::time::Duration;

use super::Driver;
use crate::listeners::{Fault, Repaired};
use crate::machine::{Event, Generation};
use crate::status::{ListenerHealth, ListenerStatus, Trigger};

/// How often the listeners are checked when nothing else asks.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// When a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Moment {
    /// Right before a generation is spawned: it gets whatever is
    /// repaired, so no reload is needed for it.
    BeforeSpawn,
    /// After a generation is gone, or on the timer.
    Routine,
}

/// What the driver knows of each listener's health, by index.
#[derive(Debug, Default)]
pub(super) struct Health {
    slots: Vec<Slot>,
    /// Generations gone since the last check: one of them may have broken
    /// a listener on its way out.
    gone: Vec<Generation>,
}

#[derive(Debug, Default, Clone)]
struct Slot {
    /// The fault last reported, so it is reported once.
    fault: Option<Fault>,
    /// Why it could not be repaired, while it cannot.
    problem: Option<String>,
    repairs: u64,
    /// The first generation handed the current socket (`None` until one is).
    since: Option<Generation>,
}

impl Health {
    fn slot(&mut self, index: usize) -> &mut Slot {
        if self.slots.len() <= index {
            self.slots.resize(index + 1, Slot::default());
        }
        &mut self.slots[index]
    }

    /// `generation` is being spawned with the current sockets.
    pub(super) fn handed_to(&mut self, generation: Generation, listeners: usize) {
        for index in 0..listeners {
            self.slot(index).since.get_or_insert(generation);
        }
    }
}

impl Driver {
    /// `generation` is gone: it may have broken a listener on its way out.
    pub(super) fn listeners_after_exit(&mut self, generation: Generation) -> Vec<Event> {
        self.health.gone.push(generation);
        self.check_listeners(Moment::Routine)
    }

    /// The listeners as `status` shows them, in fd order.
    pub(super) fn listener_statuses(&self) -> Vec<ListenerStatus> {
        let slots = &self.health.slots;
        self.listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                let slot = slots.get(index).cloned().unwrap_or_default();
                ListenerStatus {
                    name: listener.name().to_owned(),
                    address: listener.local_address().to_owned(),
                    backlog: listener.backlog(),
                    health: match (listener.is_checked(), &slot.problem) {
                        (false, _) => ListenerHealth::Unchecked,
                        (true, Some(_)) => ListenerHealth::Broken,
                        (true, None) => ListenerHealth::Ok,
                    },
                    problem: slot.problem,
                    repairs: slot.repairs,
                }
            })
            .collect()
    }

    /// Check every listener and repair what is broken; returns a reload
    /// request when one was repaired outside a spawn.
    pub(super) fn check_listeners(&mut self, moment: Moment) -> Vec<Event> {
        let mut repaired = false;
        for index in 0..self.listeners.len() {
            let Some(fault) = self.listeners[index].fault() else {
                let slot = self.health.slot(index);
                slot.fault = None;
                slot.problem = None;
                continue;
            };
            if self.health.slot(index).fault.as_ref() != Some(&fault) {
                self.report_fault(index, &fault);
            }
            repaired |= self.repair(index, fault);
        }
        self.health.gone.clear();
        if repaired && moment == Moment::Routine && !self.machine.shutting_down() {
            return self.request_reload(Trigger::Listener, None);
        }
        Vec::new()
    }

    /// One warning per fault, naming the generations that held the socket
    /// and the newest of them, the likeliest to have broken it.
    fn report_fault(&mut self, index: usize, fault: &Fault) {
        let since = self.health.slot(index).since.unwrap_or(Generation::MAX);
        let mut held_by: Vec<Generation> = self
            .machine
            .generations()
            .map(|(g, _)| g)
            .chain(self.health.gone.iter().copied())
            .filter(|&g| g >= since)
            .collect();
        held_by.sort_unstable();
        held_by.dedup();
        let generation = held_by.last().copied().unwrap_or(0);
        let held_by = held_by
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let listener = &self.listeners[index];
        tracing::warn!(
            name = %listener.name(),
            addr = %listener.local_address(),
            generation,
            held_by,
            "listener {fault}: repairing it"
        );
        self.health.slot(index).fault = Some(fault.clone());
    }

    /// Repair the listener at `index`; true if it was.
    fn repair(&mut self, index: usize, fault: Fault) -> bool {
        let bind = self.blueprint.bind;
        let listener = &self.listeners[index];
        let name = listener.name().to_owned();
        let addr = listener.local_address().to_owned();
        match listener.repair(&fault, bind) {
            Ok(Repaired::InPlace) => {
                tracing::info!(%name, %addr, "listener revived in place: a new generation takes it over");
                let slot = self.health.slot(index);
                slot.repairs += 1;
                slot.problem = None;
                slot.fault = None;
                true
            }
            Ok(Repaired::Anew(new)) => {
                tracing::warn!(%name, %addr, "listener bound anew: a new generation gets it");
                // The same index: workers find each socket at the same fd.
                let mut old = std::mem::replace(&mut self.listeners[index], new);
                old.disown_file();
                drop(old);
                self.restore_fd(index);
                let slot = self.health.slot(index);
                slot.repairs += 1;
                slot.problem = None;
                slot.fault = None;
                slot.since = None;
                true
            }
            Err(error) => {
                let problem = format!("{fault}: {error}");
                let slot = self.health.slot(index);
                if slot.problem.as_deref() != Some(&problem) {
                    tracing::error!(%name, %addr, %error, "cannot repair the listener; trying again every second");
                }
                slot.problem = Some(problem);
                false
            }
        }
    }

    /// Put a socket bound anew in systemd's file descriptor store in
    /// place of the broken one, so a restarted baton does not get that.
    fn restore_fd(&self, index: usize) {
        use std::os::fd::AsFd;
        if !self.observer.systemd().is_enabled() {
            return;
        }
        let listener = &self.listeners[index];
        let name = listener.name();
        self.observer.tell_systemd(|s| {
            s.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))?;
            s.store_fds(&[(name, listener.as_fd())])
        });
    }
}
