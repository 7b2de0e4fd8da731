//! The async handle: starts the engine's thread, waits for its batches.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use super::engine::Engine;
use super::filter::Filter;
use super::{ChangeBatch, WatchError, WatchSettings, lock};

/// What the consumer has not taken yet.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) batch: Option<ChangeBatch>,
    pub(super) errors: VecDeque<WatchError>,
    closed: bool,
}

/// State shared between the [`Watcher`] handle and its thread.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) outbox: Mutex<Outbox>,
    /// Woken with `notify_one`, which keeps a permit when nobody waits, so
    /// a batch published between a check and the wait is not missed.
    pub(super) wake: tokio::sync::Notify,
    /// The directories watched, published after each change of the set.
    pub(super) watched: Mutex<Vec<PathBuf>>,
}

/// What the watcher thread receives.
pub(super) enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// A running file watcher; dropping it stops watching.
pub struct Watcher {
    shared: Arc<Shared>,
    control: mpsc::Sender<Msg>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Walks the trees, adds the watches and returns once they are all in
    /// place: a change made after this returns is reported.
    ///
    /// Fails if a path does not exist, a glob does not parse, or an inotify
    /// limit is hit (the error says which and how to raise it).
    pub async fn start(settings: WatchSettings) -> Result<Watcher, WatchError> {
        if settings.paths.is_empty() {
            return Err(WatchError::NoPaths);
        }
        let filter = Arc::new(Filter::new(&settings)?);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        let event_tx = tx.clone();
        thread::Builder::new()
            .name("baton-watch".into())
            .spawn(move || {
                // Marks the outbox closed however the thread ends, so that
                // `next_batch` returns `Stopped` instead of waiting forever.
                let _close = CloseOnDrop(thread_shared.clone());
                match Engine::new(settings, filter, event_tx, thread_shared) {
                    Ok(engine) => {
                        if ready_tx.send(Ok(())).is_ok() {
                            engine.run(rx);
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| WatchError::Path {
                path: PathBuf::from("(watch thread)"),
                source: e,
            })?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Watcher {
                shared,
                control: tx,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WatchError::Stopped),
        }
    }

    /// Waits for the next batch of changes.
    ///
    /// Cancel-safe (use it in `tokio::select!`): nothing is lost if the
    /// future is dropped. Batches are not queued: changes made while the
    /// previous batch is still untaken are merged into it, so a slow
    /// consumer sees one batch, not a backlog. An `Err` is either a
    /// non-fatal problem met while running (an inotify limit hit while
    /// adding a new directory: that directory is not watched; the watcher
    /// goes on) or, once it is [`WatchError::Stopped`], the end.
    pub async fn next_batch(&mut self) -> Result<ChangeBatch, WatchError> {
        loop {
            if let Some(r) = self.try_next_batch() {
                return r;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Takes a batch or error that is ready now, without waiting.
    pub fn try_next_batch(&mut self) -> Option<Result<ChangeBatch, WatchError>> {
        let mut out = lock(&self.shared.outbox);
        if let Some(e) = out.errors.pop_front() {
            return Some(Err(e));
        }
        if let Some(b) = out.batch.take() {
            return Some(Ok(b));
        }
        if out.closed {
            return Some(Err(WatchError::Stopped));
        }
        None
    }

    /// The directories currently watched (for logs and tests), sorted.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        lock(&self.shared.watched).clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The thread ends at this message and drops the notify watcher,
        // which closes the inotify descriptor. Not joined: it may be in the
        // middle of a walk, and drop may run on an async worker thread.
        let _ = self.control.send(Msg::Stop);
    }
}

struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        lock(&self.0.outbox).closed = true;
        self.0.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_can_move_into_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Watcher>();
        send_sync::<WatchError>();
    }
}
