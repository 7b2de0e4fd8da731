//! What one client task records, and the report merged from all of them.
//!
//! Each task records into its own [`Recorder`] with no sharing, so
//! recording costs a push and a few additions; the merge happens once, at
//! the end.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use crate::classify::FailureKind;

/// One slice of the timeline: what ended during
/// `[start, start + width)` after the load started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Offset of the bucket from the start of the load.
    pub start: Duration,
    /// Requests that ended ok in this bucket.
    pub ok: u64,
    /// Requests that failed in this bucket.
    pub failed: u64,
}

/// Latencies of the successful requests, sorted, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latencies {
    sorted_us: Vec<u32>,
}

impl Latencies {
    /// From unsorted microsecond values.
    pub fn from_micros(mut us: Vec<u32>) -> Self {
        us.sort_unstable();
        Latencies { sorted_us: us }
    }

    /// Every latency, sorted ascending, in microseconds.
    pub fn as_micros(&self) -> &[u32] {
        &self.sorted_us
    }

    /// Number of latencies (the number of successful requests).
    pub fn len(&self) -> usize {
        self.sorted_us.len()
    }

    /// Whether there is no latency at all.
    pub fn is_empty(&self) -> bool {
        self.sorted_us.is_empty()
    }

    /// The nearest-rank percentile: the smallest latency that at least `p`
    /// percent of the requests did not exceed. `p` is clamped to
    /// `0.0..=100.0`; `None` when there is no latency.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.sorted_us.len();
        if n == 0 {
            return None;
        }
        let p = if p.is_nan() {
            100.0
        } else {
            p.clamp(0.0, 100.0)
        };
        // Nearest rank: ceil(p/100 * n), 1-based; rank 0 (p = 0) is the min.
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let index = rank.saturating_sub(1).min(n - 1);
        Some(micros(self.sorted_us[index]))
    }

    /// The fastest request.
    pub fn min(&self) -> Option<Duration> {
        self.sorted_us.first().copied().map(micros)
    }

    /// The slowest request.
    pub fn max(&self) -> Option<Duration> {
        self.sorted_us.last().copied().map(micros)
    }

    /// The arithmetic mean.
    pub fn mean(&self) -> Option<Duration> {
        if self.sorted_us.is_empty() {
            return None;
        }
        let sum: u64 = self.sorted_us.iter().map(|&us| u64::from(us)).sum();
        Some(Duration::from_micros(sum / self.sorted_us.len() as u64))
    }
}

fn micros(us: u32) -> Duration {
    Duration::from_micros(u64::from(us))
}

/// The outcome of a load run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests started; every one of them is counted in `ok` or `failed`.
    pub started: u64,
    /// Requests that ended with a complete 2xx response.
    pub ok: u64,
    /// Failed requests by kind; kinds that never happened are absent.
    pub failed: BTreeMap<FailureKind, u64>,
    /// The first few failures as text (at most 10), for diagnosis.
    pub error_samples: Vec<String>,
    /// Latency of every successful request: from the moment it was
    /// admitted (so including any connect) to its last body byte.
    pub latencies: Latencies,
    /// Distinct values of the tracked header over the successful responses,
    /// with how many responses carried each.
    pub header_values: BTreeMap<String, u64>,
    /// Ok and failed requests per bucket, from the start to the end of the
    /// load, empty buckets included (a gap in a chart is a finding).
    pub timeline: Vec<Bucket>,
    /// Width of each timeline bucket.
    pub bucket_width: Duration,
    /// From the start of the load until its last request ended.
    pub elapsed: Duration,
}

impl Report {
    /// All failed requests, any kind.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Failed requests of one kind.
    pub fn failures(&self, kind: FailureKind) -> u64 {
        self.failed.get(&kind).copied().unwrap_or(0)
    }

    /// Latency percentile of the successful requests, `p` in percent
    /// (`50.0`, `99.0`); see [`Latencies::percentile`].
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        self.latencies.percentile(p)
    }

    /// How many distinct values of the tracked header were seen (with
    /// `x-pid`: how many workers answered).
    pub fn distinct_header_values(&self) -> usize {
        self.header_values.len()
    }

    /// Requests (ok or failed) ended per second over the whole run.
    pub fn requests_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.ok + self.failed_total()) as f64 / secs
        } else {
            0.0
        }
    }

    /// One line for logs and test failures:
    /// `requests=.. ok=.. failed=.. (refused=.. connect_other=.. reset=..
    /// closed=.. status=.. timeout=.. other=..) rps=.. p50=.. p99=.. max=..`.
    /// Every kind is listed, zero or not, so lines line up and grep well.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "requests={} ok={} failed={} (",
            self.started,
            self.ok,
            self.failed_total()
        );
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let _ = write!(line, "{sep}{kind}={}", self.failures(*kind));
        }
        let _ = write!(
            line,
            ") rps={:.0} p50={} p99={} max={}",
            self.requests_per_second(),
            Ms(self.percentile(50.0)),
            Ms(self.percentile(99.0)),
            Ms(self.latencies.max()),
        );
        line
    }
}

/// A latency in milliseconds with microsecond precision, or `-`.
struct Ms(Option<Duration>);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{:.3}ms", d.as_secs_f64() * 1000.0),
            None => f.write_str("-"),
        }
    }
}

/// What one client task saw.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    bucket: Duration,
    ok: u64,
    failed: [u64; FailureKind::ALL.len()],
    latencies_us: Vec<u32>,
    header_values: BTreeMap<String, u64>,
    /// `[ok, failed]` per bucket index.
    timeline: Vec<[u64; 2]>,
    /// When the task's last request ended.
    pub(crate) last_end: Instant,
}

impl Recorder {
    pub(crate) fn new(start: Instant, bucket: Duration) -> Self {
        Recorder {
            start,
            bucket,
            ok: 0,
            failed: [0; FailureKind::ALL.len()],
            latencies_us: Vec::new(),
            header_values: BTreeMap::new(),
            timeline: Vec::new(),
            last_end: start,
        }
    }

    pub(crate) fn ok(&mut self, latency: Duration, ended: Instant, header: Option<&[u8]>) {
        self.ok += 1;
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        if let Some(value) = header {
            // Looking up by &str first saves an allocation per request: the
            // set of values (worker pids) is small and repeats.
            let value = String::from_utf8_lossy(value);
            match self.header_values.get_mut(value.as_ref()) {
                Some(count) => *count += 1,
                None => {
                    self.header_values.insert(value.into_owned(), 1);
                }
            }
        }
        self.bucket_at(ended)[0] += 1;
    }

    pub(crate) fn failed(&mut self, kind: FailureKind, ended: Instant) {
        self.failed[kind.index()] += 1;
        self.bucket_at(ended)[1] += 1;
    }

    fn bucket_at(&mut self, ended: Instant) -> &mut [u64; 2] {
        self.last_end = self.last_end.max(ended);
        let index = bucket_index(ended.saturating_duration_since(self.start), self.bucket);
        if self.timeline.len() <= index {
            self.timeline.resize(index + 1, [0, 0]);
        }
        &mut self.timeline[index]
    }
}

fn bucket_index(offset: Duration, width: Duration) -> usize {
    usize::try_from(offset.as_nanos() / width.as_nanos()).unwrap_or(usize::MAX - 1)
}

/// Merges the task records into a report.
pub(crate) fn merge(
    start: Instant,
    bucket: Duration,
    started: u64,
    recorders: Vec<Recorder>,
    error_samples: Vec<String>,
) -> Report {
    let mut ok = 0;
    let mut failed_by_index = [0u64; FailureKind::ALL.len()];
    let mut latencies = Vec::with_capacity(recorders.iter().map(|r| r.latencies_us.len()).sum());
    let mut header_values = BTreeMap::new();
    let mut timeline: Vec<[u64; 2]> = Vec::new();
    let mut end = start;
    for rec in recorders {
        ok += rec.ok;
        for (total, n) in failed_by_index.iter_mut().zip(rec.failed) {
            *total += n;
        }
        latencies.extend_from_slice(&rec.latencies_us);
        for (value, n) in rec.header_values {
            *header_values.entry(value).or_insert(0) += n;
        }
        if timeline.len() < rec.timeline.len() {
            timeline.resize(rec.timeline.len(), [0, 0]);
        }
        for (total, b) in timeline.iter_mut().zip(&rec.timeline) {
            total[0] += b[0];
            total[1] += b[1];
        }
        end = end.max(rec.last_end);
    }
    let elapsed = end.saturating_duration_since(start);
    // Cover the whole run, trailing quiet buckets included.
    let buckets = (elapsed.as_nanos().div_ceil(bucket.as_nanos()) as usize).max(timeline.len());
    timeline.resize(buckets, [0, 0]);
    let failed = FailureKind::ALL
        .iter()
        .zip(failed_by_index)
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| (*kind, n))
        .collect();
    Report {
        started,
        ok,
        failed,
        error_samples,
        latencies: Latencies::from_micros(latencies),
        header_values,
        timeline: timeline
            .into_iter()
            .enumerate()
            .map(|(i, [ok, failed])| Bucket {
                start: bucket * i as u32,
                ok,
                failed,
            })
            .collect(),
        bucket_width: bucket,
        elapsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let l = Latencies::from_micros((1..=100).rev().collect());
        assert_eq!(l.percentile(50.0), Some(Duration::from_micros(50)));
        assert_eq!(l.percentile(99.0), Some(Duration::from_micros(99)));
        assert_eq!(l.percentile(99.5), Some(Duration::from_micros(100)));
        assert_eq!(l.percentile(100.0), Some(Duration::from_micros(100)));
        assert_eq!(l.percentile(0.0), Some(Duration::from_micros(1)));
        assert_eq!(l.percentile(250.0), Some(Duration::from_micros(100)));
        assert_eq!(l.min(), Some(Duration::from_micros(1)));
        assert_eq!(l.max(), Some(Duration::from_micros(100)));
        assert_eq!(l.mean(), Some(Duration::from_micros(50)));

        let one = Latencies::from_micros(vec![7]);
        assert_eq!(one.percentile(1.0), Some(Duration::from_micros(7)));
        assert_eq!(Latencies::default().percentile(50.0), None);
    }

    #[test]
    fn merge_adds_up_tasks_and_fills_the_timeline() {
        let start = Instant::now();
        let mut a = Recorder::new(start, ms(100));
        let mut b = Recorder::new(start, ms(100));
        a.ok(ms(2), start + ms(10), Some(b"11"));
        a.ok(ms(4), start + ms(20), Some(b"11"));
        a.failed(FailureKind::Reset, start + ms(150));
        b.ok(ms(1), start + ms(350), Some(b"12"));
        b.failed(FailureKind::Refused, start + ms(360));
        b.failed(FailureKind::Refused, start + ms(370));
        let report = merge(start, ms(100), 7, vec![a, b], vec!["x".into()]);

        assert_eq!(report.started, 7);
        assert_eq!(report.ok, 3);
        assert_eq!(report.failed_total(), 3);
        assert_eq!(report.failures(FailureKind::Refused), 2);
        assert_eq!(report.failures(FailureKind::Reset), 1);
        assert_eq!(report.failures(FailureKind::Timeout), 0);
        assert!(!report.failed.contains_key(&FailureKind::Timeout));
        assert_eq!(report.latencies.as_micros(), &[1000, 2000, 4000]);
        assert_eq!(
            report.header_values,
            BTreeMap::from([("11".to_owned(), 2), ("12".to_owned(), 1)])
        );
        assert_eq!(report.elapsed, ms(370));
        let timeline: Vec<_> = report
            .timeline
            .iter()
            .map(|b| (b.start, b.ok, b.failed))
            .collect();
        assert_eq!(
            timeline,
            vec![
                (ms(0), 2, 0),
                (ms(100), 0, 1),
                (ms(200), 0, 0),
                (ms(300), 1, 2)
            ]
        );
    }

    #[test]
    fn summary_lists_every_kind() {
        let start = Instant::now();
        let mut a = Recorder::new(start, ms(100));
        a.ok(ms(1), start + ms(500), None);
        a.failed(FailureKind::Status, start + ms(1000));
        let report = merge(start, ms(100), 2, vec![a], Vec::new());
        assert_eq!(
            report.summary(),
            "requests=2 ok=1 failed=1 (refused=0 connect_other=0 reset=0 closed=0 \
             status=1 timeout=0 other=0) rps=2 p50=1.000ms p99=1.000ms max=1.000ms"
        );
        assert_eq!(report.distinct_header_values(), 0);
        let empty = merge(start, ms(100), 0, Vec::new(), Vec::new());
        assert!(empty.summary().ends_with("rps=0 p50=- p99=- max=-"));
        assert!(empty.timeline.is_empty());
    }
}
