//! What the driver runs with: the bound sockets, the blueprint for the next
//! generation, and the servers and watchers around them.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::credentials::Credentials;
use crate::devloop::DevSettings;
use crate::listeners::{BindOptions, Listener, ListenerSpec};
use crate::machine::Settings;
use crate::runtime_dir::RuntimeDir;
use crate::signals::SignalTable;
use crate::spawn::WorkerCommand;
use crate::systemd::SystemdNotifier;

/// What a reload may change: re-read from the config file each time.
#[derive(Debug, Clone)]
pub struct Blueprint {
    /// The listeners; existing ones must stay as they are, in order, and
    /// new ones may only be appended (fd numbers never shift).
    pub listeners: Vec<ListenerSpec>,
    /// How to bind new listeners.
    pub bind: BindOptions,
    /// The worker's command.
    pub command: WorkerCommand,
    /// Variables set for workers on top of baton's own environment.
    pub env: Vec<(OsString, OsString)>,
    /// Timings and readiness.
    pub settings: Settings,
    /// The user workers and builds run as (`--user`), if not baton's.
    pub user: Option<Credentials>,
}

impl Blueprint {
    /// baton's own environment, then the user's `HOME`, `USER` and
    /// `LOGNAME` (with `--user`), then the blueprint's variables on top.
    pub(super) fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut set: Vec<(OsString, OsString)> = self
            .user
            .iter()
            .flat_map(Credentials::environment)
            .filter(|(key, _)| !self.env.iter().any(|(k, _)| k == key))
            .collect();
        set.extend(self.env.iter().cloned());
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(key, _)| !set.iter().any(|(k, _)| k == key))
            .collect();
        env.extend(set);
        env
    }
}

/// Produces the [`Blueprint`] for the next generation (re-reads the config
/// file); an error fails the reload and changes nothing. It runs on a
/// blocking thread, off the loop.
pub type Reloader = std::sync::Arc<dyn Fn() -> Result<Blueprint, String> + Send + Sync>;

/// Everything the driver runs with.
pub struct Config {
    /// The bound sockets, in `--listen` order.
    pub listeners: Vec<Listener>,
    /// What they were bound from.
    pub blueprint: Blueprint,
    /// The bound control socket and its path, unless turned off.
    pub control: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    /// The bound metrics listener, if asked for.
    pub metrics: Option<std::net::TcpListener>,
    /// Re-reads the config file on every reload, if there is one.
    pub reloader: Option<Reloader>,
    /// baton's own notify socket towards systemd (disabled when not
    /// started by systemd).
    pub systemd: SystemdNotifier,
    /// The development loop (`--watch`, `--build`), if asked for.
    pub dev: Option<DevSettings>,
    /// baton's own directory, for the notify sockets.
    pub runtime: RuntimeDir,
    /// What each signal does (which ones are forwarded to workers).
    pub signals: SignalTable,
    /// `--pid-file`, claimed: published once baton handles its signals (a
    /// `kill -HUP $(cat FILE)` before would end it), removed with the driver.
    pub pid_file: Option<crate::pid_file::PidFile>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listeners", &self.listeners)
            .field("blueprint", &self.blueprint)
            .finish_non_exhaustive()
    }
}
