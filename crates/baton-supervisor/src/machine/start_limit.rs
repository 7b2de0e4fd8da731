//! The start limit (systemd's `StartLimitBurst`). Until a first generation
//! has been ready, `start_limit` failed starts in a row mean the worker
//! cannot start at all — a wrong command, a missing file, a port it cannot
//! use — and restarting it for ever would only hide that: the machine
//! gives up, shuts down, and baton exits with a failure that says why.
//! Once one generation was ready, the service has worked: failures are
//! only backed off, and clients wait in the accept queue meanwhile.

use super::{Failure, Machine, Notice, Step};

impl Machine {
    /// Count a start that failed with `failure`; returns true if that was
    /// one too many and the machine gave up (it is shutting down now).
    pub(super) fn give_up_after(&mut self, failure: &Failure, step: &mut Step) -> bool {
        if self.ever_ready {
            return false;
        }
        self.failed_starts += 1;
        if self.failed_starts < self.settings.start_limit.get() {
            return false;
        }
        let failed_starts = self.failed_starts;
        self.gave_up = Some(format!(
            "giving up: {failed_starts} starts in a row failed and no worker was ever ready (last: {failure})"
        ));
        step.notice(Notice::GivingUp {
            failed_starts,
            failure: failure.clone(),
        });
        self.on_shutdown(false, step);
        true
    }

    /// Why the machine gave up, once it has.
    pub fn gave_up(&self) -> Option<&str> {
        self.gave_up.as_deref()
    }
}
