//! The table of docs/any-server.md, from one run: each server under baton,
//! reloaded under new-connection load and then under keep-alive load, with
//! what failed per reload and how long each generation took to be ready.
//!
//! ```sh
//! cargo run --release --example any-server-table            # 10 reloads per row and load
//! cargo run --release --example any-server-table -- 20      # 20
//! cargo run --release --example any-server-table -- 10 node # rows whose name has "node"
//! ```
//!
//! It needs the runtimes `.ci/run` installs (Go, node, nginx, gunicorn,
//! uvicorn, Server::Starter); a row whose server cannot run says why.
//! Rows marked `preload` run only with a baton that has `--preload`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::time::Instant;

use baton_e2e::baton_bin;
use baton_e2e::recipes::{self, Run, Server};
use baton_loadgen::{FailureKind, Mode};

/// Each row: one line. The order is the table's.
const ROWS: &[fn() -> Server] = &[
    recipes::node_unchanged,
    recipes::node_lameduck,
    recipes::python_http_server,
    recipes::nginx,
    recipes::gunicorn,
    recipes::uvicorn_fd,
    recipes::uvicorn_lameduck,
    recipes::go_plain,
    recipes::go_lameduck,
    recipes::rust_listenfd,
    recipes::rust_baton_worker,
    recipes::server_starter,
    recipes::einhorn,
];

/// Concurrent clients of each load.
const CLIENTS: usize = 8;

fn main() {
    let reloads: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("usage: any-server-table [RELOADS [NAME]]"))
        .unwrap_or(10);
    let only = std::env::args().nth(2).unwrap_or_default();
    eprintln!("building baton and the servers …");
    let baton = baton_bin();
    let preload = help_mentions(baton, "--preload");
    let began = Instant::now();
    let header = header(reloads);
    let mut lines = Vec::new();
    let mut notes = Vec::new();
    for make in ROWS {
        let (name, needs_preload) = {
            let probe = catch_unwind(*make);
            match probe {
                Ok(server) => (server.name, server.preload),
                Err(_) => {
                    notes.push("a row's server could not be prepared (see stderr)".to_owned());
                    continue;
                }
            }
        };
        if !name.contains(only.as_str()) {
            continue;
        }
        if needs_preload && !preload {
            notes.push(format!("{name}: not run, this baton has no `--preload`"));
            continue;
        }
        eprintln!("{name} …");
        let runs = catch_unwind(AssertUnwindSafe(|| {
            [Mode::NewConnection, Mode::KeepAlive].map(|mode| {
                let server = make();
                let run = recipes::reloads_under_load(&server, mode, CLIENTS, reloads);
                eprintln!("    {mode}: {}", run.report.summary());
                (server, run)
            })
        }));
        match runs {
            Ok([(server, new), (_, keep)]) => {
                lines.push(row(&server, &new, &keep));
                for (mode, run) in [("new connections", &new), ("keep-alive", &keep)] {
                    if let Some(kinds) = failures(run) {
                        notes.push(format!("{name}, {mode}: {kinds}"));
                    }
                }
            }
            Err(_) => notes.push(format!("{name}: the run failed (see stderr)")),
        }
    }
    println!("{header}");
    println!(
        "| Server | Socket | Ready | Failed per reload: new connections | Failed per reload: keep-alive | Time to ready: median (min–max) | Command |"
    );
    println!("|---|---|---|---:|---:|---|---|");
    for line in &lines {
        println!("{line}");
    }
    if !notes.is_empty() {
        println!();
        for note in &notes {
            println!("- {note}");
        }
    }
    println!(
        "\nThe whole run took {:.0} s; load average at the end: {}.",
        began.elapsed().as_secs_f64(),
        load_average()
    );
}

fn row(server: &Server, new: &Run, keep: &Run) -> String {
    let mut ready = new.ready_ms.clone();
    ready.extend(&keep.ready_ms);
    ready.sort_unstable();
    let (min, median, max) = (ready[0], ready[ready.len() / 2], ready[ready.len() - 1]);
    format!(
        "| {} | {} | {} | {} | {} | {median} ms ({min}–{max}) | `{}` |",
        server.name,
        server.socket,
        server.ready(),
        per_reload(new),
        per_reload(keep),
        server.command_line()
    )
}

/// `0`, or the failed requests per reload with one decimal.
fn per_reload(run: &Run) -> String {
    if run.report.failed_total() == 0 {
        format!("0 (of {})", run.report.started)
    } else {
        format!("**{:.1}**", run.failed_per_reload())
    }
}

/// The failures by kind, when there were any.
fn failures(run: &Run) -> Option<String> {
    let kinds: Vec<String> = FailureKind::ALL
        .iter()
        .filter(|&&k| run.report.failures(k) > 0)
        .map(|&k| format!("{k} {}", run.report.failures(k)))
        .collect();
    (!kinds.is_empty()).then(|| {
        format!(
            "{} failed of {} requests in {} reloads ({})",
            run.report.failed_total(),
            run.report.started,
            run.reloads,
            kinds.join(", ")
        )
    })
}

fn header(reloads: u64) -> String {
    let python = recipes::python();
    // Each as its program says it, names added where it says none.
    let versions = [
        first_line(baton_bin().to_str().unwrap_or("baton"), &["--version"]),
        first_line("go", &["version"]),
        format!("node {}", first_line("node", &["--version"])),
        first_line("/usr/sbin/nginx", &["-v"]),
        format!(
            "gunicorn {}",
            first_line(
                python,
                &["-c", "import gunicorn; print(gunicorn.__version__)"]
            )
        ),
        format!(
            "uvicorn {}",
            first_line(
                python,
                &["-c", "import uvicorn; print(uvicorn.__version__)"]
            )
        ),
        first_line(python, &["--version"]),
        format!(
            "perl {}",
            first_line("perl", &["-e", "print substr($^V, 1)"])
        ),
    ];
    format!(
        "# Servers under baton\n\n\
         - date: {}\n\
         - machine: {} cores ({}), Linux {}, load average at the start {}\n\
         - versions: {}\n\
         - each row: a fresh baton per load; {CLIENTS} closed-loop clients, first opening a new \
         connection per request, then each keeping one connection alive; {reloads} reloads per load, \
         each waiting until the new generation is ready and the old one has exited\n",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        load_average(),
        versions.join(", "),
    )
}

/// Whether `baton run --help` names `flag`.
fn help_mentions(baton: &std::path::Path, flag: &str) -> bool {
    Command::new(baton)
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// The first line a command writes (stdout, else stderr), or "not installed".
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(_) => "not installed".to_owned(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
