//! The driver's side of the [signal table](crate::signals): turn each
//! signal baton receives into events, forward it to the active
//! generation's leader, or count and ignore it.

use super::Driver;
use crate::machine::Event;
use crate::signals::{self, SignalAction, Signals};
use crate::status::Trigger;

impl Driver {
    /// What `signal` asks of baton.
    pub(super) fn on_signal(&mut self, signals: &mut Signals, signal: i32) -> Vec<Event> {
        match signals.action(signal) {
            SignalAction::Reload => self.request_reload(Trigger::Signal, None),
            SignalAction::Stop => vec![Event::ShutdownRequested],
            SignalAction::Interrupt => {
                self.interrupts += 1;
                vec![if self.interrupts == 1 {
                    Event::ShutdownRequested
                } else {
                    Event::ForceShutdown
                }]
            }
            SignalAction::Forward => {
                self.forward(signal);
                Vec::new()
            }
            SignalAction::Ignore => {
                if let Some(count) = signals.count_ignored(signal) {
                    tracing::warn!(
                        signal = %signals::name(signal),
                        count,
                        "signal ignored: it means nothing to baton (logged at the 1st, 10th, 100th, …)"
                    );
                }
                Vec::new()
            }
        }
    }

    /// Send `signal` to the active generation's leader only: the worker's
    /// own business (USR1 reopens logs in many servers).
    fn forward(&self, signal: i32) {
        let name = signals::name(signal);
        let Some((generation, pid)) = self
            .machine
            .active()
            .and_then(|g| Some((g, self.processes.pid(g)?)))
        else {
            tracing::warn!(signal = %name, "signal not forwarded: no generation is active");
            return;
        };
        // By number: nix has no names for the real-time signals.
        // SAFETY: kill has no memory effects.
        let sent = match unsafe { libc::kill(pid, signal) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        };
        match sent {
            Ok(()) => tracing::info!(generation, pid, signal = %name, "signal forwarded"),
            Err(error) => {
                tracing::warn!(generation, pid, signal = %name, %error, "cannot forward the signal")
            }
        }
    }
}
