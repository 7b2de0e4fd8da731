//! Soak: many reloads in a row under light load, baton's RSS, fds and
//! CPU before and after.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use baton_loadgen::{Config, Load, Mode, Report};
use tokio::runtime::Runtime;

use crate::procfs::{ProcStats, proc_stats};
use crate::servers::{BatonServer, Server};
use crate::{Options, REQUEST_TIMEOUT};

pub struct Soak {
    pub reloads: u64,
    pub before: ProcStats,
    pub after: ProcStats,
    /// (reloads done, RSS kB, anonymous RSS kB) along the way.
    pub rss: Vec<(u64, u64, u64)>,
    /// After the pause and the further reloads: (pause, reloads, stats
    /// after the pause, stats at the end).
    pub settle: Option<(Duration, u64, ProcStats, ProcStats)>,
    pub reports: Vec<Report>,
    pub took: Duration,
}

pub fn soak(rt: &Runtime, plan: &Options) -> Soak {
    let mut baton = BatonServer::start();
    let pid = baton.baton.pid();
    // Light load: 2 clients of each kind, 50 requests per second each.
    let loads: Vec<Load> = [Mode::NewConnection, Mode::KeepAlive]
        .into_iter()
        .map(|mode| {
            Load::start(Config {
                mode,
                clients: 2,
                rate_per_client: Some(50.0),
                duration: Duration::from_secs(1800),
                timeout: REQUEST_TIMEOUT,
                ..Config::new(baton.addr())
            })
            .expect("a valid load config")
        })
        .collect();
    for load in &loads {
        rt.block_on(load.wait_for(|s| s.ok >= 10))
            .expect("the load runs");
    }
    let before = proc_stats(pid);
    let mut rss = vec![(0, before.rss_kb, before.anon_kb)];
    let started = Instant::now();
    for n in 1..=plan.soak_reloads {
        baton.reload();
        if n % (plan.soak_reloads / 10).max(1) == 0 {
            let now = proc_stats(pid);
            rss.push((n, now.rss_kb, now.anon_kb));
        }
    }
    let took = started.elapsed();
    // baton closes an exited generation's notify socket when its runtime
    // drops the aborted receiver task, just after the `exited` line: let
    // it get there before counting descriptors.
    std::thread::sleep(Duration::from_millis(500));
    let after = proc_stats(pid);
    let settle = plan.soak_settle.map(|(pause, more)| {
        eprintln!("    pausing {pause:?}, then {more} more reloads …");
        std::thread::sleep(pause);
        let paused = proc_stats(pid);
        for _ in 0..more {
            baton.reload();
        }
        std::thread::sleep(Duration::from_millis(500));
        (pause, more, paused, proc_stats(pid))
    });
    for load in &loads {
        load.stop();
    }
    let reports = loads
        .into_iter()
        .map(|load| rt.block_on(load.finish()))
        .collect();
    baton.stop();
    Soak {
        reloads: plan.soak_reloads,
        before,
        after,
        rss,
        settle,
        reports,
        took,
    }
}

impl Soak {
    pub fn growth_kb(&self) -> i64 {
        self.after.rss_kb as i64 - self.before.rss_kb as i64
    }

    pub fn failed(&self) -> u64 {
        self.reports.iter().map(Report::failed_total).sum()
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{} reloads in a row (each waits for the new worker's READY=1 and the old worker's exit), {:.1} s, \
             light load: 2 new-connection + 2 keep-alive clients at 50 req/s each; \
             \"after\" is read 0.5 s after the last reload\n\n\
             | | before | after | change |\n|---|---:|---:|---:|\n",
            self.reloads,
            self.took.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| baton RSS | {} kB | {} kB | {:+} kB |",
            self.before.rss_kb,
            self.after.rss_kb,
            self.growth_kb()
        );
        let _ = writeln!(
            out,
            "| baton open fds | {} | {} | {:+} |",
            self.before.fds,
            self.after.fds,
            self.after.fds as i64 - self.before.fds as i64
        );
        let _ = writeln!(
            out,
            "| baton CPU time | {} ms | {} ms | {:+} ms ({:.2} ms per reload) |",
            self.before.cpu.as_millis(),
            self.after.cpu.as_millis(),
            (self.after.cpu - self.before.cpu).as_millis(),
            (self.after.cpu - self.before.cpu).as_secs_f64() * 1000.0 / self.reloads as f64
        );
        let trend: Vec<String> = self
            .rss
            .iter()
            .map(|(n, kb, anon)| format!("{n}: {kb} ({anon})"))
            .collect();
        let _ = writeln!(
            out,
            "\nRSS (anonymous part) in kB after N reloads: {}",
            trend.join(", ")
        );
        if let Some((pause, more, paused, end)) = &self.settle {
            let _ = writeln!(
                out,
                "\nthen a {:.0} s pause: RSS {} kB ({}); then {more} more reloads: RSS {} kB ({}), {:+} kB; fds {}",
                pause.as_secs_f64(),
                paused.rss_kb,
                paused.anon_kb,
                end.rss_kb,
                end.anon_kb,
                end.rss_kb as i64 - paused.rss_kb as i64,
                end.fds,
            );
        }
        out.push('\n');
        for report in &self.reports {
            let _ = writeln!(out, "- {}", report.summary());
        }
        let _ = writeln!(out, "\nfailed requests during the soak: {}", self.failed());
        out
    }
}
