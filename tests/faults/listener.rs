//! A worker that calls `shutdown(2)` on the shared listening socket stops
//! it for every process that holds it, baton included: every later
//! connection would be refused, for good. baton checks its listeners
//! (before each spawn, after each generation exits, once a second) and
//! repairs them: a TCP socket on a fixed port listens again in place; one
//! that cannot (port 0, a unix socket, a unix socket file removed) is bound
//! anew at the same address. Either way a new generation takes it over at
//! once: the ones that saw it close may not serve it again (a tokio worker
//! keeps the hang-up for good and spins on `accept`).
//!
//! Connections refused in the instant between the worker's `shutdown` and
//! the repair are that worker's doing; what each test asserts is that the
//! service comes back and that traffic after it loses nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use baton_e2e::{
    Baton, Traffic, alive, assert_no_failures, exclusive, free_port, http_get, test_worker_bin,
};
use baton_loadgen::{FailureKind, Mode, Report, Target};
use nix::sys::signal::Signal;

/// `baton run --listen LISTEN --ready notify [FLAGS] -- test-worker WORKER…`
fn args(listen: &str, baton_flags: &[&str], worker: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--listen", listen, "--ready", "notify"]
        .iter()
        .chain(baton_flags)
        .map(|s| s.to_string())
        .collect();
    args.push("--".into());
    args.push(test_worker_bin().display().to_string());
    args.extend(worker.iter().map(|s| s.to_string()));
    args
}

fn status(baton: &Baton) -> serde_json::Value {
    let (exit, response) = baton.ctl_json(&["status"]);
    assert!(exit.success(), "{response:#}");
    response["status"].clone()
}

/// Traffic that ran through the fault failed, if at all, only where a
/// listener that does not listen makes it fail: a refused connect, a
/// connection reset out of the dropped accept queue, (unix) no socket
/// file for an instant, or a connection the faulty generation took and
/// never served.
fn only_the_workers_doing(report: &Report) {
    let allowed = [
        FailureKind::Refused,
        FailureKind::Reset,
        FailureKind::Closed,
        FailureKind::ConnectOther,
        FailureKind::Timeout,
    ];
    // What the fault cost, shown with --nocapture.
    eprintln!("through the fault: {}", report.summary());
    for (kind, count) in &report.failed {
        assert!(
            allowed.contains(kind) || *count == 0,
            "{kind}: {}\n{:?}",
            report.summary(),
            report.error_samples
        );
    }
}

/// Traffic after the repair: no failure, and every answer from `pid`.
fn served_by(target: impl Into<Target>, pid: i32) {
    let traffic = Traffic::start(target, Mode::NewConnection, 4);
    traffic.serve(200);
    let report = traffic.finish();
    assert_no_failures(&report);
    let pids: Vec<&String> = report.header_values.keys().collect();
    assert_eq!(pids, [&pid.to_string()], "{}", report.summary());
}

#[test]
fn a_tcp_listener_on_a_fixed_port_is_revived_in_place() {
    let _serial = exclusive();
    let listen = format!("http=127.0.0.1:{}", free_port());
    let mut baton = Baton::start(&args(
        &listen,
        &[],
        &[
            "--shutdown-listener",
            "rd",
            "--from-gen",
            "2",
            "--to-gen",
            "2",
        ],
    ));
    baton.wait_ready(1);
    let addr = baton.address("http");
    let during = Traffic::start(addr, Mode::NewConnection, 4);
    during.serve(50);

    baton.signal(Signal::SIGHUP);
    baton.wait_for(&["shutdown-listener how=rd fd=3"]);
    let warning = baton.wait_for(&["shut down by a worker", "name=http"]);
    assert!(warning.contains(" generation=2 "), "{warning}");
    baton.wait_for(&["listener revived in place", &format!("addr={addr}")]);
    let third = baton.wait_ready(3);
    baton.wait_for(&["exited", " generation=1 "]);
    baton.wait_for(&["exited", " generation=2 "]);
    only_the_workers_doing(&during.finish());

    served_by(addr, third);
    let status = status(&baton);
    let listener = &status["listeners"][0];
    assert_eq!(listener["health"], "ok", "{status:#}");
    assert_eq!(listener["repairs"], 1, "{status:#}");
    assert_eq!(listener["address"], addr.to_string(), "{status:#}");
    assert_eq!(baton.count(&["listener bound anew"]), 0, "the same socket");
    let last = status["reloads"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["trigger"], "listener", "{status:#}");
    assert_eq!(last["generation"], 3, "{status:#}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn a_tcp_listener_on_port_0_is_bound_anew_on_its_address_and_handed_over() {
    let _serial = exclusive();
    let mut baton = Baton::start(&args(
        "http=127.0.0.1:0",
        &[],
        &[
            "--shutdown-listener",
            "rdwr",
            "--from-gen",
            "2",
            "--to-gen",
            "2",
        ],
    ));
    baton.wait_ready(1);
    let addr: SocketAddr = baton.address("http");
    let during = Traffic::start(addr, Mode::NewConnection, 4);
    during.serve(50);

    baton.signal(Signal::SIGHUP);
    baton.wait_for(&["shutdown-listener how=rdwr fd=3"]);
    let warning = baton.wait_for(&["shut down by a worker", "name=http"]);
    assert!(warning.contains(" generation=2 "), "{warning}");
    baton.wait_for(&["listener bound anew", &format!("addr={addr}")]);
    let third = baton.wait_ready(3);
    baton.wait_for(&["exited", " generation=1 "]);
    baton.wait_for(&["exited", " generation=2 "]);
    only_the_workers_doing(&during.finish());

    served_by(addr, third);
    let status = status(&baton);
    let listener = &status["listeners"][0];
    assert_eq!(listener["health"], "ok", "{status:#}");
    assert_eq!(listener["repairs"], 1, "{status:#}");
    assert_eq!(listener["address"], addr.to_string(), "{status:#}");
    let last = status["reloads"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["trigger"], "listener", "{status:#}");
    assert_eq!(last["generation"], 3, "{status:#}");
    assert_eq!(last["outcome"], "ok", "{status:#}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

fn unix_baton(dir: &Path, baton_flags: &[&str], worker: &[&str]) -> (Baton, PathBuf) {
    let path = dir.join("app.sock");
    let baton = Baton::start(&args(
        &format!("http=unix:{}", path.display()),
        baton_flags,
        worker,
    ));
    (baton, path)
}

#[test]
fn a_unix_listener_that_a_worker_shut_down_is_bound_anew_and_handed_over() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    // The generations that saw the socket close may never drain (a tokio
    // worker spins on accept): the drain timeout ends them.
    let (mut baton, path) = unix_baton(
        dir.path(),
        &["--drain-timeout", "5s"],
        &[
            "--shutdown-listener",
            "rd",
            "--from-gen",
            "2",
            "--to-gen",
            "2",
        ],
    );
    baton.wait_ready(1);
    let during = Traffic::start(Target::Unix(path.clone()), Mode::NewConnection, 4);
    during.serve(50);

    baton.signal(Signal::SIGHUP);
    baton.wait_for(&["shutdown-listener how=rd fd=3"]);
    let warning = baton.wait_for(&["shut down by a worker", "name=http"]);
    assert!(warning.contains(" generation=2 "), "{warning}");
    baton.wait_for(&["listener bound anew", "name=http"]);
    let third = baton.wait_ready(3);
    baton.wait_for(&["exited", " generation=2 "]);
    baton.wait_for(&["exited", " generation=1 "]);
    only_the_workers_doing(&during.finish());

    served_by(Target::Unix(path.clone()), third);
    let status = status(&baton);
    assert_eq!(status["listeners"][0]["health"], "ok", "{status:#}");
    assert_eq!(status["listeners"][0]["repairs"], 1, "{status:#}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert!(!path.exists(), "baton removes the socket file it created");
}

#[test]
fn a_unix_socket_file_removed_under_baton_is_bound_anew() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let (mut baton, path) = unix_baton(dir.path(), &[], &[]);
    baton.wait_ready(1);
    std::fs::remove_file(&path).unwrap();

    let warning = baton.wait_for(&["socket file is gone", "name=http"]);
    assert!(warning.contains(" generation=1 "), "{warning}");
    baton.wait_for(&["listener bound anew", "name=http"]);
    let second = baton.wait_ready(2);
    baton.wait_for(&["exited", " generation=1 "]);
    served_by(Target::Unix(path.clone()), second);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert!(!path.exists(), "baton removes the socket file it created");
}

/// The samples of `metric` in the Prometheus text.
fn metric(text: &str, sample: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ').map(str::to_owned))
}

#[test]
fn a_listener_that_cannot_be_repaired_shows_in_status_and_metrics() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let (mut baton, path) = unix_baton(dir.path(), &["--metrics", "127.0.0.1:0"], &[]);
    let first = baton.wait_ready(1);
    let metrics = baton.metrics_address();
    let up = "baton_listener_up{name=\"http\"}";
    assert_eq!(
        metric(&http_get(metrics, "/metrics").1, up).as_deref(),
        Some("1")
    );

    // Someone puts a regular file where the socket was: baton must not
    // remove it, so it cannot bind anew.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "not a socket").unwrap();
    baton.wait_for(&["cannot repair the listener", "name=http"]);
    let status = status(&baton);
    let listener = &status["listeners"][0];
    assert_eq!(listener["health"], "broken", "{status:#}");
    let problem = listener["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("not a socket"), "{status:#}");
    assert_eq!(
        metric(&http_get(metrics, "/metrics").1, up).as_deref(),
        Some("0")
    );
    assert!(
        alive(first),
        "generation 1 serves on whatever still reaches it"
    );

    // Once the path is free, baton binds it and hands it over.
    std::fs::remove_file(&path).unwrap();
    baton.wait_for(&["listener bound anew", "name=http"]);
    let second = baton.wait_ready(2);
    baton.wait_for(&["exited", " generation=1 "]);
    served_by(Target::Unix(path.clone()), second);
    assert_eq!(status_health(&baton), "ok");
    assert_eq!(
        metric(&http_get(metrics, "/metrics").1, up).as_deref(),
        Some("1")
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

fn status_health(baton: &Baton) -> String {
    status(baton)["listeners"][0]["health"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
