//! The fault suite: what an operator meets — a worker that breaks the
//! shared socket, stray signals, hung or escaped processes, crash loops,
//! other local users, exhausted descriptors, logs nobody reads — each
//! under load where load applies, each asserting that the service serves
//! on and nothing leaks. `cargo test --test faults`.
//!
//! One module per kind of fault.

mod listener;
mod local_users;
mod processes;
mod signals;
