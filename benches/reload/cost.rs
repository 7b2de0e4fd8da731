//! The cost of baton: no reloads, under baton vs. bound directly.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use baton_loadgen::{Config, Load, Mode};
use tokio::runtime::Runtime;

use crate::procfs::proc_stats;
use crate::servers::{BatonServer, RestartServer, Server};
use crate::stats::{median, median_f64, ms};
use crate::{Options, REQUEST_TIMEOUT};

pub struct Cost {
    pub mode: Mode,
    /// (under baton, direct) per pair: requests per second and p99.
    pub pairs: Vec<[(f64, Duration); 2]>,
    /// baton's CPU time over all its runs.
    pub baton_cpu: Duration,
    pub baton_time: Duration,
}

impl Cost {
    pub fn ratios(&self) -> Vec<f64> {
        self.pairs.iter().map(|[a, b]| a.0 / b.0).collect()
    }
}

pub fn cost_of_baton(rt: &Runtime, plan: &Options) -> Vec<Cost> {
    let mut baton = BatonServer::start();
    let mut direct = RestartServer::start();
    let mut costs = Vec::new();
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let run = |addr: SocketAddr, duration: Duration| {
            let load = Load::start(Config {
                mode,
                clients: plan.clients,
                duration,
                timeout: REQUEST_TIMEOUT,
                ..Config::new(addr)
            })
            .expect("a valid load config");
            let report = rt.block_on(load.finish());
            assert_eq!(report.failed_total(), 0, "{}", report.summary());
            (
                report.requests_per_second(),
                report.percentile(99.0).unwrap_or_default(),
            )
        };
        // Warm both up.
        run(baton.addr(), Duration::from_millis(300));
        run(direct.addr(), Duration::from_millis(300));
        let cpu_before = proc_stats(baton.baton.pid()).cpu;
        let mut pairs = Vec::new();
        for i in 0..plan.ab_pairs {
            // A B, B A, A B, …: a drift in the machine's load hits both.
            let (a, b) = if i % 2 == 0 {
                let a = run(baton.addr(), plan.ab_duration);
                (a, run(direct.addr(), plan.ab_duration))
            } else {
                let b = run(direct.addr(), plan.ab_duration);
                (run(baton.addr(), plan.ab_duration), b)
            };
            pairs.push([a, b]);
        }
        costs.push(Cost {
            mode,
            pairs,
            baton_cpu: proc_stats(baton.baton.pid()).cpu - cpu_before,
            baton_time: plan.ab_duration * plan.ab_pairs as u32,
        });
    }
    baton.stop();
    direct.stop();
    costs
}

pub fn cost_table(costs: &[Cost], plan: &Options) -> String {
    let mut out = format!(
        "{} interleaved pairs per traffic kind (A B, B A, …), {} s each, {} clients; ratio = under baton ÷ direct, per pair\n\n\
         | traffic | req/s under baton (median) | req/s direct (median) | ratio median | ratio min … max | p99 under baton (median) | p99 direct (median) | baton CPU during its runs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        plan.ab_pairs,
        plan.ab_duration.as_secs_f64(),
        plan.clients
    );
    for cost in costs {
        let ratios = cost.ratios();
        let a_rps: Vec<f64> = cost.pairs.iter().map(|p| p[0].0).collect();
        let b_rps: Vec<f64> = cost.pairs.iter().map(|p| p[1].0).collect();
        let a_p99: Vec<Duration> = cost.pairs.iter().map(|p| p[0].1).collect();
        let b_p99: Vec<Duration> = cost.pairs.iter().map(|p| p[1].1).collect();
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.3} | {:.3} … {:.3} | {} | {} | {} ms in {:.0} s |",
            cost.mode,
            median_f64(&a_rps),
            median_f64(&b_rps),
            median_f64(&ratios),
            min,
            max,
            ms(median(&a_p99)),
            ms(median(&b_p99)),
            cost.baton_cpu.as_millis(),
            cost.baton_time.as_secs_f64(),
        );
    }
    out
}
