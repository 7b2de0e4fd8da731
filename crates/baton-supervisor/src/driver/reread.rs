//! The config file is re-read for a reload on a blocking thread, never on
//! the loop: a slow disk or a huge file must not stop the timers, the
//! reaper and the control socket.
//!
//! One read runs at a time. Reloads asked for while it runs wait for the
//! next read, which starts when it ends, so every reload sees the file as
//! it was when it was asked for, or later. What the read produced is
//! applied here too: new listeners bound, new settings for the machine.

use tokio::task::JoinHandle;

use super::Driver;
use super::blueprint::{Blueprint, Reloader};
use crate::listeners;
use crate::machine::{Event, ReloadId};
use crate::status::Trigger;

impl Driver {
    /// The config file was re-read for `waiting`: apply it and tell the
    /// machine, or fail them all.
    pub(super) fn on_reread(&mut self, waiting: Waiting, read: Read) -> Vec<Event> {
        if let Some(reloader) = &self.reloader {
            self.rereads.start(reloader);
        }
        let requested = waiting.iter().map(|&(id, _)| Event::ReloadRequested { id });
        // The machine answers requests during shutdown; a new listener
        // would be wasted.
        if self.machine.shutting_down() {
            return requested.collect();
        }
        match read.and_then(|blueprint| self.apply_blueprint(blueprint)) {
            Ok(settings) => std::iter::once(settings).chain(requested).collect(),
            Err(reason) => {
                for (id, trigger) in waiting {
                    let outcome = self.observer.reload_rejected(id, trigger, &reason);
                    self.watch_reload_done(outcome);
                }
                Vec::new()
            }
        }
    }

    /// Apply what the next generation sees; returns the machine's new
    /// settings.
    fn apply_blueprint(&mut self, blueprint: Blueprint) -> Result<Event, String> {
        let current = &self.blueprint.listeners;
        if blueprint.listeners.len() < current.len()
            || blueprint.listeners[..current.len()] != current[..]
        {
            return Err(
                "listeners can only be appended: removing, changing or reordering one needs a restart of baton".into(),
            );
        }
        let added = &blueprint.listeners[current.len()..];
        let bound = listeners::bind_all(added, blueprint.bind).map_err(|e| e.to_string())?;
        for listener in &bound {
            tracing::info!(name = %listener.name(), addr = %listener.local_address(), backlog = blueprint.bind.backlog, "listening");
        }
        self.listeners.extend(bound);
        let settings = blueprint.settings.clone();
        self.blueprint = blueprint;
        Ok(Event::SettingsChanged(settings))
    }
}

/// Reloads waiting for the file, by id and what asked for them.
pub(super) type Waiting = Vec<(ReloadId, Trigger)>;

/// What a read produced: a blueprint, or why the reload fails.
pub(super) type Read = Result<Blueprint, String>;

/// The read running and the reloads waiting for the next one.
#[derive(Debug, Default)]
pub(super) struct Rereads {
    running: Option<(JoinHandle<Read>, Waiting)>,
    queued: Waiting,
}

impl Rereads {
    /// Reload `id` needs the file: start a read, or wait for the next.
    pub fn request(&mut self, reloader: &Reloader, id: ReloadId, trigger: Trigger) {
        self.queued.push((id, trigger));
        if self.running.is_none() {
            self.start(reloader);
        }
    }

    /// Start a read for the queued reloads, if any (after one ended).
    pub fn start(&mut self, reloader: &Reloader) {
        if self.running.is_some() || self.queued.is_empty() {
            return;
        }
        let read = reloader.clone();
        let task = tokio::task::spawn_blocking(move || read());
        self.running = Some((task, std::mem::take(&mut self.queued)));
    }

    /// The end of the running read, with the reloads it was for; never,
    /// while none runs. Cancel-safe.
    pub async fn done(&mut self) -> (Waiting, Read) {
        let Some((task, _)) = &mut self.running else {
            return std::future::pending().await;
        };
        let read = task
            .await
            .unwrap_or_else(|error| Err(format!("cannot read the config file: {error}")));
        let (_, waiting) = self.running.take().expect("a read was running");
        (waiting, read)
    }
}
