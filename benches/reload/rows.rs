//! Reloads under load: one row per system × traffic kind × interval.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use baton_loadgen::{Config, FailureKind, Load, Mode, Report};
use tokio::runtime::Runtime;

use crate::procfs::proc_stats;
use crate::servers::{Reload, System};
use crate::stats::{median, ms};
use crate::{Options, REQUEST_TIMEOUT};

/// One system × traffic kind × reload interval.
pub struct Row {
    pub system: System,
    pub mode: Mode,
    pub interval: Duration,
    pub report: Report,
    /// Trigger offsets from the start of the load, and the timings.
    pub reloads: Vec<(Duration, Reload)>,
    /// The supervisor's RSS at the end (kB) and CPU time over the row.
    pub supervisor: Option<(u64, Duration)>,
    pub notes: Option<String>,
}

pub fn run_row(
    rt: &Runtime,
    system: System,
    mode: Mode,
    interval: Duration,
    plan: &Options,
) -> Row {
    let mut server = system.start();
    let pid = server.supervisor_pid();
    let cpu_before = pid.map(|p| proc_stats(p).cpu);
    let start = Instant::now();
    let load = Load::start(Config {
        mode,
        clients: plan.clients,
        duration: plan.duration,
        timeout: REQUEST_TIMEOUT,
        ..Config::new(server.addr())
    })
    .expect("a valid load config");
    let end = start + plan.duration;
    let mut reloads = Vec::new();
    let mut next = start + interval;
    // The last reload is triggered at least R before the load ends.
    while next + interval <= end {
        sleep_until(next);
        let reload = server.reload();
        reloads.push((reload.trigger - start, reload));
        next = (next + interval).max(Instant::now());
    }
    let report = rt.block_on(load.finish());
    let supervisor = pid.map(|p| {
        let stats = proc_stats(p);
        (stats.rss_kb, stats.cpu - cpu_before.unwrap_or_default())
    });
    let notes = server.notes();
    server.stop();
    Row {
        system,
        mode,
        interval,
        report,
        reloads,
        supervisor,
        notes,
    }
}

pub fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Failures in the three columns of the table.
pub fn failures(report: &Report) -> (u64, u64, u64) {
    let refused = report.failures(FailureKind::Refused);
    let reset = report.failures(FailureKind::Reset) + report.failures(FailureKind::Closed);
    (refused, reset, report.failed_total() - refused - reset)
}

pub fn rows_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| system | traffic | R | reloads | requests | failed | refused | reset | other | failed/reload | req/s | p50 | p99 | max | reload: ready (med / max) | reload: done (med / max) | supervisor RSS | supervisor CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let r = &row.report;
        let (refused, reset, other) = failures(r);
        let n = row.reloads.len();
        let per_reload = if n == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", r.failed_total() as f64 / n as f64)
        };
        let ready: Vec<Duration> = row.reloads.iter().map(|(_, t)| t.until_ready()).collect();
        let done: Vec<Duration> = row.reloads.iter().map(|(_, t)| t.until_done()).collect();
        let (rss, cpu) = match row.supervisor {
            Some((rss, cpu)) => (
                format!("{:.1} MB", rss as f64 / 1024.0),
                format!("{} ms", cpu.as_millis()),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let failed = if row.system == System::Baton && r.failed_total() > 0 {
            format!("**{}** (target 0)", r.failed_total())
        } else {
            r.failed_total().to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} ms | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} / {} | {} / {} | {} | {} |",
            row.system.name(),
            row.mode,
            row.interval.as_millis(),
            n,
            r.started,
            failed,
            refused,
            reset,
            other,
            per_reload,
            r.requests_per_second(),
            ms(r.percentile(50.0)),
            ms(r.percentile(99.0)),
            ms(r.latencies.max()),
            ms(median(&ready)),
            ms(ready.iter().max().copied()),
            ms(median(&done)),
            ms(done.iter().max().copied()),
            rss,
            cpu,
        );
    }
    out
}

/// The kinds behind "reset" and "other", and a sample error, per row that
/// failed.
pub fn failure_notes(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        if let Some(notes) = &row.notes {
            let _ = writeln!(
                out,
                "- {} · {} · {} ms: {notes}",
                row.system.name(),
                row.mode,
                row.interval.as_millis(),
            );
        }
    }
    for row in rows.iter().filter(|r| r.report.failed_total() > 0) {
        let kinds: Vec<String> = row
            .report
            .failed
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "- {} · {} · {} ms: {}; e.g. `{}`",
            row.system.name(),
            row.mode,
            row.interval.as_millis(),
            kinds.join(" "),
            row.report.error_samples.first().map_or("", String::as_str)
        );
    }
    if out.is_empty() {
        out.push_str("(no row failed a request, no note)\n");
    }
    out
}
