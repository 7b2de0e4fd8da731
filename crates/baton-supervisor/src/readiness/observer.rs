//! The thread that watches one starting generation under `--ready auto`:
//! it looks at the generation's processes every [`INTERVAL`] until one
//! waits on a handed socket, and tells what it saw. It runs off the event
//! loop (reading `/proc` of a busy machine takes milliseconds) and stops
//! when its [`Observation`] is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::kernel::{self, HandedSockets};
use crate::machine::{Event, Generation};

/// How often the processes are looked at.
pub const INTERVAL: Duration = Duration::from_millis(25);

/// Every this many looks, also say why a generation does not wait yet
/// (reading the network tables costs more than the waiting check).
const EXPLAIN_EVERY: u32 = 20;

/// What the observer of a generation saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The generation.
    pub generation: Generation,
    /// The process group it looked at.
    pub group: i32,
    /// Whether a process waits on a handed socket (the last message, then).
    pub waiting: bool,
    /// What it saw, in words.
    pub seen: String,
}

impl Seen {
    /// Log it, and make it the machine's event.
    pub fn into_event(self) -> Event {
        let Seen {
            generation,
            group,
            waiting,
            seen,
        } = self;
        if waiting {
            tracing::info!(generation, pid = group, %seen, "waits for connections");
        } else {
            tracing::info!(generation, pid = group, %seen, "not waiting yet");
        }
        Event::Observed {
            generation,
            waiting,
            seen,
        }
    }
}

/// A running observation; dropping it stops the thread within one of its
/// rounds (this one's, or baton's drain watcher's: `crate::quiesce`).
#[derive(Debug)]
pub struct Observation {
    stop: Arc<AtomicBool>,
}

impl Observation {
    /// An observation, and the flag its thread looks at between rounds.
    pub(crate) fn new() -> (Observation, Arc<AtomicBool>) {
        let stop = Arc::new(AtomicBool::new(false));
        (Observation { stop: stop.clone() }, stop)
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Watch the process group `group` of `generation` until a process waits
/// on one of `handed`; send what is seen to `sink` (a new text only when
/// it changes, and the finding that it waits last).
pub fn observe(
    generation: Generation,
    group: i32,
    handed: HandedSockets,
    sink: mpsc::UnboundedSender<Seen>,
) -> std::io::Result<Observation> {
    let (observation, stopped) = Observation::new();
    std::thread::Builder::new()
        .name(format!("observe-{generation}"))
        .spawn(move || {
            let mut last = String::new();
            for round in 0u32.. {
                if stopped.load(Ordering::Relaxed) || sink.is_closed() {
                    return;
                }
                let finding = kernel::look(group, &handed, round % EXPLAIN_EVERY == 0);
                // Between explanations, the cheap look only says "not yet".
                let news = finding.waiting || (round % EXPLAIN_EVERY == 0 && finding.seen != last);
                if news {
                    last.clone_from(&finding.seen);
                    let seen = Seen {
                        generation,
                        group,
                        waiting: finding.waiting,
                        seen: finding.seen,
                    };
                    if sink.send(seen).is_err() || finding.waiting {
                        return;
                    }
                }
                std::thread::sleep(INTERVAL);
            }
        })?;
    Ok(observation)
}
