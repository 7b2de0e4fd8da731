//! Faults of the worker processes themselves: a stopped worker, a hung one
//! that falls silent towards the watchdog, a daemon that escapes its
//! generation, a killed guardian, a worker that can never start.

use std::net::TcpListener;

use baton_e2e::{
    Baton, Traffic, alive, assert_no_failures, eventually, exclusive, field, http_get, pid_in,
    processes_with_token, run_args,
};
use baton_loadgen::Mode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// `baton ctl status`, its `status` object.
fn status(baton: &Baton) -> Value {
    let (exit, response) = baton.ctl_json(&["status"]);
    assert!(exit.success(), "{exit:?}: {response}");
    response["status"].clone()
}

/// Ask `status` until `found` picks something out of it; panics with the
/// last status after the harness's deadline.
fn status_until<T>(baton: &Baton, mut found: impl FnMut(&Value) -> Option<T>) -> T {
    let mut last = Value::Null;
    let mut result = None;
    let ok = eventually(|| {
        last = status(baton);
        result = found(&last);
        result.is_some()
    });
    assert!(ok, "status never showed it: {last:#}");
    result.expect("found")
}

/// The process state letter from `/proc/PID/stat` (`R`, `S`, `T`, …).
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The arguments of a process, from `/proc/PID/cmdline`.
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The generation numbered `generation` in a status, if listed.
fn generation(status: &Value, generation: u64) -> Option<&Value> {
    status["generations"]
        .as_array()?
        .iter()
        .find(|g| g["generation"] == generation)
}

/// SIGSTOP can be neither caught nor ignored, and a stopped worker acts on
/// its stop signal only once it runs again: baton sends SIGCONT after the
/// stop signal, as systemd does, so it drains at once instead of being
/// killed at the drain deadline. `status` and `/metrics` show a stopped
/// worker.
#[test]
fn a_stopped_worker_drains_on_reload_without_waiting_for_the_drain_timeout() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &[
            "--ready",
            "notify",
            "--drain-timeout",
            "20s",
            "--metrics",
            "127.0.0.1:0",
        ],
        &[],
    ));
    let first = baton.wait_ready(1);
    kill(Pid::from_raw(first), Signal::SIGSTOP).expect("stop the worker");
    assert!(
        eventually(|| state(first) == Some('T')),
        "the worker stopped"
    );

    baton.signal(Signal::SIGHUP);
    let second = baton.wait_ready(2);
    let exited = baton.wait_for(&["exited", " generation=1 "]);
    assert_eq!(baton.count(&["drain timed out"]), 0, "{}", baton.output());
    let drain_ms: u64 = field(&exited, "drain_ms").unwrap().parse().unwrap();
    assert!(drain_ms < 20_000, "{exited}");
    assert!(exited.contains("exit code 0"), "it drained: {exited}");

    // A stopped worker shows in status.
    kill(Pid::from_raw(second), Signal::SIGSTOP).expect("stop the worker");
    status_until(&baton, |s| {
        let stopped = generation(s, 2)?["stopped"].as_u64()?;
        (stopped >= 1).then_some(())
    });
    let gauge = "\nbaton_worker_stopped_processes{generation=\"2\"} 1\n";
    assert!(
        eventually(|| http_get(baton.metrics_address(), "/metrics")
            .1
            .contains(gauge)),
        "{}",
        http_get(baton.metrics_address(), "/metrics").1
    );
    kill(Pid::from_raw(second), Signal::SIGCONT).expect("continue the worker");
    status_until(&baton, |s| {
        (generation(s, 2)?["stopped"] == 0).then_some(())
    });
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// A worker that stops sending WATCHDOG=1 (hung, in the sd_notify sense)
/// is replaced by a normal reload: the new generation first, then the
/// silent one drains; no request fails. `status` shows it silent while
/// its replacement starts.
#[test]
fn a_worker_that_falls_silent_towards_the_watchdog_is_replaced_under_load() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &[
            "--ready",
            "notify",
            "--watchdog",
            "1s",
            "--drain-timeout",
            "5s",
        ],
        // Every generation falls silent after two pings; the start delay
        // keeps the silent one active while its replacement starts.
        &["--stop-watchdog-after", "2", "--startup-delay", "2s"],
    ));
    let first = baton.wait_ready(1);
    let line = baton.wait_for(&["watchdog interval_ms=", &format!("pid={first} ")]);
    assert!(line.contains("interval_ms=1000"), "{line}");
    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 4);
    traffic.serve(20);

    let missed = baton.wait_for(&["watchdog missed", " generation=1 "]);
    assert!(missed.contains("replacement=2"), "{missed}");
    status_until(&baton, |s| {
        let g = generation(s, 1)?;
        (g["silent"] == true && g["state"] == "active").then_some(())
    });
    baton.wait_ready(2);
    let exited = baton.wait_for(&["exited", " generation=1 "]);
    assert!(exited.contains("exit code 0"), "it drained: {exited}");
    traffic.serve(20);
    let report = traffic.finish();
    assert_no_failures(&report);
    assert!(
        report.header_values.contains_key(&first.to_string()),
        "generation 1 served: {:?}",
        report.header_values
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// SIGKILLs a process when dropped: a failed test must not leave behind
/// what baton itself failed to stop.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// `status`'s entry for `pid` among the escaped processes, once it has one.
fn listed_as_escaped(baton: &Baton, pid: i32) -> serde_json::Value {
    status_until(baton, |s| {
        s["escaped"]
            .as_array()?
            .iter()
            .find(|p| p["pid"] == pid)
            .cloned()
    })
}

/// A worker that starts a `setsid` daemon leaves it holding the listening
/// socket. baton, a subreaper, adopts it: `status` lists it, and when
/// baton exits it stops it (SIGTERM, then SIGKILL after the drain timeout:
/// this one ignores SIGTERM), so the port is free afterwards.
#[test]
fn a_daemon_that_escapes_its_generation_is_listed_and_stopped_when_baton_exits() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify", "--drain-timeout", "2s"],
        &["--setsid-daemon"],
    ));
    let leader = baton.wait_ready(1);
    let daemon = pid_in(&baton.wait_for(&["setsid-daemon pid="]));
    let _cleanup = KillOnDrop(daemon);
    let addr = baton.address("http");
    let listed = listed_as_escaped(&baton, daemon);
    // Its session's group, whose leader (the middle process) is gone.
    assert_ne!(listed["pgid"], leader, "in no generation's group: {listed}");
    assert!(
        listed["command"].as_str().unwrap().contains("test-worker"),
        "{listed}"
    );
    assert!(alive(leader) && alive(daemon));

    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    let stopped = baton.wait_for(&["escaped", "stopped"]);
    assert!(
        stopped.contains("killed=1"),
        "it ignored SIGTERM: {stopped}"
    );
    assert!(eventually(|| !alive(daemon)), "the daemon {daemon} is gone");
    assert!(
        eventually(|| processes_with_token(baton.token()).is_empty()),
        "nothing of baton's tree is left: {:?}",
        processes_with_token(baton.token())
    );
    TcpListener::bind(addr).expect("the port is free after baton exits");
}

/// Once listed, an escaped daemon is also the guardian's: should baton be
/// SIGKILLed, the guardian kills it with the workers, and nothing of
/// baton's tree is left holding the port.
#[test]
fn an_escaped_daemon_dies_with_a_killed_baton() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &["--setsid-daemon"]));
    baton.wait_ready(1);
    let daemon = pid_in(&baton.wait_for(&["setsid-daemon pid="]));
    let _cleanup = KillOnDrop(daemon);
    let addr = baton.address("http");
    let listed = listed_as_escaped(&baton, daemon);
    let pgid = format!("pgid={}", listed["pgid"]);
    baton.wait_for(&["guarding an escaped process group", &pgid]);
    baton.signal(Signal::SIGKILL);
    baton.wait_exit();
    assert!(
        eventually(|| !alive(daemon)),
        "the daemon {daemon} outlived baton"
    );
    assert!(
        eventually(|| processes_with_token(baton.token()).is_empty()),
        "left behind: {:?}",
        processes_with_token(baton.token())
    );
    TcpListener::bind(addr).expect("the port is free");
}

/// The guardian is baton's own binary, exec'd in a hidden role with
/// argv[0] `baton-guardian`, so `pidof baton` finds baton alone. A killed
/// guardian is replaced, and the new one does the job: when baton is
/// SIGKILLed, it kills the workers.
#[test]
fn the_guardian_is_named_for_what_it_is_and_replaced_when_killed() {
    let _serial = exclusive();
    let baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    let leader = baton.wait_ready(1);
    let guardian = *processes_with_token(baton.token())
        .iter()
        .find(|&&pid| pid != baton.pid() && pid != leader)
        .expect("the guardian runs");
    assert_eq!(cmdline(guardian), ["baton-guardian"]);
    let pidof = std::process::Command::new("pidof")
        .arg("baton")
        .output()
        .expect("pidof runs");
    let pids: Vec<i32> = String::from_utf8_lossy(&pidof.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(pids.contains(&baton.pid()), "pidof baton: {pids:?}");
    assert!(!pids.contains(&guardian), "pidof baton: {pids:?}");
    let shown = status(&baton);
    assert_eq!(shown["guardian"]["pid"], guardian, "{shown:#}");
    assert_eq!(shown["guardian"]["restarts"], 0, "{shown:#}");

    kill(Pid::from_raw(guardian), Signal::SIGKILL).expect("kill the guardian");
    let replaced = baton.wait_for(&["guardian replaced"]);
    let new = pid_in(&replaced);
    assert_ne!(new, guardian, "{replaced}");
    assert!(alive(new));
    assert_eq!(cmdline(new), ["baton-guardian"]);
    let shown = status(&baton);
    assert_eq!(shown["guardian"]["pid"], new, "{shown:#}");
    assert_eq!(shown["guardian"]["restarts"], 1, "{shown:#}");

    baton.signal(Signal::SIGKILL);
    assert!(
        eventually(|| !alive(leader)),
        "the new guardian killed the worker"
    );
    assert!(eventually(|| !alive(new)), "and exited");
}

/// A worker that can never start is not restarted for ever: before any
/// generation was ready, baton gives up after a burst of failed starts,
/// exits 1 and says why in one line.
#[test]
fn a_worker_that_can_never_start_makes_baton_give_up() {
    let mut baton = Baton::start(&["run", "--listen", "127.0.0.1:0", "--", "/bin/false"]);
    let status = baton.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", baton.output());
    baton.wait_output_closed();
    assert_eq!(
        baton.count(&["spawned generation="]),
        5,
        "{}",
        baton.output()
    );
    let output = baton.output();
    let last = output.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("baton: error: ") && last.contains("5 starts in a row failed"),
        "{output}"
    );
    assert!(last.contains("exit code 1"), "{last}");
}

/// The burst is a setting; with a first generation ready, crashes later
/// are only backed off (the existing crash tests cover that).
#[test]
fn the_start_limit_is_a_setting() {
    let mut baton = Baton::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--start-limit",
        "2",
        "--",
        "/bin/false",
    ]);
    assert_eq!(baton.wait_exit().code(), Some(1), "{}", baton.output());
    baton.wait_output_closed();
    assert_eq!(
        baton.count(&["spawned generation="]),
        2,
        "{}",
        baton.output()
    );
}
