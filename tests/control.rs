//! The control socket (`baton ctl`), status and metrics, driven through
//! the real binary: what status reports matches the processes that run,
//! `ctl reload` answers with the outcome, a peer of another uid is refused
//! by baton itself, bad requests get errors and the daemon serves on, and
//! `/metrics` is Prometheus text whose counters move with reloads.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use baton_e2e::{
    Baton, DEADLINE, alive, baton_bin, eventually, exclusive, http_get, http_request,
    output_within_deadline, pid_in, run_args,
};
use nix::sys::signal::Signal;
use prometheus_parse::{LineInfo, Scrape, Value};
use serde_json::Value as Json;

/// `ctl status --json`, which must succeed.
fn status(baton: &Baton) -> Json {
    let (exit, response) = baton.ctl_json(&["status"]);
    assert!(exit.success(), "{exit:?}: {response}");
    assert_eq!(response["v"], 1, "{response}");
    assert_eq!(response["ok"], true, "{response}");
    response["status"].clone()
}

/// The generation numbered `generation` in a status, if listed.
fn generation(status: &Json, generation: u64) -> Option<Json> {
    status["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .find(|g| g["generation"] == generation)
        .cloned()
}

fn generation_numbers(status: &Json) -> Vec<u64> {
    status["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .map(|g| g["generation"].as_u64().expect("a number"))
        .collect()
}

#[test]
fn status_lists_the_generations_with_their_real_pids_and_costs() {
    let _serial = exclusive();
    // Workers that ignore the stop signal: generation 1 stays draining
    // after the reload, so that status shows two live generations.
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify", "--drain-timeout", "60s"],
        &["--ignore-stop"],
    ));
    let first = pid_in(&baton.wait_for(&["spawned generation=1 "]));
    assert_eq!(baton.wait_ready(1), first);
    baton.signal(Signal::SIGHUP);
    let second = pid_in(&baton.wait_for(&["spawned generation=2 "]));
    baton.wait_ready(2);
    baton.wait_for(&["draining", " generation=1 "]);

    // Usage is sampled every 2 s: wait until both generations have a figure.
    let mut last = Json::Null;
    let sampled = eventually(|| {
        last = status(&baton);
        [1, 2].iter().all(|&g| {
            generation(&last, g).is_some_and(|g| g["rss_bytes"].as_u64().unwrap_or(0) > 0)
        })
    });
    assert!(sampled, "no RSS for both generations: {last:#}");
    assert_eq!(generation_numbers(&last), [1, 2], "{last:#}");
    for (number, pid, state) in [(1, first, "draining"), (2, second, "active")] {
        let g = generation(&last, number).unwrap();
        assert_eq!(g["pid"], pid, "the pid of baton's `spawned` line: {g:#}");
        assert!(alive(pid), "{pid} runs");
        assert_eq!(g["state"], state, "{g:#}");
        assert!(g["rss_bytes"].as_u64().unwrap() > 0, "{g:#}");
        assert!(g["processes"].as_u64().unwrap() >= 1, "{g:#}");
        assert!(g["threads"].as_u64().unwrap() >= 1, "{g:#}");
        // stdin, stdout, stderr and the listening socket at least.
        assert!(g["open_fds"].as_u64().unwrap() >= 4, "{g:#}");
        assert!(g["ready_ms"].is_u64(), "{g:#}");
    }
    // Established connections are counted for the draining generation.
    assert!(
        generation(&last, 1).unwrap()["connections"].is_u64(),
        "{last:#}"
    );
    assert_eq!(last["pid"], baton.pid(), "{last:#}");
    let listeners = last["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 1, "{last:#}");
    assert_eq!(listeners[0]["name"], "http");
    assert_eq!(
        listeners[0]["address"],
        baton.address("http").to_string(),
        "{last:#}"
    );
    assert_eq!(listeners[0]["backlog"], 1024);
    assert_eq!(last["counters"]["reloads_ok"], 1, "{last:#}");
    assert_eq!(last["counters"]["reloads_failed"], 0, "{last:#}");
    let reloads = last["reloads"].as_array().expect("reloads");
    assert_eq!(reloads.len(), 1, "{last:#}");
    assert_eq!(reloads[0]["trigger"], "signal");
    assert_eq!(reloads[0]["outcome"], "ok");
    assert_eq!(reloads[0]["generation"], 2);
    assert_eq!(reloads[0]["previous"], 1);

    // The table shows the same generations.
    let table = baton.ctl(&["status"]);
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8_lossy(&table.stdout);
    let row = |pid: i32| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no row for pid {pid}:\n{table}"))
            .to_owned()
    };
    assert!(row(first).starts_with("1 ") && row(first).contains("draining"));
    assert!(row(second).starts_with("2 ") && row(second).contains("active"));
    assert!(table.contains("reloads ok 1 failed 0"), "{table}");

    // The workers ignore SIGTERM: the second SIGINT kills them.
    baton.signal(Signal::SIGINT);
    baton.wait_for(&["shutting down"]);
    baton.signal(Signal::SIGINT);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert!(
        !baton.control().exists(),
        "baton removes its control socket"
    );
}

#[test]
fn ctl_reload_answers_with_the_new_generation_or_the_failure() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify", "--ready-timeout", "2s"],
        &["--never-ready", "--from-gen", "4"],
    ));
    baton.wait_ready(1);

    let (exit, response) = baton.ctl_json(&["reload"]);
    assert!(exit.success(), "{exit:?} {response:#}");
    assert_eq!(response["ok"], true, "{response:#}");
    let reload = &response["reload"];
    assert_eq!(reload["id"], 1, "{response:#}");
    assert_eq!(reload["trigger"], "ctl", "{response:#}");
    assert_eq!(reload["outcome"], "ok", "{response:#}");
    assert_eq!(reload["generation"], 2, "{response:#}");
    assert_eq!(reload["previous"], 1, "{response:#}");
    assert!(reload["ready_ms"].is_u64(), "{response:#}");
    // The answer comes once generation 2 is active.
    let pid = pid_in(&baton.wait_for(&[" ready generation=2 "]));
    baton.wait_for(&["reload reload=1 trigger=ctl result=ok generation=2 "]);
    assert_eq!(generation(&status(&baton), 2).unwrap()["pid"], pid);

    // The readable form.
    let text = baton.ctl(&["reload"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{text:?}");
    assert!(
        stdout.starts_with("reload 2 (ctl): ok, generation 3 replaces 2, ready in "),
        "{stdout}"
    );

    // Generation 4 never becomes ready: the reload fails, exit code 1.
    let (exit, response) = baton.ctl_json(&["reload"]);
    assert_eq!(exit.code(), Some(1), "{response:#}");
    assert_eq!(response["ok"], false, "{response:#}");
    let reload = &response["reload"];
    assert_eq!(reload["id"], 3, "{response:#}");
    assert_eq!(reload["outcome"], "failed", "{response:#}");
    assert_eq!(reload["generation"], 4, "{response:#}");
    let reason = reload["reason"].as_str().expect("a reason");
    assert!(reason.contains("not ready within 2s"), "{response:#}");
    let error = response["error"].as_str().expect("an error");
    assert!(
        error.starts_with("reload failed: ") && error.contains("not ready"),
        "{error}"
    );
    assert_eq!(response["code"], "reload_failed", "{response:#}");
    baton.wait_for(&["reload reload=3 trigger=ctl result=failed generation=4 "]);

    // Generation 3 serves on, and status counts the failure.
    baton.wait_for(&["exited", " generation=2 "]);
    let (code, body) = http_get(baton.address("http"), "/");
    assert_eq!(code, 200);
    assert!(body.contains("generation=3"), "{body}");
    let now = status(&baton);
    assert_eq!(now["counters"]["reloads_ok"], 2, "{now:#}");
    assert_eq!(now["counters"]["reloads_failed"], 1, "{now:#}");
    assert_eq!(generation(&now, 3).unwrap()["state"], "active", "{now:#}");

    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// Whether every directory above `path` and the file itself may be
/// searched/executed by others.
fn executable_by_others(path: &Path) -> bool {
    path.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

#[test]
fn a_peer_of_another_uid_is_refused_by_baton_itself() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running a client as another uid needs root");
        return;
    }
    let _serial = exclusive();
    // A directory everyone may search, with a socket everyone may connect
    // to: only baton's own SO_PEERCRED check stands in the way.
    let dir = tempfile::Builder::new()
        .prefix("baton-e2e-peer")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let control = dir.path().join("ctl.sock");
    let bin: PathBuf = if executable_by_others(baton_bin()) {
        baton_bin().to_owned()
    } else {
        let copy = dir.path().join("baton");
        std::fs::copy(baton_bin(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    };
    let mut args = run_args(&["--ready", "notify", "--control-mode", "0666"], &[]);
    args.splice(
        1..1,
        ["--control".to_string(), control.display().to_string()],
    );
    let mut baton = Baton::start(&args);
    baton.wait_ready(1);
    baton.wait_for(&["control socket", &control.display().to_string()]);
    assert_eq!(
        std::fs::metadata(&control).unwrap().permissions().mode() & 0o777,
        0o666
    );

    let mut client = Command::new(&bin);
    client
        .args(["ctl", "--control"])
        .arg(&control)
        .arg("status")
        .env_remove("BATON_CONTROL")
        .uid(65534)
        .gid(65534)
        .current_dir("/");
    let output = output_within_deadline(client);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    // baton's answer, not the kernel's EACCES at connect.
    assert!(
        stdout.starts_with("error: permission denied: uid 65534 may not control this baton"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
    baton.wait_for(&["control connection refused", "uid 65534"]);

    // Its owner is still served.
    let mut owner = Command::new(baton_bin());
    owner
        .args(["ctl", "--json", "--control"])
        .arg(&control)
        .arg("status");
    let output = output_within_deadline(owner);
    assert!(output.status.success(), "{output:?}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// A raw protocol client: one line out, one line back.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).expect("connect to the control socket");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write a request");
    }

    fn ask(&mut self, line: &[u8]) -> Json {
        self.send(line);
        self.receive()
    }

    fn receive(&mut self) -> Json {
        let mut answer = String::new();
        self.reader.read_line(&mut answer).expect("read a response");
        assert!(answer.ends_with('\n'), "one line: {answer:?}");
        let json: Json = serde_json::from_str(&answer).expect("a JSON response");
        assert_eq!(json["v"], 1, "{json}");
        json
    }
}

fn assert_error(response: &Json, code: &str, starts_with: &str) {
    assert_eq!(response["ok"], false, "{response}");
    assert_eq!(response["code"], code, "{response}");
    let error = response["error"].as_str().expect("an error message");
    assert!(error.starts_with(starts_with), "{error}");
}

#[test]
fn bad_requests_get_errors_and_the_daemon_serves_on() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    baton.wait_ready(1);
    baton.wait_for(&["control socket"]);

    let mut client = Client::connect(baton.control());
    assert_error(&client.ask(b"garbage\n"), "invalid_json", "invalid JSON");
    let mut huge = vec![b'x'; 100 * 1024];
    huge.push(b'\n');
    assert_error(
        &client.ask(&huge),
        "request_too_large",
        "request too large: the limit is 65536 bytes per line",
    );
    // A valid JSON line that is too long is refused just the same.
    let mut padded = br#"{"v":1,"cmd":"status","pad":""#.to_vec();
    padded.extend(vec![b'p'; 70 * 1024]);
    padded.extend(b"\"}\n");
    assert_error(
        &client.ask(&padded),
        "request_too_large",
        "request too large",
    );
    assert_error(
        &client.ask(b"{\"cmd\":\"status\"}\n"),
        "missing_version",
        "missing protocol version",
    );
    assert_error(
        &client.ask(b"{\"v\":2,\"cmd\":\"status\"}\n"),
        "unsupported_version",
        "unsupported protocol version 2",
    );
    let unknown = client.ask(b"{\"v\":1,\"cmd\":\"dance\"}\n");
    assert_error(&unknown, "no_such_command", "invalid request");
    assert_error(
        &client.ask(b"{\"v\":1}\n"),
        "invalid_request",
        "invalid request",
    );
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("commands: status, reload, stop"),
        "{unknown}"
    );
    // The same connection goes on.
    let ok = client.ask(b"{\"v\":1,\"cmd\":\"status\"}\n");
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["status"]["generations"][0]["generation"], 1, "{ok}");
    // Two requests in one write get two responses, in order.
    client.send(b"{\"v\":1,\"cmd\":\"status\"}\ngarbage\n");
    assert_eq!(client.receive()["ok"], true);
    assert_error(&client.receive(), "invalid_json", "invalid JSON");

    // Clients that connect and say nothing, stop mid-line, or never read
    // their responses block nobody else.
    let _silent = UnixStream::connect(baton.control()).unwrap();
    let mut half = UnixStream::connect(baton.control()).unwrap();
    half.write_all(b"{\"v\":1,\"cmd\":").unwrap();
    let mut deaf = UnixStream::connect(baton.control()).unwrap();
    deaf.set_nonblocking(true).unwrap();
    let request = b"{\"v\":1,\"cmd\":\"status\"}\n";
    let mut sent = 0;
    // Until its socket buffer is full both ways: baton is stuck writing to it.
    for _ in 0..100_000 {
        match deaf.write(request) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent > 10, "{sent}");
    let third = baton.ctl(&["status"]);
    assert!(third.status.success(), "{third:?}");
    let mut fourth = Client::connect(baton.control());
    assert_eq!(fourth.ask(request)["ok"], true);

    // And the supervisor itself still works: a reload through the socket.
    let reload = fourth.ask(b"{\"v\":1,\"cmd\":\"reload\"}\n");
    assert_eq!(reload["ok"], true, "{reload}");
    assert_eq!(reload["reload"]["generation"], 2, "{reload}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// `stop` is answered before baton exits, even when the workers drain
/// within a millisecond and another client keeps the socket busy: baton
/// lets the answers in flight be written before its runtime ends.
#[test]
fn stop_is_answered_before_baton_exits() {
    let _serial = exclusive();
    for _ in 0..10 {
        let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
        baton.wait_ready(1);
        baton.wait_for(&["control socket"]);
        let mut client = Client::connect(baton.control());
        // Another client that never reads its answers.
        let mut deaf = UnixStream::connect(baton.control()).unwrap();
        deaf.set_nonblocking(true).unwrap();
        while deaf.write(b"{\"v\":1,\"cmd\":\"status\"}\n").is_ok() {}
        let reload = client.ask(b"{\"v\":1,\"cmd\":\"reload\"}\n");
        assert_eq!(reload["ok"], true, "{reload}");
        client.send(b"{\"v\":1,\"cmd\":\"stop\"}\n");
        let mut answer = String::new();
        client.reader.read_line(&mut answer).expect("read");
        assert!(baton.wait_exit().success(), "{}", baton.output());
        assert_eq!(answer, "{\"v\":1,\"ok\":true}\n", "{}", baton.output());
    }
}

/// Fetch `/metrics`, check that every line is Prometheus text, and parse it.
fn scrape(baton: &Baton) -> Scrape {
    let (code, head, body) = http_request(baton.metrics_address(), "GET", "/metrics");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    for line in body.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } | LineInfo::Type { .. } => {}
            LineInfo::Sample { value, .. } => {
                assert!(value.parse::<f64>().is_ok(), "not a number: {line:?}")
            }
            other => panic!("not Prometheus text: {line:?} ({other:?})\n{body}"),
        }
    }
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The value of a counter or gauge sample whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let samples: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{metric} is not a plain value: {other:?}"),
        })
        .collect();
    assert!(samples.len() <= 1, "{metric} {labels:?}: {samples:?}");
    samples.first().copied()
}

fn counter(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {metric} {labels:?}: {:?}", scrape.samples));
    match sample.value {
        Value::Counter(v) => v,
        ref other => panic!("{metric} is not a counter: {other:?}"),
    }
}

/// The generation labels of a per-generation family.
fn generation_labels(scrape: &Scrape, metric: &str) -> Vec<String> {
    let mut labels: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| s.labels.get("generation").expect("a generation").to_owned())
        .collect();
    labels.sort();
    labels
}

/// A histogram's buckets (upper bound, cumulative count) and its count.
fn histogram(scrape: &Scrape, metric: &str) -> (Vec<(f64, f64)>, f64) {
    let buckets = scrape
        .samples
        .iter()
        .find_map(|s| match (&s.value, s.metric == metric) {
            (Value::Histogram(buckets), true) => Some(
                buckets
                    .iter()
                    .map(|b| (b.less_than, b.count))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {metric}"));
    let count = value(scrape, &format!("{metric}_count"), &[]).expect("a _count");
    assert!(value(scrape, &format!("{metric}_sum"), &[]).is_some_and(|s| s >= 0.0));
    (buckets, count)
}

fn check_histogram(scrape: &Scrape, metric: &str, expected_count: f64) {
    let (buckets, count) = histogram(scrape, metric);
    assert_eq!(count, expected_count, "{metric}: {buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{metric}: buckets are cumulative: {buckets:?}"
    );
    let last = buckets.last().expect("buckets");
    assert!(last.0.is_infinite(), "{metric} ends with +Inf: {buckets:?}");
    assert_eq!(last.1, count, "{metric}: +Inf holds every observation");
}

#[test]
fn metrics_are_prometheus_text_and_move_with_reloads() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify", "--metrics", "127.0.0.1:0"],
        &[],
    ));
    baton.wait_ready(1);
    let metrics = baton.metrics_address();
    assert!(metrics.ip().is_loopback() && metrics.port() != 0);

    // The first sample comes within 2 s.
    let mut last = None;
    let sampled = eventually(|| {
        let s = scrape(&baton);
        let done = value(&s, "baton_worker_rss_bytes", &[("generation", "1")])
            .is_some_and(|rss| rss > 0.0);
        last = Some(s);
        done
    });
    let first = last.take().unwrap();
    assert!(sampled, "{:?}", first.samples);
    for family in [
        "baton_up",
        "baton_reloads_total",
        "baton_worker_crashes_total",
        "baton_worker_restarts_total",
        "baton_worker_cpu_seconds_total",
        "baton_worker_rss_bytes",
        "baton_worker_open_fds",
        "baton_reload_duration_seconds",
        "baton_time_to_ready_seconds",
        "baton_build_info",
        "baton_generations",
        "baton_last_reload_timestamp_seconds",
        "baton_last_reload_successful",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(first.docs.contains_key(family), "no HELP for {family}");
    }
    let version = first
        .samples
        .iter()
        .find(|s| s.metric == "baton_build_info")
        .and_then(|s| s.labels.get("version"))
        .expect("a version label");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&first, "baton_build_info", &[]), Some(1.0));
    for (state, count) in [
        ("starting", 0.0),
        ("active", 1.0),
        ("draining", 0.0),
        ("killing", 0.0),
    ] {
        assert_eq!(
            value(&first, "baton_generations", &[("state", state)]),
            Some(count),
            "{state}"
        );
    }
    // No reload has ended yet: those families have no sample.
    assert_eq!(
        value(&first, "baton_last_reload_timestamp_seconds", &[]),
        None
    );
    assert_eq!(value(&first, "baton_last_reload_successful", &[]), None);
    // baton's own process, as every client library reports its own.
    let started = value(&first, "process_start_time_seconds", &[]).expect("a start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} vs {now}"
    );
    assert!(counter(&first, "process_cpu_seconds_total", &[]) >= 0.0);
    assert!(value(&first, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    let fds = value(&first, "process_open_fds", &[]).unwrap();
    let max_fds = value(&first, "process_max_fds", &[]).unwrap();
    assert!(fds >= 5.0 && fds < max_fds, "{fds} of {max_fds}");
    assert_eq!(value(&first, "baton_up", &[]), Some(1.0));
    assert!(matches!(
        first
            .samples
            .iter()
            .find(|s| s.metric == "baton_up")
            .unwrap()
            .value,
        Value::Gauge(_)
    ));
    assert_eq!(
        counter(&first, "baton_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        counter(&first, "baton_reloads_total", &[("result", "failed")]),
        0.0
    );
    assert_eq!(counter(&first, "baton_worker_restarts_total", &[]), 0.0);
    assert_eq!(generation_labels(&first, "baton_worker_open_fds"), ["1"]);
    assert!(value(&first, "baton_worker_open_fds", &[("generation", "1")]).unwrap() >= 4.0);
    check_histogram(&first, "baton_reload_duration_seconds", 0.0);
    check_histogram(&first, "baton_time_to_ready_seconds", 1.0);

    for generation in [2, 3] {
        let (exit, response) = baton.ctl_json(&["reload"]);
        assert!(exit.success(), "{response:#}");
        assert_eq!(response["reload"]["generation"], generation);
    }
    baton.wait_for(&["exited", " generation=2 "]);
    let moved = eventually(|| {
        let s = scrape(&baton);
        let ok = counter(&s, "baton_reloads_total", &[("result", "ok")]);
        assert!(ok <= 2.0, "{ok}");
        let done = ok == 2.0 && generation_labels(&s, "baton_worker_rss_bytes") == ["3"];
        last = Some(s);
        done
    });
    let after = last.take().unwrap();
    assert!(moved, "{:?}", after.samples);
    assert_eq!(
        counter(&after, "baton_reloads_total", &[("result", "failed")]),
        0.0
    );
    // The series of exited generations are gone.
    for family in [
        "baton_worker_cpu_seconds_total",
        "baton_worker_rss_bytes",
        "baton_worker_open_fds",
    ] {
        assert_eq!(generation_labels(&after, family), ["3"], "{family}");
    }
    check_histogram(&after, "baton_reload_duration_seconds", 2.0);
    check_histogram(&after, "baton_time_to_ready_seconds", 3.0);
    assert_eq!(
        value(&after, "baton_last_reload_successful", &[]),
        Some(1.0)
    );
    let ended = value(&after, "baton_last_reload_timestamp_seconds", &[]).unwrap();
    assert!(ended > started && ended <= now + 600.0, "{ended}");
    assert_eq!(
        value(&after, "baton_generations", &[("state", "active")]),
        Some(1.0)
    );

    // /status is the JSON of `ctl status`.
    let (code, head, body) = http_request(metrics, "GET", "/status");
    assert_eq!(code, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let over_http: Json = serde_json::from_str(&body).expect("JSON");
    assert_eq!(over_http["pid"], baton.pid());
    assert_eq!(over_http["counters"]["reloads_ok"], 2, "{over_http:#}");
    assert_eq!(generation_numbers(&over_http), [3], "{over_http:#}");
    let over_ctl = status(&baton);
    assert_eq!(over_http["listeners"], over_ctl["listeners"]);
    assert_eq!(over_http["reloads"], over_ctl["reloads"]);

    // `/` is the status page; anything else is 404.
    let (code, head, _) = http_request(metrics, "GET", "/");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8")
    );
    for (method, path) in [
        ("GET", "/index.html"),
        ("GET", "/metrics/x"),
        ("GET", "/statusx"),
        ("POST", "/metrics"),
        ("DELETE", "/status"),
    ] {
        let (code, _, body) = http_request(metrics, method, path);
        assert_eq!(code, 404, "{method} {path}: {body}");
    }
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// A user of their own for batons found by discovery: as root, nobody
/// (root's default directory, /run/baton, holds the batons of every test
/// and developer on the machine), else ourselves; either way with a fresh
/// `XDG_RUNTIME_DIR`, whose `baton/` is the directory `ctl` searches.
struct OwnUser {
    dir: tempfile::TempDir,
    uid: Option<u32>,
    bin: PathBuf,
}

impl OwnUser {
    fn new() -> OwnUser {
        let dir = tempfile::Builder::new()
            .prefix("baton-e2e-discover")
            .tempdir_in("/tmp")
            .unwrap();
        let uid = nix::unistd::geteuid().is_root().then_some(65534);
        let bin = match uid {
            Some(_) if !executable_by_others(baton_bin()) => {
                let copy = dir.path().join("baton-bin");
                std::fs::copy(baton_bin(), &copy).unwrap();
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
                copy
            }
            _ => baton_bin().to_owned(),
        };
        let user = OwnUser { dir, uid, bin };
        std::fs::create_dir(user.sockets()).unwrap();
        std::fs::set_permissions(user.sockets(), std::fs::Permissions::from_mode(0o700)).unwrap();
        for path in [user.dir.path(), &user.sockets()] {
            user.own(path);
        }
        user
    }

    fn sockets(&self) -> PathBuf {
        self.dir.path().join("baton")
    }

    fn own(&self, path: &Path) {
        if let Some(uid) = self.uid {
            std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env_remove("BATON_CONTROL")
            .env_remove("BATON_NAME")
            .current_dir("/");
        if let Some(uid) = self.uid {
            command.uid(uid).gid(uid);
        }
        command
    }

    /// A baton named `name` with its socket in the default directory (the
    /// flag, over the harness's BATON_CONTROL).
    fn baton(&self, name: &str) -> Baton {
        let control = self.sockets().join(format!("{name}.sock"));
        let control = control.to_str().unwrap();
        Baton::spawn(self.command(&[
            "run",
            "--control",
            control,
            "--listen",
            "127.0.0.1:0",
            "--ready",
            "delay=100ms",
            "--",
            "/bin/sleep",
            "600",
        ]))
    }

    fn ctl(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut all = vec!["ctl"];
        all.extend(args);
        let mut command = self.command(&all);
        command.envs(env.iter().copied());
        output_within_deadline(command)
    }
}

/// `baton ctl` without --control or --name talks to the only live baton:
/// a socket left by a killed baton beside it does not count (old code:
/// "several batons are running", exit 1). Two live ones are a usage error
/// (2) naming both; none live is "no baton running" (3). And the one rule
/// for the socket: --control, BATON_CONTROL, --name, BATON_NAME.
#[test]
fn ctl_finds_the_one_live_baton_and_counts_no_stale_socket() {
    let _serial = exclusive();
    let user = OwnUser::new();
    let stale = user.sockets().join("old.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    user.own(&stale);
    let mut app = user.baton("app");
    app.wait_ready(1);
    let pid_of = |output: &std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        let json: Json = serde_json::from_slice(&output.stdout).unwrap();
        json["status"]["pid"].as_i64().unwrap() as i32
    };
    assert_eq!(pid_of(&user.ctl(&["--json", "status"], &[])), app.pid());

    let mut other = user.baton("other");
    other.wait_ready(1);
    let several = user.ctl(&["status"], &[]);
    assert_eq!(several.status.code(), Some(2), "{several:?}");
    assert_eq!(
        String::from_utf8_lossy(&several.stderr).trim_end(),
        "baton: error: several batons are running (app, other): choose one with --name or --control"
    );
    let app_sock = user.sockets().join("app.sock");
    let app_sock = app_sock.to_str().unwrap();
    for (args, env, pid) in [
        (&["--name", "other"][..], &[][..], other.pid()),
        (&[], &[("BATON_NAME", "other")][..], other.pid()),
        (
            &["--control", app_sock],
            &[("BATON_NAME", "other")],
            app.pid(),
        ),
        (
            &["--name", "other"],
            &[("BATON_CONTROL", app_sock)],
            app.pid(),
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(["--json", "status"]);
        let output = user.ctl(&all, env);
        assert_eq!(pid_of(&output), pid, "{args:?} {env:?}");
        let note = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            note.contains("chosen over --name other"),
            args.contains(&"--name") && !env.is_empty(),
            "{note}"
        );
    }

    other.signal(Signal::SIGTERM);
    assert!(other.wait_exit().success(), "{}", other.output());
    app.signal(Signal::SIGKILL);
    app.wait_exit();
    let none = user.ctl(&["status"], &[]);
    assert_eq!(none.status.code(), Some(3), "{none:?}");
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(
        said.starts_with("baton: error: no running baton found"),
        "{said}"
    );
    assert!(
        said.contains("stale, nobody answers: app.sock, old.sock"),
        "{said}"
    );
    let by_name = user.ctl(&["--name", "app", "reload"], &[]);
    assert_eq!(by_name.status.code(), Some(3), "{by_name:?}");
    assert!(
        String::from_utf8_lossy(&by_name.stderr).contains("the file is stale"),
        "{by_name:?}"
    );
}
