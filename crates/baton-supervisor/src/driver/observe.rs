//! What baton says about the machine's notices: one log line per
//! transition, systemd's status and reload answers, the reload ledger and
//! the time-to-ready histogram. Observers record; none of them changes
//! what the machine decides.

use std::time::Duration;

use super::ledger::ReloadLedger;
use super::processes::ProcessTable;
use crate::machine::{Generation, Notice, ReloadId};
use crate::metrics::Histogram;
use crate::status::{ReloadRecord, Trigger};
use crate::systemd::{SystemdError, SystemdNotifier};

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct Observer {
    pub ledger: ReloadLedger,
    pub time_to_ready: Histogram,
    systemd: SystemdNotifier,
    /// READY=1 has gone to systemd (the first generation served).
    announced_ready: bool,
}

/// How a watch-triggered reload ended, for the dev loop's backoff.
pub(super) type WatchOutcome = Option<bool>;

impl Observer {
    pub fn new(systemd: SystemdNotifier) -> Self {
        Observer {
            ledger: ReloadLedger::default(),
            time_to_ready: Histogram::default(),
            systemd,
            announced_ready: false,
        }
    }

    pub fn systemd(&self) -> &SystemdNotifier {
        &self.systemd
    }

    /// Tell systemd something; a failure is logged, never fatal.
    pub fn tell_systemd(&self, message: impl FnOnce(&SystemdNotifier) -> Result<(), SystemdError>) {
        if let Err(error) = message(&self.systemd) {
            tracing::warn!(%error, "cannot notify systemd");
        }
    }

    /// A reload was asked for and goes to the machine.
    pub fn reload_requested(&self, id: ReloadId, trigger: Trigger) {
        self.tell_systemd(|s| s.reloading(&format!("reload {id} ({trigger}) started")));
    }

    /// A reload failed before the machine saw it (the config file, a new
    /// listener).
    pub fn reload_rejected(
        &mut self,
        id: ReloadId,
        trigger: Trigger,
        reason: &str,
    ) -> WatchOutcome {
        self.ledger.fail(&[id], reason);
        self.tell_systemd(|s| s.reload_done(false, reason));
        tracing::error!(reload = id, %trigger, result = %"failed", %reason, "reload");
        (trigger == Trigger::Watch).then_some(false)
    }

    /// Record and tell one notice. Returns how a watch-triggered reload
    /// ended, if this notice ended one.
    pub fn observe(&mut self, notice: Notice, processes: &ProcessTable) -> WatchOutcome {
        let pid_of = |generation: Generation| processes.pid(generation).unwrap_or(0);
        match notice {
            Notice::Starting {
                generation,
                cause,
                reloads,
            } => {
                self.ledger.counters.backoff_ms = None;
                if cause == crate::machine::SpawnCause::Restart {
                    self.ledger.counters.restarts += 1;
                }
                self.ledger.assign(generation, &reloads);
                None
            }
            Notice::Ready {
                generation,
                previous,
                ready_after,
                reloads,
                reload_follows,
            } => {
                let pid = pid_of(generation);
                self.time_to_ready.observe(ready_after);
                let completed = self.ledger.complete(&reloads, previous, ready_after);
                let serving = format!("generation {generation} (pid {pid}) serving");
                if !self.announced_ready {
                    self.announced_ready = true;
                    self.tell_systemd(|s| s.ready(&serving));
                } else if completed.is_empty() || reload_follows {
                    // READY=1 would end systemd's reload while the one it
                    // asked for (coalesced) has not run yet.
                    self.tell_systemd(|s| s.status(&serving));
                } else {
                    self.tell_systemd(|s| s.reload_done(true, &serving));
                }
                let ready_ms = ready_after.as_millis() as u64;
                for record in &completed {
                    tracing::info!(
                        reload = record.id,
                        trigger = %record.trigger,
                        result = %"ok",
                        generation,
                        pid,
                        previous = previous.unwrap_or(0),
                        ready_ms,
                        "reload"
                    )
                }
                match previous {
                    Some(previous) => tracing::info!(
                        generation,
                        pid,
                        ready_ms,
                        previous,
                        previous_pid = pid_of(previous),
                        "reload complete: ready"
                    ),
                    None => tracing::info!(generation, pid, ready_ms, "ready"),
                }
                watch_outcome(&completed, true)
            }
            Notice::StartFailed {
                generation,
                failure,
                active,
                reloads,
                reload_follows,
            } => {
                let pid = pid_of(generation);
                let reason = failure.to_string();
                let failed = self.ledger.fail(&reloads, &reason);
                if !failed.is_empty() {
                    let why = format!("generation {generation}: {reason}");
                    if reload_follows {
                        self.tell_systemd(|s| s.status(&format!("reload failed: {why}")));
                    } else {
                        self.tell_systemd(|s| s.reload_done(false, &why));
                    }
                }
                for record in &failed {
                    tracing::error!(
                        reload = record.id,
                        trigger = %record.trigger,
                        result = %"failed",
                        generation,
                        pid,
                        %reason,
                        "reload"
                    )
                }
                match active {
                    Some(active) => tracing::error!(
                        generation,
                        pid,
                        %reason,
                        active,
                        "reload failed: generation {active} keeps serving"
                    ),
                    None => tracing::error!(generation, pid, %reason, "start failed"),
                }
                watch_outcome(&failed, false)
            }
            Notice::ReloadCoalesced { id } => {
                tracing::info!(
                    reload = id,
                    "reload requested during a reload: one more will follow"
                );
                None
            }
            Notice::ReloadsCancelled { reloads } => {
                self.ledger.cancel(&reloads, "baton is shutting down");
                for id in reloads {
                    tracing::info!(reload = id, "reload ignored: shutting down");
                }
                None
            }
            Notice::Crashed { generation, status } => {
                self.ledger.counters.crashes += 1;
                let pid = pid_of(generation);
                let text =
                    format!("generation {generation} (pid {pid}) crashed ({status}); restarting");
                self.tell_systemd(|s| s.status(&text));
                tracing::error!(generation, pid, %status, "crashed");
                None
            }
            Notice::RestartScheduled { delay, crashes } => {
                self.ledger.counters.backoff_ms = Some(delay.as_millis() as u64);
                let text = format!(
                    "no worker serving: restart in {} ms after {crashes} crashes in a row",
                    delay.as_millis()
                );
                self.tell_systemd(|s| s.status(&text));
                // u64: tracing's JSON writes a u128 as a string.
                let delay_ms = delay.as_millis() as u64;
                tracing::warn!(delay_ms, crashes, "restart scheduled");
                None
            }
            Notice::WatchdogMissed {
                generation,
                interval,
                replacement,
            } => {
                let pid = pid_of(generation);
                let interval_ms = interval.as_millis() as u64;
                match replacement {
                    Some(replacement) => {
                        let text = format!(
                            "generation {generation} (pid {pid}) sent no WATCHDOG=1 within {interval_ms} ms: replacing it"
                        );
                        self.tell_systemd(|s| s.status(&text));
                        tracing::warn!(
                            generation,
                            pid,
                            interval_ms,
                            replacement,
                            "watchdog missed: replacing it"
                        );
                    }
                    None => tracing::warn!(generation, pid, interval_ms, "watchdog missed"),
                }
                None
            }
            Notice::GivingUp {
                failed_starts,
                failure,
            } => {
                let text = format!("giving up: {failed_starts} starts in a row failed");
                self.tell_systemd(|s| s.status(&text));
                tracing::error!(failed_starts, last = %failure, "giving up: no worker was ever ready");
                None
            }
            Notice::Draining { generation } => {
                tracing::info!(generation, pid = pid_of(generation), "draining");
                None
            }
            Notice::QuiesceCutShort { generation, waited } => {
                tracing::warn!(
                    generation,
                    pid = pid_of(generation),
                    waited_ms = waited.as_millis() as u64,
                    "still holds connections (or a socket the preload library could not take back): sending its stop signal now"
                );
                None
            }
            Notice::DrainTimedOut { generation } => {
                let pid = pid_of(generation);
                tracing::warn!(
                    generation,
                    pid,
                    "drain timed out: killing its process group"
                );
                None
            }
            Notice::Evicted {
                generation,
                max_draining,
            } => {
                tracing::warn!(
                    generation,
                    pid = pid_of(generation),
                    max_draining,
                    "too many generations draining: killing the oldest"
                );
                None
            }
            Notice::Exited {
                generation,
                status,
                drained_in,
            } => {
                let pid = pid_of(generation);
                let drain_ms = drained_in.unwrap_or(Duration::ZERO).as_millis() as u64;
                let status = status.map_or_else(|| "never started".to_owned(), |s| s.to_string());
                self.ledger.on_exited(generation, &status, drained_in);
                tracing::info!(generation, pid, %status, drain_ms, "exited");
                None
            }
            Notice::ShuttingDown { force } => {
                self.tell_systemd(|s| s.stopping("draining every generation"));
                tracing::info!(force, "shutting down");
                None
            }
        }
    }
}

/// A watch-triggered reload among `records` ended with `ok`.
fn watch_outcome(records: &[ReloadRecord], ok: bool) -> WatchOutcome {
    records
        .iter()
        .any(|r| r.trigger == Trigger::Watch)
        .then_some(ok)
}
