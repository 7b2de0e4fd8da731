//! The status page (`GET /` on `--metrics`) as a person sees it: a real
//! browser (headless Chromium, installed by .ci/run) loads it while baton
//! reloads under load, and the test reads what the browser built — the
//! live generation, the one starting, the reloads with their failures —
//! from the dumped DOM. A screenshot after a few reloads is checked too;
//! `BATON_UPDATE_SCREENSHOT=1 cargo test --test status_page` writes it to
//! docs/status-page.png, the one the README shows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use baton_e2e::{
    Baton, Traffic, assert_no_failures, eventually, exclusive, field, http_get, http_request,
    output_within_deadline, test_worker_bin,
};
use baton_loadgen::Mode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prometheus_parse::{Scrape, Value};

/// The browser: Debian's `chromium`, which .ci/run installs.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|bin| bin.is_file())
    });
    found.expect("no `chromium` in PATH: install Debian's chromium (.ci/run does)")
}

/// Run headless Chromium on `url` with `args` (`--dump-dom`,
/// `--screenshot=…`) in a profile of its own; returns its stdout.
fn browse(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a temp dir");
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url);
    let output = output_within_deadline(command);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium {args:?} {url}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The DOM Chromium built from the page.
fn dump_dom(metrics: SocketAddr) -> String {
    let dom = browse(&format!("http://{metrics}/"), &["--dump-dom"]);
    assert!(dom.contains("</html>"), "not a page: {dom}");
    dom
}

/// The config file: test-worker with `extra` arguments, an HTTP and a
/// unix listener, notify readiness.
fn config_text(dir: &Path, extra: &[&str]) -> String {
    let mut command = vec![test_worker_bin().display().to_string()];
    command.extend(extra.iter().map(|s| s.to_string()));
    format!(
        "command = {command:?}\nlisten = [\"http=127.0.0.1:0\", \"admin=unix:{}\"]\n\
         ready = \"notify\"\nready_timeout = \"60s\"\ndrain_timeout = \"5m\"\n",
        dir.join("admin.sock").display()
    )
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Wait until `generation`, as `/status` shows it, satisfies `check`.
fn wait_generation(
    metrics: SocketAddr,
    generation: u64,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let mut last = String::new();
    let done = eventually(|| {
        let (code, body) = http_get(metrics, "/status");
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        last = body;
        status["generations"]
            .as_array()
            .expect("generations")
            .iter()
            .any(|g| g["generation"] == generation && check(g))
    });
    assert!(done, "generation {generation} never {what}: {last}");
}

/// Wait until the sampler has measured `generation` (the charts and the
/// table then have figures for it).
fn wait_sampled(metrics: SocketAddr, generation: u64) {
    wait_generation(metrics, generation, "sampled", |g| {
        g["processes"].as_u64() > Some(0)
    });
}

/// The value of the one sample of `metric`.
fn gauge(metrics: SocketAddr, metric: &str) -> Option<f64> {
    let (code, body) = http_get(metrics, "/metrics");
    assert_eq!(code, 200, "{body}");
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric)
        .map(|s| match s.value {
            Value::Gauge(v) => v,
            ref other => panic!("{metric} is not a gauge: {other:?}"),
        })
}

/// The attributes of a generation's row, as the browser serialized them.
fn generation_row(generation: u64, state: &str) -> String {
    format!("data-generation=\"{generation}\" data-state=\"{state}\"")
}

fn reload_row(id: u64, outcome: &str) -> String {
    format!("data-reload=\"{id}\" data-outcome=\"{outcome}\"")
}

#[test]
fn a_browser_shows_the_live_generation_and_the_reloads_under_load() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    let good = config_text(dir.path(), &["--work", "20ms"]);
    write(&config, &good);
    let mut baton = Baton::start(&[
        "run",
        "--config",
        &config.display().to_string(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    baton.wait_ready(1);
    let metrics = baton.metrics_address();
    wait_sampled(metrics, 1);
    let traffic = Traffic::start(baton.address("http"), Mode::KeepAlive, 4);

    for generation in [2, 3] {
        traffic.serve(100);
        baton.signal(Signal::SIGHUP);
        baton.wait_ready(generation);
        wait_sampled(metrics, generation);
    }

    // A reload in progress: generation 4 never gets ready. The browser
    // sees it starting beside the active generation 3.
    write(&config, &config_text(dir.path(), &["--never-ready"]));
    traffic.serve(100);
    baton.signal(Signal::SIGHUP);
    let spawned = baton.wait_for(&["spawned", " generation=4 "]);
    let never_ready: i32 = field(&spawned, "pid").and_then(|p| p.parse().ok()).unwrap();
    let dom = dump_dom(metrics);
    for row in [
        generation_row(4, "starting"),
        generation_row(3, "active"),
        reload_row(3, "pending"),
        reload_row(2, "ok"),
    ] {
        assert!(dom.contains(&row), "{row} not in the page:\n{dom}");
    }
    assert!(
        dom.contains("<title>baton · generation 3 active</title>"),
        "{dom}"
    );

    // It dies: the reload fails and generation 3 serves on.
    kill(Pid::from_raw(never_ready), Signal::SIGKILL).unwrap();
    baton.wait_for(&["reload reload=3 trigger=signal result=failed"]);
    assert_eq!(gauge(metrics, "baton_last_reload_successful"), Some(0.0));
    // A config file with an unknown key, whose name is markup.
    write(
        &config,
        &format!("\"<script>alert(1)</script>\" = 1\n{good}"),
    );
    baton.signal(Signal::SIGHUP);
    baton.wait_for(&["reload reload=4 trigger=signal result=failed"]);
    traffic.serve(100);

    // Fixed: two more reloads succeed. Generation 5 ignores its stop
    // signal, so it drains on, serving its keep-alive clients, while 6
    // serves: the page shows both, and the connections 5 still holds.
    write(
        &config,
        &config_text(dir.path(), &["--work", "20ms", "--ignore-stop"]),
    );
    baton.signal(Signal::SIGHUP);
    let stubborn = baton.wait_ready(5);
    traffic.serve(100);
    wait_sampled(metrics, 5);
    write(&config, &good);
    baton.signal(Signal::SIGHUP);
    let live = baton.wait_ready(6);
    traffic.serve(100);
    wait_sampled(metrics, 6);
    wait_generation(metrics, 5, "drained with connections", |g| {
        g["state"] == "draining" && g["connections"].as_u64() > Some(0)
    });
    assert_eq!(gauge(metrics, "baton_last_reload_successful"), Some(1.0));

    let dom = dump_dom(metrics);
    assert!(
        dom.contains("<title>baton · generation 6 active</title>"),
        "{dom}"
    );
    let row = format!("{} data-pid=\"{live}\"", generation_row(6, "active"));
    assert!(dom.contains(&row), "{row} not in the page:\n{dom}");
    let row = format!("{} data-pid=\"{stubborn}\"", generation_row(5, "draining"));
    assert!(dom.contains(&row), "{row} not in the page:\n{dom}");
    for (id, outcome) in [
        (1, "ok"),
        (2, "ok"),
        (3, "failed"),
        (4, "failed"),
        (5, "ok"),
        (6, "ok"),
    ] {
        let row = reload_row(id, outcome);
        assert!(dom.contains(&row), "{row} not in the page:\n{dom}");
    }
    // Newest first.
    let newest = dom.find(&reload_row(6, "ok")).unwrap();
    assert!(newest < dom.find(&reload_row(1, "ok")).unwrap());
    // The reason is text, not markup: the page's own script is its only one.
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert_eq!(dom.matches("<script").count(), 1, "{dom}");
    // Listeners, and the cost charts with a line or dot of the live generation.
    assert!(dom.contains("data-listener=\"http\""), "{dom}");
    assert!(dom.contains(&format!("{}", dir.path().join("admin.sock").display())));
    for chart in ["cpu", "rss", "fds"] {
        let svg = dom
            .split(&format!("data-chart=\"{chart}\""))
            .nth(1)
            .and_then(|rest| rest.split("</svg>").next())
            .unwrap_or_else(|| panic!("no {chart} chart:\n{dom}"));
        assert!(svg.contains("data-generation=\"6\""), "{chart}: {svg}");
        assert!(svg.contains("data-generation=\"1\""), "{chart}: {svg}");
    }

    screenshot(metrics);

    let report = traffic.finish();
    // With no client left, end generation 5's drain.
    kill(Pid::from_raw(stubborn), Signal::SIGKILL).unwrap();
    baton.wait_for(&["exited", " generation=5 "]);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_no_failures(&report);
}

/// Take a 1280×900 screenshot and check it is one; with
/// `BATON_UPDATE_SCREENSHOT` set, it becomes docs/status-page.png.
fn screenshot(metrics: SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("status-page.png");
    browse(
        &format!("http://{metrics}/"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
    );
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let size = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (1280, 900), "IHDR width and height");
    // A page with tables and charts compresses far less than a blank one.
    assert!(bytes.len() > 40_000, "{} bytes: a blank page?", bytes.len());
    if std::env::var_os("BATON_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::copy(&png, &docs).expect("write docs/status-page.png");
    }
}

/// `GET /` is HTML that loads nothing from elsewhere, is never cached,
/// and refreshes itself in the browser.
#[test]
fn the_page_is_html_that_loads_nothing_from_elsewhere_and_refreshes_itself() {
    let _serial = exclusive();
    let mut baton = Baton::start(&baton_e2e::run_args(
        &["--ready", "notify", "--metrics", "127.0.0.1:0"],
        &[],
    ));
    baton.wait_ready(1);
    let (code, head, body) = http_request(baton.metrics_address(), "GET", "/");
    assert_eq!(code, 200, "{head}\n{body}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none';"),
        "{head}"
    );
    assert!(body.starts_with("<!doctype html>"), "{body}");
    assert!(body.contains(&generation_row(1, "active")), "{body}");

    // It refreshes itself: five seconds of the page's (virtual) time in
    // the browser swap its body for a fresh one at least once.
    let dom = browse(
        &format!("http://{}/", baton.metrics_address()),
        &["--virtual-time-budget=5000", "--dump-dom"],
    );
    let refreshes: u32 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the page never refreshed itself:\n{dom}"));
    assert!(refreshes >= 1, "{dom}");
    assert!(dom.contains(&generation_row(1, "active")), "{dom}");
    assert!(!dom.contains("class=\"stale\""), "{dom}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}
