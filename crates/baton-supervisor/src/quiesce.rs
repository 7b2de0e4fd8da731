//! baton's own drain, for `--preload` generations: servers that cannot
//! drain (many exit at once on SIGTERM, dropping what they accepted) are
//! drained by baton.
//!
//! When the machine asks a generation to quiesce, baton raises the flag of
//! the generation's [page](page) (shared memory that the preload library
//! in each of its processes looks at before it waits): each process stops
//! taking connections without any signal (`preload/drain.rs`), within
//! one of its wait slices ([`SETTLE`] covers two). A watcher thread then
//! [looks](look) at the generation in `/proc` every [`INTERVAL`] until no
//! process of it waits for connections on a handed socket and none holds
//! a connection accepted on one; then the machine sends the stop signal.
//! The machine stops waiting at its cap (half the drain timeout), and
//! says so.

pub mod look;
pub mod page;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use self::look::{Accepted, Quiet};
pub use self::page::DrainPage;
use crate::machine::{Event, Generation};
use crate::readiness::kernel::HandedSockets;
use crate::readiness::observer::Observation;

/// How often a quiescing generation is looked at.
pub const INTERVAL: Duration = Duration::from_millis(30);

/// How long after the flag a generation may be found quiet: two of the
/// library's wait slices (50 ms each), so that every process that waited
/// in one has looked at the flag since. A process found between two
/// slices would otherwise seem quiet before it stopped accepting.
pub const SETTLE: Duration = Duration::from_millis(100);

/// What the watcher of a generation found when it was quiet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quiesced {
    /// The generation.
    pub generation: Generation,
    /// How long it took, from the flag.
    pub after: Duration,
    /// The connections it still had when the flag went up.
    pub connections_at_start: usize,
}

impl Quiesced {
    /// Log it, and make it the machine's event.
    pub fn into_event(self) -> Event {
        tracing::info!(
            generation = self.generation,
            after_ms = self.after.as_millis() as u64,
            connections = self.connections_at_start,
            "stopped taking connections and finished its own"
        );
        Event::Quiesced {
            generation: self.generation,
        }
    }
}

/// Raise `page`'s flag and watch the process group `group` until it is
/// quiet; then send what was found to `sink`, once.
pub fn start(
    generation: Generation,
    group: i32,
    page: &DrainPage,
    handed: HandedSockets,
    accepted: Accepted,
    sink: mpsc::UnboundedSender<Quiesced>,
) -> std::io::Result<Observation> {
    page.raise()?;
    let began = Instant::now();
    let (watch, stopped) = Observation::new();
    std::thread::Builder::new()
        .name(format!("quiesce-{generation}"))
        .spawn(move || {
            let mut first = None;
            while !stopped.load(Ordering::Relaxed) && !sink.is_closed() {
                let quiet = look::look(group, &handed, &accepted);
                let at_start = *first.get_or_insert(quiet.connections);
                if quiet.is_quiet() && began.elapsed() >= SETTLE {
                    let _ = sink.send(Quiesced {
                        generation,
                        after: began.elapsed(),
                        connections_at_start: at_start,
                    });
                    return;
                }
                std::thread::sleep(INTERVAL);
            }
        })?;
    Ok(watch)
}
