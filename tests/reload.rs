//! The promise: reloads under steady load fail no request.

use baton_e2e::{Baton, Traffic, assert_no_failures, exclusive, run_args};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

const RELOADS: u64 = 20;

/// Reload `RELOADS` times under load, each time waiting until the new
/// generation is ready and more requests were served: zero may fail, and
/// at least `RELOADS` workers must have answered.
fn reload_under_load(mode: Mode) {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), mode, 8);
    for generation in 2..=RELOADS + 1 {
        traffic.serve(50);
        baton.signal(Signal::SIGHUP);
        baton.wait_ready(generation);
    }
    traffic.serve(50);
    let report = traffic.finish();
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_no_failures(&report);
    assert!(
        report.distinct_header_values() >= RELOADS as usize,
        "responses came from only {} workers: {}",
        report.distinct_header_values(),
        report.summary()
    );
}

#[test]
fn new_connection_traffic_survives_twenty_reloads() {
    reload_under_load(Mode::NewConnection);
}

#[test]
fn keep_alive_traffic_survives_twenty_reloads() {
    reload_under_load(Mode::KeepAlive);
}

/// 100 SIGHUPs within one slow reload: one reload runs, one more follows
/// it, and that is all.
#[test]
fn a_sighup_storm_gives_exactly_two_spawns() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify"],
        &["--startup-delay", "2s", "--from-gen", "2"],
    ));
    baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::KeepAlive, 4);
    traffic.serve(20);
    baton.signal(Signal::SIGHUP);
    // The storm lands while generation 2 sleeps through its startup delay.
    baton.wait_for(&["spawned", " generation=2 "]);
    for _ in 0..99 {
        baton.signal(Signal::SIGHUP);
    }
    baton.wait_ready(3);
    traffic.serve(20);
    let report = traffic.finish();
    // Stopping baton settles the count: nothing can be spawned after exit.
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_eq!(
        baton.count(&["spawned generation="]),
        3,
        "generation 1 and exactly two reloads:\n{}",
        baton.output()
    );
    assert_no_failures(&report);
}
