//! Servers that know nothing of baton, run by baton unchanged: `--ready
//! auto` (readiness seen in the kernel) with Go, Python and gunicorn;
//! workers written for Server::Starter, einhorn, nginx's binary upgrade
//! and the `listenfd` crate; a UDP echo server; servers that bind their
//! own port, under `--preload`; the lame-duck recipes of `examples/` under
//! keep-alive load. The runtimes come from Debian packages that `.ci/run`
//! installs (golang-go, nodejs, nginx, gunicorn, python3-uvicorn,
//! libserver-starter-perl; python3 and perl are there already).

mod auto;
mod preload;
mod recipes;
mod udp;
mod unchanged;

use std::path::{Path, PathBuf};

use baton_e2e::recipes::{go_build, python, require};
use baton_e2e::{Baton, Traffic, assert_no_failures, field};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

/// Reloads under load per server: enough to catch a lost connection,
/// few enough to keep CI's two cores free.
const RELOADS: u64 = 10;

/// A file of `tests/any_server/fixtures`.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/any_server/fixtures")
        .join(name)
}

/// The Go server of `fixtures/listen_fds.go`, built once per test run
/// (Go's build cache lives in the target dir, so later runs are quick).
fn go_server() -> PathBuf {
    go_build(&fixture("listen_fds.go"), "listen-fds-go")
}

/// The `listenfd-server` crate's binary, built once per test run.
fn listenfd_server() -> &'static Path {
    baton_e2e::workspace_bin("listenfd-server")
}

/// `baton run --listen LISTEN FLAGS… -- COMMAND…`.
fn baton_args(listen: &str, flags: &[&str], command: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "--listen".into(), listen.into()];
    args.extend(flags.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(command.iter().map(|s| s.to_string()));
    args
}

/// The index of the first line of baton's output with every needle.
fn line_index(baton: &Baton, needles: &[&str]) -> usize {
    baton.wait_for(needles);
    let output = baton.output();
    output
        .lines()
        .position(|l| needles.iter().all(|n| l.contains(n)))
        .expect("the line waited for")
}

/// The first line with `first` comes before the first line with `then`.
fn assert_before(baton: &Baton, first: &[&str], then: &[&str]) {
    let a = line_index(baton, first);
    let b = line_index(baton, then);
    assert!(
        a < b,
        "{first:?} (line {a}) should come before {then:?} (line {b}):\n{}",
        baton.output()
    );
}

/// The spawn-to-ready time of a generation, from its `ready` line.
fn ready_ms(baton: &Baton, generation: u64) -> u64 {
    let line = baton.wait_for(&[&format!(" ready generation={generation} ")]);
    field(&line, "ready_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ready_ms in {line:?}"))
}

/// Min, median and max of some times, for the figures in docs/any-server.md.
fn spread(mut times: Vec<u64>) -> String {
    times.sort_unstable();
    format!(
        "min {} ms, median {} ms, max {} ms over {}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    )
}

/// Generation 1 is ready; reload [`RELOADS`] times under new-connection
/// load, each time until the new generation is ready and served more:
/// zero requests may fail, and every generation must have answered.
/// Stops baton; returns each generation's time to ready.
fn reloads_under_load(mut baton: Baton, name: &str) -> Vec<u64> {
    baton.wait_ready(1);
    let addr = baton.address("http");
    let traffic = Traffic::start(addr, Mode::NewConnection, 8);
    for generation in 2..=RELOADS + 1 {
        traffic.serve(30);
        baton.signal(Signal::SIGHUP);
        baton.wait_ready(generation);
    }
    traffic.serve(30);
    let report = traffic.finish();
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_no_failures(&report);
    assert!(
        report.distinct_header_values() > RELOADS as usize,
        "responses came from only {} workers: {}",
        report.distinct_header_values(),
        report.summary()
    );
    let times: Vec<u64> = (1..=RELOADS + 1).map(|g| ready_ms(&baton, g)).collect();
    eprintln!(
        "{name}: {} reloads, {}; time to ready: {}",
        RELOADS,
        report.summary(),
        spread(times.clone())
    );
    times
}
