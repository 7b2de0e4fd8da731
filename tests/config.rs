//! The config file: re-read on every reload, a change applies to the next
//! generation, a broken file keeps the old generation serving, listeners
//! may only be appended, and `baton check` shows what a file resolves to.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use baton_e2e::{
    Baton, baton_bin, exclusive, http_get, output_within_deadline, pid_in, run_args, runtime,
    test_worker_bin,
};
use baton_loadgen::{Config, Load, Mode, Report};
use nix::sys::signal::Signal;

/// A config file running test-worker with `ready = "notify"`, the given
/// listeners, extra top-level lines and `[env]` lines.
fn config_text(listen: &[&str], extra: &str, env: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
    format!(
        "# written by tests/config.rs\ncommand = [{:?}]\nlisten = [{}]\nready = \"notify\"\n{extra}\n[env]\n{env}\n",
        test_worker_bin().display().to_string(),
        listen.join(", "),
    )
}

fn write(path: &Path, text: &str) {
    // Replace the file in one step, as an editor or a deploy would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(config: &Path) -> Baton {
    Baton::start(&["run", "--config", &config.display().to_string()])
}

#[test]
fn a_config_change_applies_to_the_next_generation_on_sighup() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    write(
        &config,
        &config_text(&["http=127.0.0.1:0"], "", "GREETING = \"hello\""),
    );
    let mut baton = start(&config);
    baton.wait_ready(1);
    let http = baton.address("http");
    assert_eq!(http_get(http, "/env/GREETING"), (200, "hello".into()));
    assert_eq!(http_get(http, "/env/NOT_SET_BY_BATON").0, 404);

    write(
        &config,
        &config_text(
            &["http=127.0.0.1:0"],
            "drain_timeout = \"7s\"",
            "GREETING = \"bonjour\"\nSECOND = \"2\"",
        ),
    );
    baton.signal(Signal::SIGHUP);
    baton.wait_for(&["reload reload=1 trigger=signal result=ok generation=2 "]);
    // Generation 1 accepts until it has taken its stop signal.
    baton.wait_for(&["exited", " generation=1 "]);
    let (_, body) = http_get(http, "/");
    assert!(body.contains("generation=2"), "{body}");
    assert_eq!(http_get(http, "/env/GREETING"), (200, "bonjour".into()));
    assert_eq!(http_get(http, "/env/SECOND"), (200, "2".into()));
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// Two loads at once, one opening a connection per request, one keeping
/// its connections.
struct Loads {
    loads: Vec<Load>,
}

impl Loads {
    fn start(addr: std::net::SocketAddr) -> Loads {
        let loads = [Mode::NewConnection, Mode::KeepAlive]
            .into_iter()
            .map(|mode| {
                Load::start(Config {
                    mode,
                    clients: 4,
                    duration: Duration::from_secs(120),
                    ..Config::new(addr)
                })
                .expect("load")
            })
            .collect();
        Loads { loads }
    }

    /// Wait until each load has served `n` more requests.
    fn more(&self, rt: &tokio::runtime::Runtime, n: u64) {
        for load in &self.loads {
            let served = load.ok_so_far();
            rt.block_on(load.wait_for(|s| s.ok >= served + n))
                .expect("the load runs");
        }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> Vec<Report> {
        for load in &self.loads {
            load.stop();
        }
        self.loads
            .into_iter()
            .map(|load| rt.block_on(load.finish()))
            .collect()
    }
}

#[test]
fn a_broken_config_fails_the_reload_and_the_old_generation_serves_on() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    let good = config_text(&["http=127.0.0.1:0"], "", "GREETING = \"hello\"");
    write(&config, &good);
    let mut baton = start(&config);
    let first = baton.wait_ready(1);
    let rt = runtime();
    let _enter = rt.enter();
    let loads = Loads::start(baton.address("http"));
    loads.more(&rt, 50);
    let name = config.display().to_string();

    // Not TOML at all.
    write(&config, &good.replace("listen = [", "listen = [[["));
    baton.signal(Signal::SIGHUP);
    let failed = baton.wait_for(&["reload reload=1 trigger=signal result=failed"]);
    // The parser stops at the next line, which is not to blame.
    assert!(
        failed.contains(&format!(
            "{name}: line 4: missing comma between array elements"
        )),
        "{failed}"
    );
    loads.more(&rt, 50);

    // TOML, but a value that is not a duration.
    write(
        &config,
        &config_text(
            &["http=127.0.0.1:0"],
            "ready_timeout = \"soon\"",
            "GREETING = \"hello\"",
        ),
    );
    baton.signal(Signal::SIGHUP);
    let failed = baton.wait_for(&["reload reload=2 trigger=signal result=failed"]);
    assert!(
        failed.contains(&format!(
            "{name}: line 5, key `ready_timeout`: expected a duration like 500ms, 2s or 1m"
        )),
        "{failed}"
    );
    loads.more(&rt, 50);

    // `ctl reload` gets the same failure, with exit code 1.
    write(&config, &format!("unknown_key = 1\n{good}"));
    let (exit, response) = baton.ctl_json(&["reload"]);
    assert_eq!(exit.code(), Some(1), "{response:#}");
    let reason = response["reload"]["reason"].as_str().expect("a reason");
    assert!(
        reason.starts_with(&format!("{name}: line 1, key `unknown_key`: unknown field")),
        "{reason}"
    );
    assert_eq!(response["reload"]["generation"], serde_json::Value::Null);
    loads.more(&rt, 50);

    let (exit, status) = baton.ctl_json(&["status"]);
    assert!(exit.success());
    let status = &status["status"];
    assert_eq!(status["counters"]["reloads_failed"], 3, "{status:#}");
    assert_eq!(status["counters"]["reloads_ok"], 0, "{status:#}");
    assert_eq!(status["generations"].as_array().unwrap().len(), 1);
    assert_eq!(status["generations"][0]["pid"], first, "{status:#}");
    assert_eq!(baton.count(&["spawned generation=2 "]), 0);

    // Fixed, it reloads.
    write(&config, &good.replace("hello", "fixed"));
    baton.signal(Signal::SIGHUP);
    baton.wait_ready(2);
    baton.wait_for(&["exited", " generation=1 "]);
    loads.more(&rt, 50);
    for report in loads.finish(&rt) {
        assert_eq!(
            report.failed_total(),
            0,
            "{}\n{:?}",
            report.summary(),
            report.error_samples
        );
        assert!(
            report.header_values.contains_key(&first.to_string()),
            "{report:?}"
        );
    }
    assert_eq!(
        http_get(baton.address("http"), "/env/GREETING"),
        (200, "fixed".into())
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn listeners_may_be_appended_but_not_removed_or_reordered() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    write(&config, &config_text(&["http=127.0.0.1:0"], "", ""));
    let mut baton = start(&config);
    baton.wait_ready(1);
    let http = baton.address("http");

    write(
        &config,
        &config_text(&["http=127.0.0.1:0", "admin=127.0.0.1:0"], "", ""),
    );
    baton.signal(Signal::SIGHUP);
    let admin = baton.address("admin");
    let second = baton.wait_ready(2);
    // Generation 1 accepts until it has taken its stop signal.
    baton.wait_for(&["exited", " generation=1 "]);
    let (code, body) = http_get(http, "/fds");
    assert_eq!(code, 200, "{body}");
    let fds: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(fds["pid"], second, "{body}");
    assert_eq!(fds["fds"], serde_json::json!([0, 1, 2, 3, 4]), "{body}");
    assert_eq!(fds["LISTEN_FDS"], "2", "{body}");
    assert_eq!(fds["LISTEN_FDNAMES"], "http:admin", "{body}");
    let (code, body) = http_get(admin, "/");
    assert_eq!(code, 200);
    assert!(body.contains("generation=2"), "{body}");

    for (n, listen) in [
        (2, vec!["http=127.0.0.1:0"]),
        (3, vec!["admin=127.0.0.1:0", "http=127.0.0.1:0"]),
        (4, vec!["http=127.0.0.1:0", "admin=127.0.0.1:1"]),
    ] {
        write(&config, &config_text(&listen, "", ""));
        baton.signal(Signal::SIGHUP);
        let failed = baton.wait_for(&[&format!("reload reload={n} trigger=signal result=failed")]);
        assert!(
            failed.contains(
                "listeners can only be appended: removing, changing or reordering one needs a restart of baton"
            ),
            "{failed}"
        );
        for addr in [http, admin] {
            let (code, body) = http_get(addr, "/");
            assert_eq!(code, 200);
            assert!(body.contains(&format!("pid={second} ")), "{body}");
        }
    }
    let (_, status) = baton.ctl_json(&["status"]);
    let listeners = status["status"]["listeners"].as_array().unwrap().clone();
    let names: Vec<&str> = listeners
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["http", "admin"]);
    assert_eq!(status["status"]["counters"]["reloads_failed"], 3);
    assert_eq!(pid_in(&baton.wait_for(&["spawned generation=2 "])), second);
    assert_eq!(baton.count(&["spawned generation=3 "]), 0);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

fn check(config: &Path) -> std::process::Output {
    check_with_env(config, &[])
}

/// `baton check --config FILE` with these `BATON_*` variables and no other.
fn check_with_env(config: &Path, vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(baton_bin());
    command.args(["check", "--config"]).arg(config);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BATON_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    output_within_deadline(command)
}

#[test]
fn baton_check_prints_the_resolved_settings_or_one_line_of_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    // `check` refuses a command or workdir that does not exist.
    let workdir = dir.path().display().to_string();
    write(
        &config,
        &r#"
command = ["/bin/sh", "--port", "fd://3"]
workdir = "WORKDIR"
listen = ["http=127.0.0.1:8080", "unix:/run/app/admin.sock"]
backlog = 512
unix_mode = "0660"
ready = "notify"
ready_timeout = "30s"
stop_signal = "QUIT"
drain_timeout = "1m"
max_draining = 2
watchdog = "10s"
start_limit = 3
name = "app"
control = "/run/app/baton.sock"
control_mode = "0660"
metrics = "127.0.0.1:9100"

[env]
RUST_LOG = "info"
"#
        .replace("WORKDIR", &workdir),
    );
    let output = check(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "listen = http=127.0.0.1:8080",
            "listen = listen1=unix:/run/app/admin.sock",
            "backlog = 512",
            "unix_mode = 0660",
            r#"command = ["/bin/sh", "--port", "fd://3"]"#,
            &format!("workdir = {workdir}"),
            r#"env.RUST_LOG = "info""#,
            "ready = notify",
            "ready_timeout = 30s",
            "stop_signal = SIGQUIT",
            "drain_timeout = 1m",
            "max_draining = 2",
            "watchdog = 10s",
            "start_limit = 3",
            "name = app",
            "control = /run/app/baton.sock",
            "control_mode = 0660",
            "metrics = 127.0.0.1:9100",
        ],
        "{stdout}"
    );

    // Defaults fill in what the file leaves out.
    write(&config, "command = [\"/bin/sh\"]\nlisten = [\":8080\"]\n");
    let output = check(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for line in [
        "backlog = 1024",
        "ready = delay=1s",
        "ready_timeout = 1m",
        "stop_signal = SIGTERM",
        "drain_timeout = 30s",
        "max_draining = 4",
        "start_limit = 5",
        "name = sh",
        "control_mode = 0600",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in\n{stdout}"
        );
    }
    assert!(!stdout.contains("watchdog"), "off by default: {stdout}");

    let name = config.display().to_string();
    for (text, error) in [
        (
            "listen = [\":8080\"]\n\nready_timeout = \"soon\"\n",
            format!(
                "{name}: line 3, key `ready_timeout`: expected a duration like 500ms, 2s or 1m"
            ),
        ),
        (
            "listen = [\":8080\"]\nlisen = [\":8081\"]\n",
            format!("{name}: line 2, key `lisen`: unknown field `lisen`"),
        ),
        (
            "command = [\"/bin/app\"]\nlisten = [\":8080\"\n",
            format!("{name}: line 2"),
        ),
        (
            "command = [\"/bin/app\"]\nlisten = [\"nohost:1\"]\n",
            format!("{name}: line 2, key `listen`: invalid listener"),
        ),
    ] {
        write(&config, text);
        let output = check(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}\n{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("baton: error: {error}")),
            "{text}\nwant: {error}\ngot: {stderr}"
        );
    }

    // A file that does not exist.
    let output = check(&dir.path().join("missing.toml"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

/// The one line of error a count below 1 gets, at start, on reload and
/// from `baton check`.
fn below_one(config: &Path, line: usize, key: &str) -> String {
    format!(
        "{}: line {line}, key `{key}`: expected a whole number of at least 1",
        config.display()
    )
}

#[test]
fn a_count_below_one_in_the_file_is_a_one_line_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    for (key, value) in [("max_draining", "0"), ("backlog", "0"), ("backlog", "-1")] {
        let extra = format!("{key} = {value}");
        write(&config, &config_text(&["http=127.0.0.1:0"], &extra, ""));
        let error = format!("baton: error: {}", below_one(&config, 5, key));

        let mut baton = start(&config);
        let status = baton.wait_exit();
        baton.wait_output_closed();
        let output = baton.output();
        assert_eq!(status.code(), Some(1), "{extra}: {output}");
        assert_eq!(
            output, error,
            "{extra}: one line, naming file, line and key"
        );

        let output = check(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{extra}: {output:?}");
        assert_eq!(
            stderr.trim_end(),
            error,
            "{extra}: `baton check` says the same"
        );
    }
}

#[test]
fn a_count_below_one_fails_the_reload_and_the_old_generation_serves_on() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    let good = config_text(&["http=127.0.0.1:0"], "max_draining = 2", "");
    write(&config, &good);
    let mut baton = start(&config);
    let first = baton.wait_ready(1);
    let http = baton.address("http");

    // `ctl reload` answers why.
    write(
        &config,
        &config_text(&["http=127.0.0.1:0"], "max_draining = 0", ""),
    );
    let (exit, response) = baton.ctl_json(&["reload"]);
    assert_eq!(exit.code(), Some(1), "{response:#}");
    assert_eq!(
        response["reload"]["reason"].as_str(),
        Some(below_one(&config, 5, "max_draining").as_str()),
        "{response:#}"
    );
    assert_eq!(response["reload"]["generation"], serde_json::Value::Null);
    let (_, body) = http_get(http, "/");
    assert!(body.contains(&format!("pid={first} ")), "{body}");

    // So does the log, for a SIGHUP.
    for (n, value) in [(2, "0"), (3, "-1")] {
        write(
            &config,
            &config_text(&["http=127.0.0.1:0"], &format!("backlog = {value}"), ""),
        );
        baton.signal(Signal::SIGHUP);
        let failed = baton.wait_for(&[&format!("reload reload={n} trigger=signal result=failed")]);
        assert!(
            failed.contains(&below_one(&config, 5, "backlog")),
            "{failed}"
        );
        let (_, body) = http_get(http, "/");
        assert!(body.contains(&format!("pid={first} ")), "{body}");
    }

    let (_, status) = baton.ctl_json(&["status"]);
    let status = &status["status"];
    assert_eq!(status["counters"]["reloads_failed"], 3, "{status:#}");
    assert_eq!(status["generations"].as_array().unwrap().len(), 1);
    assert_eq!(status["generations"][0]["pid"], first, "{status:#}");

    // Fixed, it reloads.
    write(&config, &good);
    baton.signal(Signal::SIGHUP);
    baton.wait_ready(2);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn a_baton_variable_ranks_between_the_flag_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    write(
        &config,
        "command = [\"/bin/sh\"]\nlisten = [\":8080\"]\ndrain_timeout = \"5s\"\n",
    );
    let resolved = |vars: &[(&str, &str)]| {
        let output = check_with_env(&config, vars);
        assert!(output.status.success(), "{vars:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let has = |stdout: &str, line: &str| stdout.lines().any(|l| l == line);
    let stdout = resolved(&[]);
    assert!(has(&stdout, "drain_timeout = 5s"), "{stdout}");
    assert!(has(&stdout, "ready_timeout = 1m"), "{stdout}");
    let stdout = resolved(&[
        ("BATON_DRAIN_TIMEOUT", "9s"),
        ("BATON_READY_TIMEOUT", "7s"),
        ("BATON_MAX_DRAINING", "3"),
    ]);
    for line in [
        "drain_timeout = 9s",
        "ready_timeout = 7s",
        "max_draining = 3",
    ] {
        assert!(has(&stdout, line), "no {line:?} in\n{stdout}");
    }
    // Empty is unset, as systemd's `Environment=BATON_DRAIN_TIMEOUT=` says.
    let stdout = resolved(&[("BATON_DRAIN_TIMEOUT", "")]);
    assert!(has(&stdout, "drain_timeout = 5s"), "{stdout}");

    let error = "baton: error: BATON_MAX_DRAINING=0: expected a whole number of at least 1";
    let output = check_with_env(&config, &[("BATON_MAX_DRAINING", "0")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim_end(), error);

    // `baton run` says the same, before anything starts…
    let mut command = Command::new(baton_bin());
    command
        .args(run_args(&[], &[]))
        .env("BATON_MAX_DRAINING", "0");
    let mut baton = Baton::spawn(command);
    let status = baton.wait_exit();
    baton.wait_output_closed();
    assert_eq!(status.code(), Some(1), "{}", baton.output());
    assert_eq!(baton.output(), error);

    // …and a flag makes the variable irrelevant.
    let mut command = Command::new(baton_bin());
    command
        .args(run_args(&["--max-draining", "2"], &[]))
        .env("BATON_MAX_DRAINING", "0");
    let mut baton = Baton::spawn(command);
    baton.wait_ready(1);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// `baton check` refuses what `baton run` would: each error one line,
/// naming what is wrong. Old code passed every one of these files.
#[test]
fn baton_check_refuses_bad_input_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    let name = config.display().to_string();
    let cases = [
        (
            "command = [\"/no/such/app\"]\nlisten = [\":8080\"]\n".to_owned(),
            "command '/no/such/app' not found".to_owned(),
        ),
        (
            "command = [\"/bin/sh\"]\nworkdir = \"/no/such/dir\"\nlisten = [\":8080\"]\n"
                .to_owned(),
            "workdir /no/such/dir: No such file or directory".to_owned(),
        ),
        (
            config_text(&[":8080"], "", "LISTEN_FDS = \"3\""),
            format!("{name}: line 7, key `LISTEN_FDS`: LISTEN_FDS is set by baton"),
        ),
        (
            config_text(&[":8080"], "", "\"A=B\" = \"1\""),
            format!(
                "{name}: line 7, key `\"A=B\"`: an environment variable's name cannot contain '='"
            ),
        ),
        (
            config_text(&[":8080"], "", "A = \"1\"\nready_timeout = \"5s\""),
            format!(
                "{name}: line 8, key `ready_timeout`: `ready_timeout` is a baton setting, but it is written below [env]"
            ),
        ),
        (
            config_text(&[":8080"], "ready_timeout = \"0\"", ""),
            format!("{name}: line 5, key `ready_timeout`: expected a duration above zero"),
        ),
        (
            format!(
                "{}# {}\n",
                config_text(&[":8080"], "", ""),
                "x".repeat(2 << 20)
            ),
            format!("{name}: larger than 1024 KiB"),
        ),
    ];
    for (text, error) in cases {
        write(&config, &text);
        let output = check(&config);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{error}\n{output:?}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("baton: error: {error}")),
            "want: {error}\ngot: {stderr}"
        );
    }
}

/// A reload re-reads the file; a key only a restart applies is named in
/// the log, not silently ignored (old code: nothing said).
#[test]
fn a_start_only_key_changed_on_reload_is_named() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    write(&config, &config_text(&["http=127.0.0.1:0"], "", ""));
    let mut baton = start(&config);
    baton.wait_ready(1);
    write(
        &config,
        &config_text(
            &["http=127.0.0.1:0"],
            "name = \"renamed\"\nmetrics = \"127.0.0.1:0\"",
            "",
        ),
    );
    let (status, reload) = baton.ctl_json(&["reload"]);
    assert!(status.success(), "{reload}");
    for key in ["key=name", "key=metrics"] {
        let line = baton.wait_for(&["only a restart of baton applies it", key]);
        assert!(line.contains("WARN"), "{line}");
    }
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// Every option from a variable (a container's way): the listeners and the
/// command with a quoted argument, no flag at all; a flag still wins.
#[test]
fn a_baton_runs_from_variables_alone() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let answer = dir.path().join("two words.txt");
    std::fs::write(&answer, "from a quoted argument").unwrap();
    let worker = test_worker_bin().display().to_string();
    let mut command = Command::new(baton_bin());
    command
        .arg("run")
        .env("BATON_LISTEN", "http=127.0.0.1:0, admin=127.0.0.1:0")
        .env("BATON_READY", "notify")
        .env(
            "BATON_COMMAND",
            format!("'{worker}' --answer-file \"{}\"", answer.display()),
        );
    let mut baton = Baton::spawn(command);
    baton.wait_ready(1);
    let (status, body) = http_get(baton.address("http"), "/answer");
    assert_eq!((status, body.as_str()), (200, "from a quoted argument"));
    let (status, _) = http_get(baton.address("admin"), "/");
    assert_eq!(status, 200);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());

    // The command line over the variables: its listener and its command.
    let mut command = Command::new(baton_bin());
    command
        .args(run_args(&[], &[]))
        .env("BATON_LISTEN", "other=127.0.0.1:0")
        .env("BATON_COMMAND", "/no/such/program");
    let mut baton = Baton::spawn(command);
    baton.wait_ready(1);
    baton.address("http");
    assert_eq!(baton.count(&["name=other"]), 0, "{}", baton.output());
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}
