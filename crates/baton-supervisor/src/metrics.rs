//! `--metrics ADDR`: `GET /` (the [status page](page) a person looks
//! at), `GET /metrics` in the Prometheus text format and `GET /status`
//! (the JSON of `baton ctl status`), served with hyper from the snapshot
//! the driver publishes, over HTTP/1 only. Anything else is 404.

pub mod history;
pub mod page;
mod process;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use self::history::CostHistory;
use crate::accept::{AcceptErrors, Slots};
use crate::machine::Phase;
use crate::status::{ListenerHealth, Outcome, Status};

/// The content type of `/metrics`: the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds, in seconds, shared by the duration histograms.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram of durations with fixed buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Record one duration.
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// What the driver publishes for the metrics server.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The status, as `ctl status` reports it.
    pub status: Status,
    /// Request to completion of successful reloads.
    pub reload_duration: Histogram,
    /// Spawn to ready of every generation.
    pub time_to_ready: Histogram,
    /// What each generation cost over the last minutes, for the page.
    pub history: Arc<CostHistory>,
}

/// Render the Prometheus text exposition format (version 0.0.4).
pub fn render(snapshot: &Snapshot) -> String {
    let status = &snapshot.status;
    let c = &status.counters;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "baton_up",
        "gauge",
        "1 while baton runs.",
        &[(String::new(), "1".into())],
    );
    let per_listener = |value: &dyn Fn(&crate::status::ListenerStatus) -> String| {
        status
            .listeners
            .iter()
            .filter(|l| l.health != ListenerHealth::Unchecked)
            .map(|l| (format!("{{name=\"{}\"}}", label_value(&l.name)), value(l)))
            .collect::<Vec<_>>()
    };
    family(
        "baton_listener_up",
        "gauge",
        "1 while the listener listens where it should, 0 while broken.",
        &per_listener(&|l| u8::from(l.health == ListenerHealth::Ok).to_string()),
    );
    family(
        "baton_listener_repairs_total",
        "counter",
        "Times baton repaired the listener after a worker broke it.",
        &per_listener(&|l| l.repairs.to_string()),
    );
    family(
        "baton_build_info",
        "gauge",
        "Always 1; the labels tell which baton runs.",
        &[(
            format!("{{version=\"{}\"}}", label_value(&status.version)),
            "1".into(),
        )],
    );
    let by_state: Vec<(String, String)> = Phase::NAMES
        .iter()
        .map(|&state| {
            let n = status
                .generations
                .iter()
                .filter(|g| g.state == state)
                .count();
            (format!("{{state=\"{state}\"}}"), n.to_string())
        })
        .collect();
    family(
        "baton_generations",
        "gauge",
        "Live generations by state.",
        &by_state,
    );
    // The last reload that ended; none before the first one has.
    let last = status
        .reloads
        .iter()
        .rev()
        .find(|r| r.outcome != Outcome::Pending);
    let at = last.map(|r| r.finished_at.unwrap_or(r.requested_at));
    family(
        "baton_last_reload_timestamp_seconds",
        "gauge",
        "When the last reload ended (ready or failed), in seconds since the Unix epoch.",
        &at.map(|at| (String::new(), at.to_string()))
            .into_iter()
            .collect::<Vec<_>>(),
    );
    family(
        "baton_last_reload_successful",
        "gauge",
        "1 if the last reload that ended succeeded, 0 if it failed.",
        &last
            .map(|r| {
                (
                    String::new(),
                    u8::from(r.outcome == Outcome::Ok).to_string(),
                )
            })
            .into_iter()
            .collect::<Vec<_>>(),
    );
    // Listener health: not reported until ListenerStatus carries it.
    family(
        "baton_reloads_total",
        "counter",
        "Reloads by result.",
        &[
            ("{result=\"ok\"}".into(), c.reloads_ok.to_string()),
            ("{result=\"failed\"}".into(), c.reloads_failed.to_string()),
        ],
    );
    family(
        "baton_worker_crashes_total",
        "counter",
        "Active workers that exited on their own.",
        &[(String::new(), c.crashes.to_string())],
    );
    family(
        "baton_worker_restarts_total",
        "counter",
        "Generations started after a crash rather than by a reload.",
        &[(String::new(), c.restarts.to_string())],
    );
    let per_generation = |value: &dyn Fn(&crate::status::GenerationStatus) -> String| {
        // A generation not sampled yet (up to one sampling interval after
        // its spawn) has no figures: no series rather than zeros.
        status
            .generations
            .iter()
            .filter(|g| g.usage.processes > 0)
            .map(|g| (format!("{{generation=\"{}\"}}", g.generation), value(g)))
            .collect::<Vec<_>>()
    };
    family(
        "baton_worker_cpu_seconds_total",
        "counter",
        "CPU time of each live generation's processes.",
        &per_generation(&|g| g.usage.cpu_seconds.to_string()),
    );
    family(
        "baton_worker_rss_bytes",
        "gauge",
        "Resident memory of each live generation's processes.",
        &per_generation(&|g| g.usage.rss_bytes.to_string()),
    );
    family(
        "baton_worker_open_fds",
        "gauge",
        "Open file descriptors of each live generation's processes.",
        &per_generation(&|g| g.usage.open_fds.to_string()),
    );
    // What `status` flags, so that an alert need not parse it.
    family(
        "baton_worker_stopped_processes",
        "gauge",
        "Processes of each live generation stopped (SIGSTOP, a debugger): they neither serve nor drain.",
        &per_generation(&|g| g.usage.stopped.to_string()),
    );
    let active: Vec<(String, String)> = (status.generations.iter())
        .filter(|g| g.state == "active")
        .map(|g| {
            let silent = u8::from(g.silent).to_string();
            (format!("{{generation=\"{}\"}}", g.generation), silent)
        })
        .collect();
    family(
        "baton_worker_silent",
        "gauge",
        "1 while the active generation has missed its watchdog (--watchdog) and is being replaced.",
        &active,
    );
    family(
        "baton_escaped_processes",
        "gauge",
        "baton's children outside every generation (a worker's setsid daemon), at the last sample.",
        &[(String::new(), status.escaped.len().to_string())],
    );
    let guardian = status.guardian.as_ref();
    family(
        "baton_guardian_up",
        "gauge",
        "1 while the guardian that kills the workers should baton die runs; no sample without one.",
        &guardian
            .map(|g| (String::new(), u8::from(g.pid.is_some()).to_string()))
            .into_iter()
            .collect::<Vec<_>>(),
    );
    family(
        "baton_guardian_restarts_total",
        "counter",
        "Times the guardian died and was replaced.",
        &guardian
            .map(|g| (String::new(), g.restarts.to_string()))
            .into_iter()
            .collect::<Vec<_>>(),
    );
    snapshot.reload_duration.render(
        &mut out,
        "baton_reload_duration_seconds",
        "From the reload request to the new generation ready and the old one signalled.",
    );
    snapshot.time_to_ready.render(
        &mut out,
        "baton_time_to_ready_seconds",
        "From spawn to ready, for every generation.",
    );
    process::SelfUsage::read().render(&mut out);
    out
}

/// `value` as a label value: backslash, double quote and newline escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `/metrics` and `/status` on `listener` until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, snapshots: watch::Receiver<Arc<Snapshot>>) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "metrics server disabled");
            return;
        }
    };
    let slots = Slots::new(MAX_CONNECTIONS);
    let mut errors = AcceptErrors::new("metrics");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                errors.failed(error).await;
                continue;
            }
        };
        errors.succeeded();
        let Some(slot) = slots.take() else {
            // Without waiting: a fresh socket's buffer takes it. What the
            // client sent is read first: closing on unread data resets the
            // connection, and the answer with it.
            let mut sink = [0u8; 4096];
            while matches!(stream.try_read(&mut sink), Ok(1..)) {}
            let _ = stream.try_write(BUSY);
            continue;
        };
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let snapshot = snapshots.borrow().clone();
                async move { Ok::<_, Infallible>(answer(&request, &snapshot)) }
            });
            // HTTP/1 only: Prometheus and curl speak it, HTTP/2 would compile
            // h2 into baton for nothing, and hyper-util's protocol detection
            // runs without a timer, so a client that sends nothing would be
            // kept.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

/// The most metrics connections open at once; one more gets a 503.
pub const MAX_CONNECTIONS: usize = 8;

/// How long a client may take to send a request's head, and may stay
/// idle between requests, before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 30\r\n\r\ntoo many metrics connections\r\n";

fn answer(request: &Request<Incoming>, snapshot: &Snapshot) -> Response<Full<Bytes>> {
    let (content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => (
            page::CONTENT_TYPE,
            page::render(snapshot, crate::status::unix_now()),
        ),
        (&Method::GET, "/metrics") => (CONTENT_TYPE, render(snapshot)),
        (&Method::GET, "/status") => (
            "application/json",
            serde_json::to_string(&snapshot.status).expect("status serializes"),
        ),
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if content_type == page::CONTENT_TYPE {
        page::headers(response.headers_mut());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_without_a_sample_have_no_series() {
        use crate::status::GenerationStatus;
        let mut snapshot = Snapshot::default();
        snapshot.status.generations = vec![
            GenerationStatus {
                generation: 1,
                usage: crate::status::Usage {
                    processes: 1,
                    rss_bytes: 4096,
                    ..Default::default()
                },
                ..GenerationStatus::default()
            },
            GenerationStatus {
                generation: 2,
                ..GenerationStatus::default()
            },
        ];
        let text = render(&snapshot);
        assert!(
            text.contains("baton_worker_rss_bytes{generation=\"1\"} 4096\n"),
            "{text}"
        );
        assert!(!text.contains("generation=\"2\""), "{text}");
    }

    #[test]
    fn listeners_have_a_health_gauge() {
        use crate::status::ListenerStatus;
        let mut snapshot = Snapshot::default();
        snapshot.status.listeners = vec![
            ListenerStatus {
                name: "http".into(),
                health: ListenerHealth::Ok,
                repairs: 2,
                ..ListenerStatus::default()
            },
            ListenerStatus {
                name: "admin".into(),
                health: ListenerHealth::Broken,
                ..ListenerStatus::default()
            },
        ];
        let text = render(&snapshot);
        assert!(
            text.contains("baton_listener_up{name=\"http\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_listener_up{name=\"admin\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_listener_repairs_total{name=\"http\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn what_status_flags_has_a_gauge() {
        use crate::status::{EscapedProcess, GenerationStatus, GuardianStatus, Usage};
        let mut snapshot = Snapshot::default();
        let sampled = Usage {
            processes: 2,
            stopped: 1,
            ..Usage::default()
        };
        snapshot.status.generations = vec![
            GenerationStatus {
                generation: 3,
                state: "draining".into(),
                usage: sampled.clone(),
                ..GenerationStatus::default()
            },
            GenerationStatus {
                generation: 4,
                state: "active".into(),
                silent: true,
                usage: sampled,
                ..GenerationStatus::default()
            },
        ];
        snapshot.status.escaped = vec![EscapedProcess::default(); 2];
        let text = render(&snapshot);
        for line in [
            "baton_worker_stopped_processes{generation=\"3\"} 1\n",
            "baton_worker_silent{generation=\"4\"} 1\n",
            "baton_escaped_processes 2\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("baton_worker_silent{generation=\"3\"}"),
            "{text}"
        );
        assert!(
            !text.contains("\nbaton_guardian_up "),
            "no guardian, no sample: {text}"
        );
        snapshot.status.guardian = Some(GuardianStatus {
            pid: None,
            restarts: 3,
        });
        let text = render(&snapshot);
        assert!(text.contains("baton_guardian_up 0\n"), "{text}");
        assert!(text.contains("baton_guardian_restarts_total 3\n"), "{text}");
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count 2\n"), "{out}");
    }
}
