//! The fault suite: what an operator meets — a worker that breaks the
//! shared socket, stray signals, hung or escaped processes, crash loops,
//! other local users, exhausted descriptors, logs nobody reads, baton as
//! a container's PID 1 — each
//! under load where load applies, each asserting that the service serves
//! on and nothing leaks. `cargo test --test faults`.
//!
//! One module per kind of fault.

mod descriptors;
mod listener;
mod local_users;
mod logs;
mod pid1;
mod processes;
mod signals;
