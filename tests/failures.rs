//! Workers that misbehave: a failed reload keeps the old worker serving, a
//! worker that will not stop is killed with its whole process group, a
//! crash is covered by the next generation.

use std::collections::BTreeSet;

use std::path::Path;

use baton_e2e::{
    Baton, Traffic, alive, assert_no_failures, environment_of, eventually, exclusive, pid_in,
    run_args,
};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

/// Reload into a generation that fails to start, under load: the reload
/// fails with `reason`, generation 1 keeps serving every request.
fn failed_reload_keeps_the_old_worker(worker_flags: &[&str], reason: &str) {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify", "--ready-timeout", "2s"],
        worker_flags,
    ));
    let first = baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 4);
    traffic.serve(50);

    baton.signal(Signal::SIGHUP);
    let failed = baton.wait_for(&["reload failed", " generation=2 "]);
    assert!(failed.contains(reason), "{failed}");
    let second = pid_in(&baton.wait_for(&["spawned generation=2 "]));
    baton.wait_for(&["exited", " generation=2 "]);
    assert!(!alive(second), "the failed worker {second} is gone");

    traffic.serve(50);
    let report = traffic.finish();
    assert_no_failures(&report);
    let pids: Vec<&String> = report.header_values.keys().collect();
    assert_eq!(pids, [&first.to_string()], "only generation 1 served");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn a_worker_that_is_never_ready_does_not_replace_the_good_one() {
    failed_reload_keeps_the_old_worker(
        &["--never-ready", "--from-gen", "2"],
        "not ready within 2s",
    );
}

#[test]
fn a_worker_that_exits_at_start_does_not_replace_the_good_one() {
    failed_reload_keeps_the_old_worker(
        &["--exit-at-start", "3", "--from-gen", "2"],
        "exited before ready (exit code 3)",
    );
}

/// Processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // After "(comm) ": state, ppid, pgrp.
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(2)?.parse::<i32>().ok())
                    == Some(pgid)
            })
        })
        .filter(|&pid| alive(pid))
        .collect()
}

#[test]
fn a_worker_that_ignores_the_stop_signal_is_killed_with_its_children() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify", "--drain-timeout", "1s"],
        &["--ignore-stop", "--fork-child"],
    ));
    let leader = baton.wait_ready(1);
    assert!(
        eventually(|| group_members(leader).len() >= 2),
        "the worker forked a child into its group"
    );
    let members = group_members(leader);

    baton.signal(Signal::SIGHUP);
    baton.wait_ready(2);
    baton.wait_for(&["drain timed out", " generation=1 "]);
    baton.wait_for(&["exited", " generation=1 "]);
    for pid in &members {
        assert!(!alive(*pid), "{pid} of generation 1 is gone");
    }
    assert!(group_members(leader).is_empty());
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// Every generation crashes after some requests; requests that arrive while
/// no worker runs wait in the accept queue and are served by the next one.
#[test]
fn a_crash_is_covered_by_the_next_generation() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &["--crash-after", "200"]));
    baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 8);
    baton.wait_for(&["crashed", " generation=1 "]);
    baton.wait_for(&["crashed", " generation=2 "]);
    baton.wait_ready(3);
    traffic.serve(20);
    let report = traffic.finish();
    assert_no_failures(&report);
    let pids: BTreeSet<&String> = report.header_values.keys().collect();
    assert!(pids.len() >= 3, "{pids:?}");
    let restarts = baton.count(&["restart scheduled"]);
    assert!(restarts >= 1, "{}", baton.output());
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// A reload whose spawn fails before any process exists (here its notify
/// socket cannot be made: a file stands where baton's notify directory
/// was, which baton does not delete) is answered "failed" at once,
/// generation 1 serves on, and the next reload works once the way is clear
/// (baton makes the directory again itself). It used to leave `ctl
/// reload` waiting for ever.
#[test]
fn a_spawn_that_fails_before_the_child_exists_fails_only_its_reload() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    let first = baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 4);
    traffic.serve(50);

    let socket = environment_of(first, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let notify_dir = Path::new(&socket).parent().expect("a directory").to_owned();
    // Swapped in one step for a file (a gap would let baton re-make it).
    let blocker = notify_dir.with_extension("blocker");
    std::fs::write(&blocker, "not baton's").expect("a file");
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &blocker,
        nix::fcntl::AT_FDCWD,
        &notify_dir,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .expect("swap the notify directory for a file");

    let (exit, response) = baton.ctl_json(&["reload"]);
    assert_eq!(exit.code(), Some(1), "{response:#}");
    let reason = response["reload"]["reason"].as_str().expect("a reason");
    assert!(reason.contains("notify socket"), "{reason}");
    traffic.serve(50);

    assert_eq!(
        std::fs::read_to_string(&notify_dir).expect("the file is kept"),
        "not baton's"
    );
    std::fs::remove_file(&notify_dir).expect("remove the file");
    std::fs::remove_dir_all(&blocker).expect("remove the old directory");
    let (exit, response) = baton.ctl_json(&["reload"]);
    assert!(exit.success(), "{response:#}");
    assert_eq!(response["reload"]["generation"], 3, "{response:#}");
    baton.wait_for(&["exited", " generation=1 "]);
    traffic.serve(50);

    let report = traffic.finish();
    assert_no_failures(&report);
    assert!(report.header_values.contains_key(&first.to_string()));
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}
