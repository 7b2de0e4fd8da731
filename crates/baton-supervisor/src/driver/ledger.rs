//! The reload ledger: ids, history, counters and the `ctl reload` callers
//! waiting for an outcome. It records what the machine decided (which
//! generation answers which request, how it ended) and decides nothing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::control::{ErrorCode, Response};
use crate::machine::{Generation, ReloadId};
use crate::metrics::Histogram;
use crate::status::{Counters, HISTORY, Outcome, ReloadRecord, Trigger, unix_now};

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct ReloadLedger {
    next_id: ReloadId,
    history: VecDeque<ReloadRecord>,
    started: HashMap<ReloadId, Instant>,
    waiters: HashMap<ReloadId, Vec<oneshot::Sender<Response>>>,
    /// The counters `status` reports.
    pub counters: Counters,
    /// Request to completion of successful reloads.
    pub duration: Histogram,
}

impl ReloadLedger {
    /// Record a request; `waiter` (a `ctl reload`) gets the outcome.
    pub fn request(
        &mut self,
        trigger: Trigger,
        waiter: Option<oneshot::Sender<Response>>,
    ) -> ReloadId {
        self.next_id += 1;
        let id = self.next_id;
        self.history.push_back(ReloadRecord {
            id,
            trigger,
            requested_at: unix_now(),
            spawned_at: None,
            finished_at: None,
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
        self.started.insert(id, Instant::now());
        if let Some(waiter) = waiter {
            self.waiters.entry(id).or_default().push(waiter);
        }
        id
    }

    /// The machine started `generation` to answer `ids`.
    pub fn assign(&mut self, generation: Generation, ids: &[ReloadId]) {
        for &id in ids {
            if let Some(record) = self.record(id) {
                record.generation = Some(generation);
                record.spawned_at = Some(unix_now());
            }
        }
    }

    /// `generation` became active and completed `ids`. Returns their records.
    pub fn complete(
        &mut self,
        ids: &[ReloadId],
        previous: Option<Generation>,
        ready: Duration,
    ) -> Vec<ReloadRecord> {
        let done = self.finish(ids, ErrorCode::ReloadFailed, |record| {
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

    /// The reloads `ids` failed (with the generation that answered them, or
    /// before one was started: a config file that does not parse, a
    /// listener that cannot be bound). Counted once per failed attempt.
    pub fn fail(&mut self, ids: &[ReloadId], reason: &str) -> Vec<ReloadRecord> {
        let done = self.finish(ids, ErrorCode::ReloadFailed, |record| {
            record.outcome = Outcome::Failed;
            record.reason = Some(reason.to_owned());
        });
        if !done.is_empty() {
            self.counters.reloads_failed += 1;
        }
        self.forget_start(ids);
        done
    }

    /// The reloads `ids` will never run (baton is shutting down); a
    /// refusal is not counted as a failed reload.
    pub fn cancel(&mut self, ids: &[ReloadId], reason: &str) {
        self.finish(ids, ErrorCode::ShuttingDown, |record| {
            record.outcome = Outcome::Failed;
            record.reason = Some(reason.to_owned());
        });
        self.forget_start(ids);
    }

    fn forget_start(&mut self, ids: &[ReloadId]) {
        for id in ids {
            self.started.remove(id);
        }
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
                let _ = waiter.send(Response::error(ErrorCode::ShuttingDown, reason));
            }
        }
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history.iter().cloned().collect()
    }

    fn record(&mut self, id: ReloadId) -> Option<&mut ReloadRecord> {
        self.history.iter_mut().find(|r| r.id == id)
    }

    /// Update the pending records of `ids` and answer their waiters; a
    /// failure is answered with `code`.
    fn finish(
        &mut self,
        ids: &[ReloadId],
        code: ErrorCode,
        update: impl Fn(&mut ReloadRecord),
    ) -> Vec<ReloadRecord> {
        let mut done = Vec::new();
        for &id in ids {
            if let Some(record) = self.record(id)
                && record.outcome == Outcome::Pending
            {
                update(record);
                record.finished_at = Some(unix_now());
                done.push(record.clone());
            }
        }
        for record in &done {
            self.answer(record, code);
        }
        done
    }

    fn answer(&mut self, record: &ReloadRecord, code: ErrorCode) {
        for waiter in self.waiters.remove(&record.id).unwrap_or_default() {
            let mut response = match record.outcome {
                Outcome::Ok => Response::ok(),
                _ => Response::error(
                    code,
                    format!(
                        "reload failed: {}",
                        record.reason.as_deref().unwrap_or("unknown")
                    ),
                ),
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
    fn requests_answered_by_one_generation_share_it() {
        let mut ledger = ReloadLedger::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let first = ledger.request(Trigger::Ctl, Some(tx1));
        ledger.assign(2, &[first]);
        let second = ledger.request(Trigger::Ctl, Some(tx2));
        let done = ledger.complete(&[first], Some(1), Duration::from_millis(5));
        assert_eq!(done.len(), 1);
        assert!(rx1.try_recv().unwrap().ok);
        assert!(rx2.try_recv().is_err(), "still waiting");
        ledger.assign(3, &[second]);
        ledger.fail(&[second], "not ready within 2s");
        let response = rx2.try_recv().unwrap();
        assert!(!response.ok);
        assert_eq!(response.code, Some(ErrorCode::ReloadFailed));
        assert_eq!(response.reload.unwrap().generation, Some(3));
        assert_eq!(ledger.counters.reloads_ok, 1);
        assert_eq!(ledger.counters.reloads_failed, 1);
    }

    #[test]
    fn a_start_without_request_completes_nothing() {
        let mut ledger = ReloadLedger::default();
        assert!(ledger.complete(&[], None, Duration::ZERO).is_empty());
        assert_eq!(ledger.counters.reloads_ok, 0);
    }

    #[test]
    fn a_cancelled_reload_is_answered_but_not_counted() {
        let mut ledger = ReloadLedger::default();
        let (tx, mut rx) = oneshot::channel();
        let id = ledger.request(Trigger::Ctl, Some(tx));
        ledger.cancel(&[id], "baton is shutting down");
        let response = rx.try_recv().unwrap();
        assert!(!response.ok);
        assert_eq!(response.code, Some(ErrorCode::ShuttingDown));
        assert_eq!(ledger.counters.reloads_failed, 0);
    }

    #[test]
    fn the_drain_outcome_lands_on_the_reload() {
        let mut ledger = ReloadLedger::default();
        let id = ledger.request(Trigger::Signal, None);
        ledger.assign(2, &[id]);
        ledger.complete(&[id], Some(1), Duration::from_millis(7));
        ledger.on_exited(1, "exit code 0", Some(Duration::from_millis(40)));
        let record = &ledger.history()[0];
        assert_eq!(record.previous_exit.as_deref(), Some("exit code 0"));
        assert_eq!(record.drain_ms, Some(40));
        assert_eq!(record.ready_ms, Some(7));
        let spawned = record.spawned_at.expect("stamped when assigned");
        let finished = record.finished_at.expect("stamped when complete");
        assert!(
            record.requested_at <= spawned && spawned <= finished,
            "{record:?}"
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut ledger = ReloadLedger::default();
        for _ in 0..HISTORY + 10 {
            let id = ledger.request(Trigger::Watch, None);
            ledger.fail(&[id], "config");
        }
        assert_eq!(ledger.history().len(), HISTORY);
        assert_eq!(ledger.history()[0].id, 11);
    }
}
