//! The `process_*` metrics every Prometheus client library exports for its
//! own process, here for baton itself, read from `/proc/self` at scrape
//! time (a handful of small files: microseconds). Names and meanings are
//! those of the client libraries', so dashboards made for any exporter work.

use std::sync::OnceLock;

/// What `/proc/self` says about baton. A figure the kernel would not give
/// is `None`, and its family is left out rather than reported as zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelfUsage {
    /// User and system CPU time.
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`; `None` when unlimited.
    pub max_fds: Option<u64>,
    /// When baton started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl SelfUsage {
    /// Read baton's own figures now.
    pub fn read() -> SelfUsage {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        // After "(comm) ": the fields from the third on (state = index 0).
        let fields: Vec<&str> = stat
            .as_deref()
            .and_then(|s| s.rsplit_once(") "))
            .map(|(_, rest)| rest.split(' ').collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let ticks = clock_ticks();
        SelfUsage {
            cpu_seconds: field(11)
                .zip(field(12))
                .zip(ticks)
                .map(|((utime, stime), hz)| (utime + stime) as f64 / hz),
            resident_memory_bytes: status_kib("VmRSS:").map(|kib| kib * 1024),
            virtual_memory_bytes: field(20),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|limits| soft_limit(&limits, "Max open files")),
            start_time_seconds: field(19)
                .zip(ticks)
                .zip(boot_time())
                .map(|((start, hz), boot)| boot + start as f64 / hz),
        }
    }

    /// Append the families in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                let _ = writeln!(out, "{name} {value}");
            }
        };
        let text = |v: Option<u64>| v.map(|v| v.to_string());
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|v| v.to_string()),
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            text(self.resident_memory_bytes),
        );
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            text(self.virtual_memory_bytes),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            text(self.open_fds),
        );
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            text(self.max_fds),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds.map(|v| v.to_string()),
        );
    }
}

/// A value in kibibytes from `/proc/self/status`.
fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit of one row of `/proc/PID/limits`; `None` if unlimited.
fn soft_limit(limits: &str, row: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix(row))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times.
fn clock_ticks() -> Option<f64> {
    static HZ: OnceLock<Option<f64>> = OnceLock::new();
    *HZ.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&hz| hz > 0)
            .map(|hz| hz as f64)
    })
}

/// When the system booted, in seconds since the Unix epoch (`btime` of
/// `/proc/stat`); process start times count from it.
fn boot_time() -> Option<f64> {
    static BOOT: OnceLock<Option<f64>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let usage = SelfUsage::read();
        assert!(usage.cpu_seconds.is_some_and(|s| s >= 0.0), "{usage:?}");
        assert!(usage.resident_memory_bytes.is_some_and(|b| b > 1 << 20));
        assert!(usage.virtual_memory_bytes.unwrap() >= usage.resident_memory_bytes.unwrap());
        assert!(usage.open_fds.is_some_and(|n| n >= 3), "{usage:?}");
        let now = crate::status::unix_now();
        let start = usage.start_time_seconds.expect("a start time");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        let mut out = String::new();
        usage.render(&mut out);
        assert!(out.contains("\n# TYPE process_open_fds gauge\nprocess_open_fds "));
    }

    #[test]
    fn an_unlimited_soft_limit_is_none() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n\
                      Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024));
        assert_eq!(soft_limit(limits, "Max locked memory"), None);
    }
}
