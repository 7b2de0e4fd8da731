//! The stop signal: what the supervisor sends a generation to make it
//! drain (SIGTERM by default), and the usual interactive equivalents.

use std::fmt;
use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

use crate::Error;

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopSignal {
    /// `SIGTERM`: baton's default stop signal, and systemd's.
    Terminate,
    /// `SIGINT`: Ctrl-C in a terminal.
    Interrupt,
    /// `SIGQUIT`.
    Quit,
}

impl StopSignal {
    /// The conventional name, e.g. `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Installs handlers for `SIGTERM`, `SIGINT` and `SIGQUIT` now, and returns
/// a future that resolves with the first of them to arrive.
///
/// The handlers are installed by this call, not when the future is first
/// polled: call it early (right after the runtime starts), so that a stop
/// signal sent during startup is not fatal but waits for the future. As
/// with every tokio signal handler, the default action (terminate) does not
/// come back for the rest of the process's life, even when the future is
/// dropped. Must be called inside a tokio runtime.
///
/// ```no_run
/// # async fn example() -> Result<(), baton_worker::Error> {
/// let stop = baton_worker::stop_signal()?;
/// // ... start serving, notify_ready() ...
/// let signal = stop.await;
/// eprintln!("{signal}: draining");
/// # Ok(()) }
/// ```
pub fn stop_signal() -> Result<impl Future<Output = StopSignal> + Send + 'static, Error> {
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| Error::Signal {
            signal: name,
            source,
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut quit = install(SignalKind::quit(), "SIGQUIT")?;
    Ok(async move {
        // `recv` gives None only when the runtime shuts down; then the
        // answer no longer matters.
        tokio::select! {
            _ = term.recv() => StopSignal::Terminate,
            _ = int.recv() => StopSignal::Interrupt,
            _ = quit.recv() => StopSignal::Quit,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_on_sigquit() {
        // SIGQUIT only: the test harness's own threads do not care about it
        // once a handler is installed, and no other test sends it.
        let stop = stop_signal().unwrap();
        // SAFETY: sends a signal to this process, whose handler is installed.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGQUIT) }, 0);
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), stop)
            .await
            .unwrap();
        assert_eq!(got, StopSignal::Quit);
        assert_eq!(got.to_string(), "SIGQUIT");
    }
}
