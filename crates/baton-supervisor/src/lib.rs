//! The library behind baton: it binds listening sockets once, starts worker
//! generations on them, and replaces one generation with the next without
//! ever closing a socket.
//!
//! - [`listeners`]: parse listener specs, bind them or adopt inherited ones.
//! - [`spawn`]: fork/exec a worker with its sockets at fds 3.. and `LISTEN_PID`.
//! - [`credentials`]: the user workers run as (`--user`, `--group`), looked up before fork.
//! - [`machine`]: the reload state machine, pure.
//! - [`devloop`]: the dev loop's decisions (change, build, reload), pure.
//! - [`driver`]: runs both machines on tokio and does the I/O they ask for.
//! - [`readiness`]: the per-generation `NOTIFY_SOCKET` receivers.
//! - [`fdlimit`]: baton's descriptor limit, raised, and its workers', restored.
//! - [`guardian`]: kills every worker group if baton itself dies.
//! - [`accept`]: what the control and metrics servers do when `accept` fails, and their connection caps.
//! - [`signals`]: what each signal does to baton, and the stream of them.
//! - [`control`]: the control socket behind `baton ctl`.
//! - [`runtime_dir`]: baton's runtime directories, checked against other local users.
//! - [`local_users`]: whose credentials baton believes (its own uid, root).
//! - [`preload`]: `--preload`: the library that hands an unchanged server's `bind()` baton's socket.
//! - [`quiesce`]: baton's own drain for `--preload` servers that have none.
//! - [`status`]: what `status` reports, and the sampler of worker costs.
//! - [`metrics`]: the status page, Prometheus metrics and `/status` over HTTP.
//! - [`fswatch`]: file watching for the dev loop: per-directory inotify watches, ignores, a quiet-period debounce.
//! - [`systemd`]: baton's own sd_notify towards systemd (READY, RELOADING, STATUS, fd store).

pub mod accept;
pub mod control;
pub mod credentials;
pub mod devloop;
pub mod driver;
pub mod fdlimit;
pub mod fswatch;
pub mod guardian;
pub mod listeners;
pub mod local_users;
pub mod machine;
pub mod metrics;
pub mod pid_file;
pub mod preload;
pub mod quiesce;
pub mod readiness;
pub mod runtime_dir;
pub mod signals;
pub mod spawn;
pub mod status;
pub mod systemd;
