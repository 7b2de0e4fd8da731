//! The lame-duck recipes of `examples/`, each reloaded under keep-alive
//! load: every client keeps one connection and sends request after
//! request on it, so a server that closes an idle keep-alive connection
//! while a request is on its way fails that request. The recipes stop
//! keeping connections alive for a grace period first; none may fail.

use baton_e2e::recipes::{self, Server};
use baton_e2e::{assert_no_failures, exclusive};
use baton_loadgen::Mode;

use super::spread;

/// Reloads per recipe in CI; `BATON_RECIPE_RELOADS=20` runs the 20 the
/// issue asked for. Each reload waits for the old generation's exit, i.e.
/// the recipe's 1 s grace: 20 reloads of all five recipes took 289 s (172 s
/// of CPU, mostly the load client's) on the shared 2-core machine, 10 take
/// about half, and still catch a drain that races (`Shutdown()` alone
/// fails about 10 requests per reload).
fn reloads() -> u64 {
    std::env::var("BATON_RECIPE_RELOADS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("BATON_RECIPE_RELOADS: a number of reloads")
        })
        .unwrap_or(10)
}

/// Keep-alive clients: each holds one connection to some generation.
const CLIENTS: usize = 8;

fn fails_nothing_under_keep_alive(server: Server) {
    let _serial = exclusive();
    let reloads = reloads();
    let run = recipes::reloads_under_load(&server, Mode::KeepAlive, CLIENTS, reloads);
    assert_no_failures(&run.report);
    assert!(
        run.report.distinct_header_values() > reloads as usize,
        "responses came from only {} workers: {}",
        run.report.distinct_header_values(),
        run.report.summary()
    );
    eprintln!(
        "{}: {} reloads under keep-alive load, {}; time to ready: {}",
        server.name,
        run.reloads,
        run.report.summary(),
        spread(run.ready_ms)
    );
}

#[test]
fn go_lame_duck_fails_nothing_under_keep_alive() {
    fails_nothing_under_keep_alive(recipes::go_lameduck());
}

#[test]
fn node_lame_duck_fails_nothing_under_keep_alive() {
    fails_nothing_under_keep_alive(recipes::node_lameduck());
}

#[test]
fn gunicorn_recipe_fails_nothing_under_keep_alive() {
    fails_nothing_under_keep_alive(recipes::gunicorn());
}

#[test]
fn uvicorn_lame_duck_fails_nothing_under_keep_alive() {
    fails_nothing_under_keep_alive(recipes::uvicorn_lameduck());
}

#[test]
fn rust_baton_worker_fails_nothing_under_keep_alive() {
    fails_nothing_under_keep_alive(recipes::rust_baton_worker());
}
