//! The demo: baton runs `test-worker`, a load client hammers it over
//! 127.0.0.1, and baton reloads it every half second. At the end it prints
//! how many requests were served and how many failed (zero is the point).
//!
//! `cargo run --release --example demo [-- SECONDS]`

use std::time::{Duration, Instant};

use baton_e2e::{Baton, run_args, runtime};
use baton_loadgen::{Config, Load, Mode};
use nix::sys::signal::Signal;

const RELOAD_EVERY: Duration = Duration::from_millis(500);

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("usage: demo [SECONDS]"))
        .unwrap_or(10);
    println!("building baton and test-worker …");
    let _ = (baton_e2e::baton_bin(), baton_e2e::test_worker_bin());
    let rt = runtime();
    let _enter = rt.enter();
    println!(
        "{:<16} {:>8} {:>10} {:>8} {:>9} {:>8}  failures by kind",
        "traffic", "reloads", "requests", "failed", "workers", "p99"
    );
    for (label, mode) in [
        ("new connection", Mode::NewConnection),
        ("keep-alive", Mode::KeepAlive),
    ] {
        let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
        baton.wait_ready(1);
        let load = Load::start(Config {
            mode,
            clients: 16,
            duration: Duration::from_secs(seconds),
            ..Config::new(baton.address("http"))
        })
        .expect("load");
        let start = Instant::now();
        let mut generation = 1;
        while start.elapsed() + RELOAD_EVERY < Duration::from_secs(seconds) {
            std::thread::sleep(RELOAD_EVERY);
            baton.signal(Signal::SIGHUP);
            generation += 1;
            baton.wait_ready(generation);
        }
        let report = rt.block_on(load.finish());
        baton.signal(Signal::SIGTERM);
        let status = baton.wait_exit();
        assert!(status.success(), "baton: {status:?}\n{}", baton.output());
        let kinds: Vec<String> = report
            .failed
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{}={n}", kind.name()))
            .collect();
        println!(
            "{:<16} {:>8} {:>10} {:>8} {:>9} {:>6.1}ms  {}",
            label,
            generation - 1,
            report.started,
            report.failed_total(),
            report.distinct_header_values(),
            report
                .percentile(99.0)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(" ")
            }
        );
    }
}
