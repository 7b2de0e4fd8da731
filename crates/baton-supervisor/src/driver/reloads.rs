//! The reload ledger: ids, history, counters and the `ctl reload` callers
//! waiting for an outcome.
//!
//! A reload request gets an id at once. It is *unassigned* until the next
//! generation is spawned; every request made before that spawn (those that
//! were coalesced while another reload ran) is answered by that one
//! generation: it is the first to see all their changes.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::control::Response;
use crate::machine::Generation;
use crate::metrics::Histogram;
use crate::status::{Counters, HISTORY, Outcome, ReloadRecord, Trigger, unix_now};

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct Reloads {
    next_id: u64,
    history: VecDeque<ReloadRecord>,
    unassigned: Vec<u64>,
    started: HashMap<u64, Instant>,
    waiters: HashMap<u64, Vec<oneshot::Sender<Response>>>,
    /// The counters `status` reports.
    pub counters: Counters,
    /// Request to completion of successful reloads.
    pub duration: Histogram,
}

impl Reloads {
    /// Record a request; `waiter` (a `ctl reload`) gets the outcome.
    pub fn request(&mut self, trigger: Trigger, waiter: Option<oneshot::Sender<Response>>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.history.push_back(ReloadRecord {
            id,
            trigger,
            requested_at: unix_now(),
            outcome: Outcome::Pending,
            generation: None,
            previous: None,
            reason: None,
            ready_ms: None,
            drain_ms: None,
            previous_exit: None,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.unassigned.push(id);
        self.started.insert(id, Instant::now());
        if let Some(waiter) = waiter {
            self.waiters.entry(id).or_default().push(waiter);
        }
        id
    }

    /// A generation was spawned: the waiting requests are its. Returns
    /// false when none waited (the first start or a crash restart).
    pub fn on_spawn(&mut self, generation: Generation) -> bool {
        self.counters.backoff_ms = None;
        let ids = std::mem::take(&mut self.unassigned);
        for id in &ids {
            if let Some(record) = self.record(*id) {
                record.generation = Some(generation);
            }
        }
        !ids.is_empty()
    }

    /// A generation became active. Returns the reloads it completed.
    pub fn on_ready(
        &mut self,
        generation: Generation,
        previous: Option<Generation>,
        ready: Duration,
    ) -> Vec<ReloadRecord> {
        let done = self.finish(generation, |record| {
            record.outcome = Outcome::Ok;
            record.previous = previous;
            record.ready_ms = Some(ready.as_millis() as u64);
        });
        if !done.is_empty() {
            self.counters.reloads_ok += 1;
        }
        for record in &done {
            if let Some(started) = self.started.remove(&record.id) {
                self.duration.observe(started.elapsed());
            }
        }
        done
    }

    /// A generation failed to start. Returns the reloads that failed.
    pub fn on_start_failed(&mut self, generation: Generation, reason: &str) -> Vec<ReloadRecord> {
        let done = self.finish(generation, |record| {
            record.outcome = Outcome::Failed;
            record.reason = Some(reason.to_owned());
        });
        if !done.is_empty() {
            self.counters.reloads_failed += 1;
        }
        done
    }

    /// Fail the reload `id` before any generation started (a config file
    /// that does not parse, a listener that cannot be bound).
    pub fn fail(&mut self, id: u64, reason: &str) -> Option<ReloadRecord> {
        self.counters.reloads_failed += 1;
        self.refuse(id, reason)
    }

    /// Every unassigned request is refused (baton is shutting down); a
    /// refusal is not counted as a failed reload.
    pub fn fail_unassigned(&mut self, reason: &str) {
        for id in std::mem::take(&mut self.unassigned) {
            self.refuse(id, reason);
        }
    }

    fn refuse(&mut self, id: u64, reason: &str) -> Option<ReloadRecord> {
        self.unassigned.retain(|&i| i != id);
        self.started.remove(&id);
        let record = self.record(id)?;
        record.outcome = Outcome::Failed;
        record.reason = Some(reason.to_owned());
        let record = record.clone();
        self.answer(&record);
        Some(record)
    }

    /// A generation is gone: note how the reloads that replaced it ended.
    pub fn on_exited(&mut self, generation: Generation, exit: &str, drain: Option<Duration>) {
        for record in self.history.iter_mut().rev() {
            if record.previous == Some(generation) && record.outcome == Outcome::Ok {
                record.previous_exit = Some(exit.to_owned());
                record.drain_ms = drain.map(|d| d.as_millis() as u64);
            }
        }
    }

    /// Answer every caller still waiting (baton exits).
    pub fn close(&mut self, reason: &str) {
        for (_, waiters) in self.waiters.drain() {
            for waiter in waiters {
                let _ = waiter.send(Response::error(reason));
            }
        }
    }

    /// Whether requests wait for a generation not spawned yet.
    pub fn queued(&self) -> bool {
        !self.unassigned.is_empty()
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history.iter().cloned().collect()
    }

    fn record(&mut self, id: u64) -> Option<&mut ReloadRecord> {
        self.history.iter_mut().find(|r| r.id == id)
    }

    fn finish(
        &mut self,
        generation: Generation,
        update: impl Fn(&mut ReloadRecord),
    ) -> Vec<ReloadRecord> {
        let mut done = Vec::new();
        for record in self.history.iter_mut() {
            if record.generation == Some(generation) && record.outcome == Outcome::Pending {
                update(record);
                done.push(record.clone());
            }
        }
        for record in &done {
            self.answer(record);
        }
        done
    }

    fn answer(&mut self, record: &ReloadRecord) {
        for waiter in self.waiters.remove(&record.id).unwrap_or_default() {
            let mut response = match record.outcome {
                Outcome::Ok => Response::ok(),
                _ => Response::error(format!(
                    "reload failed: {}",
                    record.reason.as_deref().unwrap_or("unknown")
                )),
            };
            response.reload = Some(record.clone());
            let _ = waiter.send(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesced_requests_share_the_next_generation() {
        let mut reloads = Reloads::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        reloads.request(Trigger::Ctl, Some(tx1));
        assert!(reloads.on_spawn(2));
        // Arrives while generation 2 starts: waits for generation 3.
        reloads.request(Trigger::Ctl, Some(tx2));
        let done = reloads.on_ready(2, Some(1), Duration::from_millis(5));
        assert_eq!(done.len(), 1);
        assert!(rx1.try_recv().unwrap().ok);
        assert!(rx2.try_recv().is_err(), "still waiting");
        assert!(reloads.on_spawn(3));
        reloads.on_start_failed(3, "not ready within 2s");
        let response = rx2.try_recv().unwrap();
        assert!(!response.ok);
        assert_eq!(response.reload.unwrap().generation, Some(3));
        assert_eq!(reloads.counters.reloads_ok, 1);
        assert_eq!(reloads.counters.reloads_failed, 1);
    }

    #[test]
    fn a_restart_without_request_is_not_a_reload() {
        let mut reloads = Reloads::default();
        assert!(!reloads.on_spawn(1));
        assert!(reloads.on_ready(1, None, Duration::ZERO).is_empty());
        assert_eq!(reloads.counters.reloads_ok, 0);
    }

    #[test]
    fn the_drain_outcome_lands_on_the_reload() {
        let mut reloads = Reloads::default();
        reloads.request(Trigger::Signal, None);
        reloads.on_spawn(2);
        reloads.on_ready(2, Some(1), Duration::from_millis(7));
        reloads.on_exited(1, "exit code 0", Some(Duration::from_millis(40)));
        let record = &reloads.history()[0];
        assert_eq!(record.previous_exit.as_deref(), Some("exit code 0"));
        assert_eq!(record.drain_ms, Some(40));
        assert_eq!(record.ready_ms, Some(7));
    }

    #[test]
    fn history_is_bounded() {
        let mut reloads = Reloads::default();
        for _ in 0..HISTORY + 10 {
            let id = reloads.request(Trigger::Watch, None);
            reloads.fail(id, "config");
        }
        assert_eq!(reloads.history().len(), HISTORY);
        assert_eq!(reloads.history()[0].id, 11);
    }
}
