//! The library behind baton: it binds listening sockets once, starts worker
//! generations on them, and replaces one generation with the next without
//! ever closing a socket.
//!
//! - [`machine`]: the reload state machine, pure.

pub mod machine;
