//! The targets, reported against what was measured (not asserted).

use std::fmt::Write as _;
use std::time::Duration;

use crate::cost::Cost;
use crate::latency::Latency;
use crate::rows::Row;
use crate::servers::System;
use crate::soak::Soak;
use crate::stats::{median, median_f64, ms};

pub fn targets(rows: &[Row], costs: &[Cost], latency: &Latency, soak: &Soak) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    let mut out = String::from("| target | measured | verdict |\n|---|---|---|\n");
    let baton_rows: Vec<&Row> = rows.iter().filter(|r| r.system == System::Baton).collect();
    let failed: Vec<String> = baton_rows
        .iter()
        .map(|r| {
            format!(
                "{} @ {} ms: {}",
                r.mode,
                r.interval.as_millis(),
                r.report.failed_total()
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "| baton: 0 failed requests, both traffic kinds, every rate down to 100 ms | {} | {} |",
        failed.join("; "),
        verdict(baton_rows.iter().all(|r| r.report.failed_total() == 0))
    );
    let added = median(&latency.added()).unwrap_or_default();
    let _ = writeln!(
        out,
        "| what baton adds to a reload < 5 ms (median) | {} (SIGHUP → main {}, READY=1 → stop {}) | {} |",
        ms(Some(added)),
        ms(median(&latency.sighup_to_main)),
        ms(median(&latency.ready_to_stop)),
        verdict(added < Duration::from_millis(5))
    );
    let ratios: Vec<String> = costs
        .iter()
        .map(|c| format!("{} {:.3}", c.mode, median_f64(&c.ratios())))
        .collect();
    let _ = writeln!(
        out,
        "| throughput under baton ≥ 0.98 × alone (median ratio) | {} | {} |",
        ratios.join(", "),
        verdict(costs.iter().all(|c| median_f64(&c.ratios()) >= 0.98))
    );
    let _ = writeln!(
        out,
        "| soak: fd count unchanged | {} → {} | {} |",
        soak.before.fds,
        soak.after.fds,
        verdict(soak.before.fds == soak.after.fds)
    );
    let _ = writeln!(
        out,
        "| soak: RSS growth < 1 MB | {:+} kB | {} |",
        soak.growth_kb(),
        verdict(soak.growth_kb() < 1024)
    );
    let _ = writeln!(
        out,
        "| soak: baton RSS < 10 MB | {:.1} MB | {} |",
        soak.after.rss_kb as f64 / 1024.0,
        verdict(soak.after.rss_kb.max(soak.before.rss_kb) < 10 * 1024)
    );
    let _ = writeln!(
        out,
        "| soak: 0 failed requests | {} | {} |",
        soak.failed(),
        verdict(soak.failed() == 0)
    );
    out
}
