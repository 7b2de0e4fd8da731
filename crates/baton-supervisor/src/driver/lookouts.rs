//! The threads that look at a generation's processes in `/proc` for the
//! machine: while it starts under `--ready auto` ([`observer`]: does it
//! wait for connections yet?), and while baton drains it itself under
//! `--preload` ([`quiesce`]: has it stopped taking connections and
//! finished its own?). Each thread stops when its generation no longer
//! needs it; what they find comes back as machine events.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::listeners::Listener;
use crate::machine::{Event, Generation};
use crate::quiesce::{self, Accepted, DrainPage, Quiesced};
use crate::readiness::kernel::HandedSockets;
use crate::readiness::observer::{self, Observation, Seen};
use crate::runtime_dir::Dir;

/// The lookouts of every generation that has one.
pub(super) struct Lookouts {
    /// `--ready auto`: the observer of each starting generation.
    observations: BTreeMap<Generation, Observation>,
    seen: mpsc::UnboundedSender<Seen>,
    seen_rx: mpsc::UnboundedReceiver<Seen>,
    /// `--preload`: each live generation's drain page.
    pages: BTreeMap<Generation, DrainPage>,
    /// The watcher of each generation baton drains itself.
    quiescing: BTreeMap<Generation, Observation>,
    quiet: mpsc::UnboundedSender<Quiesced>,
    quiet_rx: mpsc::UnboundedReceiver<Quiesced>,
}

impl Lookouts {
    pub(super) fn new() -> Self {
        let (seen, seen_rx) = mpsc::unbounded_channel();
        let (quiet, quiet_rx) = mpsc::unbounded_channel();
        Lookouts {
            observations: BTreeMap::new(),
            seen,
            seen_rx,
            pages: BTreeMap::new(),
            quiescing: BTreeMap::new(),
            quiet,
            quiet_rx,
        }
    }

    /// The next finding, as the machine's event.
    pub(super) async fn next(&mut self) -> Event {
        tokio::select! {
            Some(seen) = self.seen_rx.recv() => seen.into_event(),
            Some(quiet) = self.quiet_rx.recv() => quiet.into_event(),
        }
    }

    /// `--ready auto`: watch the starting generation's processes.
    pub(super) fn observe(&mut self, generation: Generation, group: i32, listeners: &[Listener]) {
        match observer::observe(generation, group, handed(listeners), self.seen.clone()) {
            Ok(observation) => {
                self.observations.insert(generation, observation);
            }
            Err(error) => {
                tracing::error!(generation, %error, "cannot observe the new generation")
            }
        }
    }

    /// Stop observing generations that no longer start.
    pub(super) fn observe_only(&mut self, starting: impl Fn(Generation) -> bool) {
        self.observations.retain(|g, _| starting(*g));
    }

    /// `--preload`: write the drain page of a generation about to start;
    /// its path, for the worker's environment.
    pub(super) fn page(
        &mut self,
        dir: &Dir,
        generation: Generation,
        listeners: &[Listener],
    ) -> Option<PathBuf> {
        let inodes: Vec<u64> = handed_streams(listeners).inodes().collect();
        match DrainPage::create(dir, generation, &inodes) {
            Ok(page) => {
                let path = page.path().to_owned();
                self.pages.insert(generation, page);
                Some(path)
            }
            Err(error) => {
                tracing::error!(generation, %error, "cannot write the drain page: baton cannot drain this generation itself");
                None
            }
        }
    }

    /// Drain a generation baton's way; an event at once if it cannot be.
    pub(super) fn quiesce(
        &mut self,
        generation: Generation,
        group: Option<i32>,
        listeners: &[Listener],
    ) -> Option<Event> {
        let (Some(page), Some(group)) = (self.pages.get(&generation), group) else {
            return Some(Event::Quiesced { generation });
        };
        let accepted = accepted(listeners);
        match quiesce::start(
            generation,
            group,
            page,
            handed_streams(listeners),
            accepted,
            self.quiet.clone(),
        ) {
            Ok(watch) => {
                self.quiescing.insert(generation, watch);
                None
            }
            Err(error) => {
                tracing::error!(generation, %error, "cannot drain it baton's way: sending its stop signal");
                Some(Event::Quiesced { generation })
            }
        }
    }

    /// A generation is gone: its page and watcher go too.
    pub(super) fn forget(&mut self, generation: Generation) {
        self.observations.remove(&generation);
        self.quiescing.remove(&generation);
        self.pages.remove(&generation);
    }
}

fn handed<'a>(listeners: impl IntoIterator<Item = &'a Listener>) -> HandedSockets {
    HandedSockets::new(
        listeners
            .into_iter()
            .map(|l| (l.name(), l.local_address(), l.as_fd())),
    )
}

/// The stream sockets among them: a datagram socket has no connections
/// to drain, and its server keeps it (the library leaves it alone).
fn handed_streams(listeners: &[Listener]) -> HandedSockets {
    handed(listeners.iter().filter(|l| l.stream_address().is_some()))
}

/// The addresses connections are accepted on.
fn accepted(listeners: &[Listener]) -> Accepted {
    let addresses: Vec<_> = listeners
        .iter()
        .filter_map(Listener::stream_address)
        .collect();
    Accepted::new(
        addresses.iter().filter_map(|a| a.as_socket()),
        addresses
            .iter()
            .filter_map(|a| a.as_pathname().map(PathBuf::from)),
    )
}
