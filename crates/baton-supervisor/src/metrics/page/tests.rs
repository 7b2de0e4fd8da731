use std::sync::Arc;

use super::format::{bytes, duration, esc, magnitude, nice_bytes, nice_ceiling};
use super::*;
use crate::metrics::history::CostHistory;
use crate::status::{Counters, ReloadRecord, Trigger, Usage};

const NOW: f64 = 1_750_000_000.0;

fn generation(n: u64, state: &str, rss: u64) -> GenerationStatus {
    GenerationStatus {
        generation: n,
        pid: Some(1000 + n as i32),
        state: state.into(),
        started_at: NOW - 30.0,
        ready_ms: Some(41),
        silent: false,
        usage: Usage {
            processes: 1,
            cpu_percent: 2.5,
            cpu_seconds: 0.3,
            rss_bytes: rss,
            threads: 4,
            open_fds: 9,
            connections: (state == "draining").then_some(3),
            stopped: 0,
        },
    }
}

fn reload(id: u64, outcome: Outcome, reason: Option<&str>) -> ReloadRecord {
    ReloadRecord {
        id,
        trigger: Trigger::Signal,
        requested_at: NOW - 20.0 + id as f64,
        spawned_at: Some(NOW - 20.0 + id as f64),
        finished_at: Some(NOW - 19.9 + id as f64),
        outcome,
        generation: Some(id + 1),
        previous: Some(id),
        reason: reason.map(str::to_owned),
        ready_ms: (outcome == Outcome::Ok).then_some(100),
        drain_ms: None,
        previous_exit: None,
    }
}

fn snapshot() -> Snapshot {
    let generations = vec![
        generation(2, "draining", 20 << 20),
        generation(3, "active", 22 << 20),
    ];
    let mut history = CostHistory::default();
    for i in 0..10 {
        history.record(
            NOW - 20.0 + 2.0 * f64::from(i),
            &generations[i as usize / 5..],
        );
    }
    Snapshot {
        status: Status {
            version: "0.1.0".into(),
            pid: 42,
            uptime_s: 125.0,
            listeners: vec![
                ListenerStatus {
                    name: "http".into(),
                    address: "127.0.0.1:8080".into(),
                    backlog: Some(1024),
                    health: ListenerHealth::Ok,
                    repairs: 2,
                    ..ListenerStatus::default()
                },
                ListenerStatus {
                    name: "<admin>".into(),
                    address: "unix:/run/a&b.sock".into(),
                    backlog: None,
                    health: ListenerHealth::Broken,
                    problem: Some("a regular file sits at /run/a&b.sock".into()),
                    ..ListenerStatus::default()
                },
            ],
            generations,
            reloads: vec![
                reload(1, Outcome::Ok, None),
                reload(
                    2,
                    Outcome::Failed,
                    Some("exited with \"<script>alert(1)</script>\""),
                ),
            ],
            counters: Counters {
                reloads_ok: 1,
                reloads_failed: 1,
                ..Counters::default()
            },
            ..Status::default()
        },
        history: Arc::new(history),
        ..Snapshot::default()
    }
}

#[test]
fn escapes_what_config_and_workers_wrote() {
    assert_eq!(esc("a<b>&\"c'").to_string(), "a&lt;b&gt;&amp;&quot;c&#39;");
    let page = render(&snapshot(), NOW);
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("data-listener=\"&lt;admin&gt;\""));
    assert!(page.contains("unix:/run/a&amp;b.sock"));
    // The one script is the page's own.
    assert_eq!(page.matches("<script>").count(), 1);
}

#[test]
fn shows_generations_reloads_and_listeners() {
    let page = render(&snapshot(), NOW);
    assert!(page.contains("<title>baton · generation 3 active</title>"));
    assert!(page.contains("data-generation=\"3\" data-state=\"active\" data-pid=\"1003\""));
    assert!(page.contains("data-generation=\"2\" data-state=\"draining\""));
    // Newest first, in both tables.
    let active = page.find("data-state=\"active\"").unwrap();
    let draining = page.find("data-state=\"draining\"").unwrap();
    assert!(active < draining);
    let second = page
        .find("data-reload=\"2\" data-outcome=\"failed\"")
        .unwrap();
    let first = page.find("data-reload=\"1\" data-outcome=\"ok\"").unwrap();
    assert!(second < first);
    assert!(page.contains(">22.0 MiB<"), "RSS in a unit a person reads");
    assert!(
        page.contains(">inherited<"),
        "an inherited socket's backlog"
    );
    assert!(page.contains("<th>health</th>"));
    assert!(page.contains(">ok, repaired 2×<"), "{page}");
    assert!(
        page.contains("h-bad\">broken: a regular file sits at /run/a&amp;b.sock<"),
        "a broken listener, its problem escaped"
    );
}

#[test]
fn draws_each_generation_and_the_total_while_they_overlap() {
    let page = render(&snapshot(), NOW);
    assert!(page.contains("data-frames=\"10\""));
    for chart in ["cpu", "rss", "fds"] {
        assert!(
            page.contains(&format!("<svg data-chart=\"{chart}\"")),
            "{chart}"
        );
    }
    assert_eq!(page.matches("<path data-generation=\"3\"").count(), 3);
    assert_eq!(page.matches("<path data-generation=\"2\"").count(), 3);
    assert!(page.contains("<title>all generations</title>"));
    // Both reloads lie in the charts' window.
    assert_eq!(page.matches("<line data-reload=").count(), 2 * 3);
}

#[test]
fn an_empty_snapshot_renders() {
    let page = render(&Snapshot::default(), NOW);
    assert!(page.contains("no generation is running"));
    assert!(page.contains("No sample yet"));
    assert!(page.contains("no reload yet"));
    assert!(page.ends_with("</html>"));
}

#[test]
fn the_page_loads_nothing_from_elsewhere() {
    let page = render(&snapshot(), NOW);
    for external in ["src=", "href=", "url(http", "@import"] {
        assert!(!page.contains(external), "{external}");
    }
    assert!(POLICY.starts_with("default-src 'none'"));
}

#[test]
fn figures_read_well() {
    assert_eq!(bytes(512.0), "512 B");
    assert_eq!(bytes(1536.0), "1.5 KiB");
    assert_eq!(bytes(300.0 * 1024.0 * 1024.0), "300 MiB");
    assert_eq!(duration(0.041), "41 ms");
    assert_eq!(duration(1.5), "1.50 s");
    assert_eq!(duration(125.0), "2 m 05 s");
    assert_eq!(duration(3.0 * 3600.0 + 120.0), "3 h 02 m");
    assert_eq!(nice_ceiling(0.7), 1.0);
    assert_eq!(nice_bytes(23.0 * 1024.0 * 1024.0), 25.0 * 1024.0 * 1024.0);
    assert_eq!(nice_ceiling(23.0), 25.0);
    assert_eq!(nice_ceiling(3.0), 5.0);
    assert_eq!(nice_ceiling(0.0), 1.0);
}

#[test]
fn the_magnitude_is_the_power_of_ten_log10_gives() {
    // What `nice_ceiling` computed before it stopped using libm: the same
    // value over the whole range the page's axes use, at and around every
    // power of ten.
    for exp in -12..=15 {
        let power = 10f64.powi(exp);
        for x in [
            power,
            power * (1.0 + 1e-12),
            power * (1.0 - 1e-12),
            power * 1.5,
            power * 2.5,
            power * 9.99,
        ] {
            assert_eq!(magnitude(x), 10f64.powf(x.log10().floor()), "{x:e}");
        }
    }
    for x in (1..100_000).map(|i| i as f64 * 0.37) {
        assert_eq!(magnitude(x), 10f64.powf(x.log10().floor()), "{x}");
    }
}

#[test]
fn the_script_refreshes_at_the_advertised_pace() {
    assert!(SCRIPT.ends_with(&format!("}},{REFRESH_MS})")), "{SCRIPT}");
}
