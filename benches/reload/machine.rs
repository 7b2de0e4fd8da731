//! The machine and the versions, for the report's header.

use std::process::Command;

use crate::procfs::load_average;
use crate::{Options, REQUEST_TIMEOUT};

pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub load: String,
    pub rustc: String,
    pub baton: String,
    pub commit: String,
    pub start_server: Option<String>,
    pub perl: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let manifest = env!("CARGO_MANIFEST_DIR");
        let commit = output("git", &["-C", manifest, "rev-parse", "--short", "HEAD"]);
        let commit = if commit.is_empty() {
            "unknown".to_owned()
        } else {
            commit
        };
        let dirty = !output("git", &["-C", manifest, "status", "--porcelain"]).is_empty();
        Machine {
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            load: load_average(),
            rustc: output("rustc", &["--version"]),
            baton: output(
                &baton_e2e::baton_bin().display().to_string(),
                &["--version"],
            ),
            commit: if dirty {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            },
            start_server: Command::new("start_server")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
            perl: output("perl", &["-e", "print substr($^V, 1)"]),
        }
    }

    pub fn header(&self, plan: &Options) -> String {
        let intervals: Vec<String> = plan
            .intervals
            .iter()
            .map(|i| format!("{} ms", i.as_millis()))
            .collect();
        format!(
            "# baton reload benchmark{}\n\n\
             - date: {}\n\
             - machine: {} cores ({}), Linux {}, load average at the start {}\n\
             - {} (commit {}), {}\n\
             - start_server: {}\n\
             - load: {} clients, closed loop, {} s per row, request timeout {} s; reload every {}\n",
            if plan.quick { " (--quick)" } else { "" },
            self.date,
            self.cores,
            self.cpu,
            self.kernel,
            self.load,
            self.baton,
            self.commit,
            self.rustc,
            self.start_server.as_ref().map_or_else(
                || "not installed".to_owned(),
                |v| format!(
                    "Server::Starter {v} (Debian libserver-starter-perl), perl {}",
                    self.perl
                )
            ),
            plan.clients,
            plan.duration.as_secs_f64(),
            REQUEST_TIMEOUT.as_secs(),
            intervals.join(" and "),
        )
    }
}

/// The trimmed stdout of a command, or "" if it cannot run.
pub fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
