//! The config file is re-read for a reload on a blocking thread, never on
//! the loop: a slow disk or a huge file must not stop the timers, the
//! reaper and the control socket.
//!
//! One read runs at a time. Reloads asked for while it runs wait for the
//! next read, which starts when it ends, so every reload sees the file as
//! it was when it was asked for, or later.

use tokio::task::JoinHandle;

use super::blueprint::{Blueprint, Reloader};
use crate::machine::ReloadId;
use crate::status::Trigger;

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
