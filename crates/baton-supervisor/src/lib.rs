//! The library behind baton: it binds listening sockets once, starts worker
//! generations on them, and replaces one generation with the next without
//! ever closing a socket.
//!
//! - [`listeners`]: parse listener specs, bind them.
//! - [`spawn`]: fork/exec a worker with its sockets at fds 3.. and `LISTEN_PID`.
//! - [`machine`]: the reload state machine, pure.
//! - [`driver`]: runs the machine on tokio.
//! - [`notify`]: the per-generation `NOTIFY_SOCKET` receivers.
//! - [`guardian`]: kills every worker group if baton itself dies.

pub mod driver;
pub mod guardian;
pub mod listeners;
pub mod machine;
pub mod notify;
pub mod spawn;
