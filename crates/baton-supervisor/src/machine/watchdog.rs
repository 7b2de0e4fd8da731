//! The worker watchdog (sd_notify's `WATCHDOG=1`, as systemd's
//! `WatchdogSec=` asks of a service). A generation started with a
//! watchdog interval must ping within it once it is active; one that falls
//! silent is hung as far as anyone can tell, and is replaced the way a
//! reload replaces it: the new generation first, then the silent one is
//! sent its stop signal (and killed at the drain deadline if it is truly
//! hung). A replacement that fails costs nothing, as a failed reload: the
//! silent one serves on, and another replacement is tried one interval
//! later unless it pings again.

use std::time::Instant;

use super::{Generation, Machine, Notice, Phase, SpawnCause, Step};

impl Machine {
    /// `WATCHDOG=1` of `generation`: its deadline starts over.
    pub(super) fn on_watchdog_ping(&mut self, generation: Generation, now: Instant) {
        let Some(state) = self.generations.get_mut(&generation) else {
            return;
        };
        let interval = state.watchdog;
        // Before ready there is the ready deadline; after, nothing to watch.
        if let Phase::Active {
            watchdog_by,
            silent,
            ..
        } = &mut state.phase
        {
            *watchdog_by = interval.map(|interval| now + interval);
            *silent = false;
        }
    }

    /// A deadline of the active `generation` has come: if it is its
    /// watchdog deadline, replace it.
    pub(super) fn on_watchdog_due(&mut self, generation: Generation, step: &mut Step) {
        let now = step.now;
        let Some(state) = self.generations.get_mut(&generation) else {
            return;
        };
        let Some(interval) = state.watchdog else {
            return;
        };
        let Phase::Active {
            watchdog_by,
            silent,
            ..
        } = &mut state.phase
        else {
            return;
        };
        if !watchdog_by.is_some_and(|at| at <= now) {
            return;
        }
        *silent = true;
        // Come back after another interval, should the replacement fail.
        *watchdog_by = Some(now + interval);
        let starting = self.starting();
        let replacement = match (self.shutting_down, starting) {
            (true, _) => None,
            (false, Some(starting)) => Some(starting),
            (false, None) => Some(self.last_generation + 1),
        };
        step.notice(Notice::WatchdogMissed {
            generation,
            interval,
            replacement,
        });
        if !self.shutting_down && starting.is_none() {
            self.spawn_next(SpawnCause::Watchdog, Vec::new(), step);
        }
    }
}
