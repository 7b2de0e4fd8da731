//! The promise: reloads under steady load fail no request.

use std::time::Duration;

use baton_e2e::{Baton, exclusive, run_args, runtime};
use baton_loadgen::{Config, Load, Mode, Report};
use nix::sys::signal::Signal;

const RELOADS: u64 = 20;

/// Start load, reload `RELOADS` times (each time waiting until the new
/// generation is ready and has served some requests), stop, report.
fn reload_under_load(mode: Mode) -> Report {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    baton.wait_ready(1);
    let rt = runtime();
    let _enter = rt.enter();
    let load = Load::start(Config {
        mode,
        clients: 8,
        duration: Duration::from_secs(120),
        ..Config::new(baton.address("http"))
    })
    .expect("load");
    for generation in 2..=RELOADS + 1 {
        let served = load.ok_so_far();
        rt.block_on(load.wait_for(|s| s.ok >= served + 50))
            .expect("the load runs");
        baton.signal(Signal::SIGHUP);
        baton.wait_ready(generation);
    }
    let served = load.ok_so_far();
    rt.block_on(load.wait_for(|s| s.ok >= served + 50))
        .expect("the load runs");
    load.stop();
    let report = rt.block_on(load.finish());
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    report
}

#[test]
fn new_connection_traffic_survives_twenty_reloads() {
    let report = reload_under_load(Mode::NewConnection);
    assert_eq!(
        report.failed_total(),
        0,
        "{}\n{:?}",
        report.summary(),
        report.error_samples
    );
    assert!(
        report.distinct_header_values() >= RELOADS as usize,
        "responses came from only {} workers: {}",
        report.distinct_header_values(),
        report.summary()
    );
}

#[test]
fn keep_alive_traffic_survives_twenty_reloads() {
    let report = reload_under_load(Mode::KeepAlive);
    assert_eq!(
        report.failed_total(),
        0,
        "{}\n{:?}",
        report.summary(),
        report.error_samples
    );
    assert!(
        report.distinct_header_values() >= RELOADS as usize,
        "responses came from only {} workers: {}",
        report.distinct_header_values(),
        report.summary()
    );
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
    let rt = runtime();
    let _enter = rt.enter();
    let load = Load::start(Config {
        mode: Mode::KeepAlive,
        clients: 4,
        duration: Duration::from_secs(120),
        ..Config::new(baton.address("http"))
    })
    .expect("load");
    rt.block_on(load.wait_for(|s| s.ok >= 20))
        .expect("the load runs");
    baton.signal(Signal::SIGHUP);
    // The storm lands while generation 2 sleeps through its startup delay.
    baton.wait_for(&["spawned", " generation=2 "]);
    for _ in 0..99 {
        baton.signal(Signal::SIGHUP);
    }
    baton.wait_ready(3);
    let served = load.ok_so_far();
    rt.block_on(load.wait_for(|s| s.ok >= served + 20))
        .expect("the load runs");
    load.stop();
    let report = rt.block_on(load.finish());
    // Stopping baton settles the count: nothing can be spawned after exit.
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_eq!(
        baton.count(&["spawned generation="]),
        3,
        "generation 1 and exactly two reloads:\n{}",
        baton.output()
    );
    assert_eq!(report.failed_total(), 0, "{}", report.summary());
}
