//! Reloads under load, side by side with the other ways to restart a server.
//!
//! ```sh
//! cargo bench --bench reload               # the full run (about 6 minutes on 2 cores)
//! cargo bench --bench reload -- --quick    # a short run (under a minute)
//! cargo bench --bench reload -- --svg /tmp/chart.svg   # write the chart elsewhere
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it returns at
//! once.
//!
//! Every system serves the same `test-worker` on 127.0.0.1, gets the same
//! closed-loop load (the `baton-loadgen` client: no pool, no retry) for the
//! same time, and is reloaded on the same schedule:
//!
//! - `baton`: `baton run --ready notify`, reload = SIGHUP;
//! - `restart`: SIGTERM the worker, wait for it to exit, start a new one
//!   that binds the port itself (`test-worker --bind`);
//! - `start_server`: Server::Starter (`start_server --port=… -- test-worker`),
//!   reload = SIGHUP; skipped when it is not installed;
//! - `fd-holder`: this bench holds the socket and restarts the worker by
//!   killing it (SIGKILL, then a new worker on the same socket: what a
//!   socket holder such as systemfd does under a file watcher);
//!   `fd-holder-term` does the same with SIGTERM and a wait for the exit.
//!
//! A reload is triggered every R ms; one that is still going on when the
//! next is due delays it (the next starts as soon as it is done), so every
//! reload is timed on its own: trigger → new worker ready → old worker gone.
//!
//! It also measures what baton costs when nothing reloads (interleaved A/B
//! runs against the worker bound directly), what baton adds to a reload
//! (CLOCK_MONOTONIC stamps taken by this bench and by the workers
//! themselves, not baton's logs), and a soak of many reloads in a row.

mod chart;
mod cost;
mod latency;
mod machine;
mod process;
mod procfs;
mod rows;
mod servers;
mod soak;
mod start_server;
mod stats;
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_e2e::{runtime, test_worker_bin};
use baton_loadgen::Mode;

use crate::chart::chart;
use crate::cost::{cost_of_baton, cost_table};
use crate::latency::reload_latency;
use crate::machine::Machine;
use crate::procfs::load_average;
use crate::rows::{failure_notes, rows_table, run_row};
use crate::servers::System;
use crate::soak::soak;
use crate::targets::targets;

/// A request that takes longer fails as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long anything the bench waits for (a ready worker, an exit) may take.
const WAIT: Duration = Duration::from_secs(30);

/// What to run, from the command line.
struct Options {
    quick: bool,
    /// Length of one row's load.
    duration: Duration,
    /// The reload intervals R.
    intervals: Vec<Duration>,
    /// Concurrent clients of a row.
    clients: usize,
    /// Interleaved A/B pairs per traffic kind for the cost of baton.
    ab_pairs: usize,
    ab_duration: Duration,
    /// Reloads sampled for baton's own reload latency.
    latency_samples: usize,
    soak_reloads: u64,
    /// After the soak: a pause this long (past baton's 60 s ready-timeout
    /// timers), then this many more reloads, to tell memory held for a
    /// while from memory lost.
    soak_settle: Option<(Duration, u64)>,
    svg: PathBuf,
}

impl Options {
    fn from_args(args: &[String]) -> Options {
        let quick = args.iter().any(|a| a == "--quick");
        let svg = args
            .iter()
            .position(|a| a == "--svg")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if quick {
                    std::env::temp_dir().join("baton-benchmarks-reload-quick.svg")
                } else {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks-reload.svg")
                }
            });
        if quick {
            Options {
                quick,
                duration: Duration::from_secs(2),
                intervals: vec![Duration::from_millis(100)],
                clients: 16,
                ab_pairs: 5,
                ab_duration: Duration::from_millis(500),
                latency_samples: 10,
                soak_reloads: 100,
                soak_settle: None,
                svg,
            }
        } else {
            Options {
                quick,
                duration: Duration::from_secs(10),
                intervals: vec![Duration::from_millis(500), Duration::from_millis(100)],
                clients: 16,
                ab_pairs: 15,
                ab_duration: Duration::from_secs(1),
                latency_samples: 40,
                soak_reloads: 1000,
                soak_settle: Some((Duration::from_secs(61), 300)),
                svg,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let plan = Options::from_args(&args);
    let began = Instant::now();
    eprintln!("building baton and test-worker (release) …");
    let _ = (baton_e2e::baton_bin(), test_worker_bin());
    let machine = Machine::describe();
    println!("{}", machine.header(&plan));

    let rt = runtime();
    let _enter = rt.enter();

    let mut systems = vec![System::Baton, System::Restart];
    if machine.start_server.is_some() {
        systems.push(System::StartServer);
    } else {
        println!(
            "note: start_server (Debian's libserver-starter-perl) is not installed: its rows are skipped\n"
        );
    }
    systems.extend([System::FdHolder, System::FdHolderTerm]);

    let mut rows = Vec::new();
    for &system in &systems {
        for &interval in &plan.intervals {
            for mode in [Mode::NewConnection, Mode::KeepAlive] {
                eprintln!("{} · {mode} · reload every {interval:?} …", system.name());
                let row = run_row(&rt, system, mode, interval, &plan);
                eprintln!("    {}", row.report.summary());
                rows.push(row);
            }
        }
    }
    println!("## Reloads under load\n");
    println!(
        "Each row: a fresh system serving test-worker on 127.0.0.1, {} closed-loop clients for {} s, a reload \
         triggered every R (one still going on when the next is due delays it). refused = ECONNREFUSED; \
         reset = reset or closed before a complete response; other = anything else. Latencies over the \
         successful requests. ready = trigger → new worker ready; done = trigger → ready and old worker gone. \
         supervisor = baton's or start_server's own process: RSS at the end, CPU time over the row.\n",
        plan.clients,
        plan.duration.as_secs_f64()
    );
    println!("{}", rows_table(&rows));
    println!("{}", failure_notes(&rows));

    eprintln!("the cost of baton: interleaved A/B runs …");
    let cost = cost_of_baton(&rt, &plan);
    println!("## The cost of baton (no reloads)\n");
    println!("{}", cost_table(&cost, &plan));

    eprintln!("baton's own reload latency …");
    let latency = reload_latency(&plan);
    println!("## What baton adds to a reload\n");
    println!("{}", latency.table());

    eprintln!("soak: {} reloads in a row …", plan.soak_reloads);
    let soak = soak(&rt, &plan);
    println!("## Soak\n");
    println!("{}", soak.table());

    println!("## Targets (reported, not asserted)\n");
    println!("{}", targets(&rows, &cost, &latency, &soak));

    match chart(&rows, &plan) {
        Ok(()) => println!("chart: {}", plan.svg.display()),
        Err(err) => println!("chart: cannot write {}: {err}", plan.svg.display()),
    }
    println!(
        "load average at the end: {}\nthe whole bench took {:.0} s",
        load_average(),
        began.elapsed().as_secs_f64()
    );
}
