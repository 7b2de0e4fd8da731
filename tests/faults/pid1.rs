//! baton as a container's PID 1, without a container runtime: `unshare
//! --pid --fork --mount-proc` starts it as PID 1 of a new PID namespace,
//! as `docker run` and Kubernetes do with an image whose entrypoint is
//! baton. There the kernel reparents every orphan of the namespace to
//! baton (those of its workers, and those of a `docker exec`), which must
//! reap them, and delivers baton only the signals it has a handler for.

use std::process::Command;

use baton_e2e::{
    Baton, Traffic, assert_no_failures, baton_bin, eventually, exclusive, test_worker_bin,
};
use baton_loadgen::Mode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `/proc/PID/status` field `key` (`PPid`, `NSpid`, `State`).
fn status_field(pid: i32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// The pid of `parent`'s child running `args`, once there is one; `None`
/// (its children listed on stderr) if none comes.
fn child_running(parent: i32, args: &[&str]) -> Option<i32> {
    let mut found = None;
    let seen = eventually(|| {
        found = (children(parent).into_iter())
            .find(|(_, a)| a == args)
            .map(|(pid, _)| pid);
        found.is_some()
    });
    if !seen {
        eprintln!("children of {parent}: {:?}", children(parent));
    }
    found
}

/// The processes whose parent is `parent`, with their arguments.
fn children(parent: i32) -> Vec<(i32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| status_field(pid, "PPid").as_deref() == Some(&parent.to_string()))
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args = cmdline
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            (pid, args)
        })
        .collect()
}

/// Whether this test can make a PID namespace: root, and `unshare`.
fn can_unshare() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a PID namespace needs root");
        return false;
    }
    let works = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !works {
        eprintln!("skipped: unshare --pid --fork --mount-proc does not work here");
    }
    works
}

/// A worker whose shell leaves an orphan: the subshell starts `sleep
/// 3017` and exits at once, so the sleep's parent is gone before the
/// worker (the shell, exec'd into test-worker) is even ready.
#[test]
fn as_pid_1_baton_reaps_the_orphans_of_its_workers_and_term_drains_and_exits_0() {
    if !can_unshare() {
        return;
    }
    let _one = exclusive();
    let worker = format!("(sleep 3017 &); exec {}", test_worker_bin().display());
    let mut command = Command::new("unshare");
    // --kill-child: a failed test that kills unshare takes baton with it.
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(baton_bin())
        .args(["run", "--listen", "http=127.0.0.1:0", "--ready", "notify"])
        .args(["--", "sh", "-c", &worker]);
    let mut baton = Baton::spawn(command);
    let ready = baton.wait_for(&[" ready generation=1 "]);
    // baton is unshare's only child; in its namespace it is PID 1.
    let mut inner = 0;
    assert!(
        eventually(|| {
            inner = children(baton.pid()).first().map_or(0, |(pid, _)| *pid);
            inner != 0
        }),
        "unshare has no child"
    );
    let nspid = status_field(inner, "NSpid").unwrap();
    assert!(nspid.ends_with("\t1"), "NSpid: {nspid}; {ready}");

    // The orphan was reparented to baton, the namespace's init.
    let orphan = child_running(inner, &["sleep", "3017"])
        .unwrap_or_else(|| panic!("the orphan is not baton's child\n{}", baton.output()));
    let traffic = Traffic::start(baton.address("http"), Mode::KeepAlive, 4);
    traffic.serve(50);
    // It dies: baton reaps it, no zombie is left.
    kill(Pid::from_raw(orphan), Signal::SIGKILL).unwrap();
    assert!(
        eventually(|| status_field(orphan, "State").is_none()),
        "the orphan is left as {:?}",
        status_field(orphan, "State")
    );

    // So is one left by a process started in the namespace from outside
    // (`docker exec`, `kubectl exec`): nsenter's shell leaves a sleep.
    let entered = Command::new("nsenter")
        .arg(format!("--target={inner}"))
        .args(["--pid", "--mount", "--", "sh", "-c", "(sleep 3018 &)"])
        .status()
        .unwrap();
    assert!(entered.success());
    let stray =
        child_running(inner, &["sleep", "3018"]).expect("the exec'd orphan is not baton's child");
    kill(Pid::from_raw(stray), Signal::SIGTERM).unwrap();
    assert!(
        eventually(|| status_field(stray, "State").is_none()),
        "the exec'd orphan is left as {:?}",
        status_field(stray, "State")
    );
    traffic.serve(50);
    assert_no_failures(&traffic.finish());

    // TERM from outside reaches PID 1, which has a handler for it: every
    // generation drains, baton exits 0 (and unshare with it).
    kill(Pid::from_raw(inner), Signal::SIGTERM).unwrap();
    baton.wait_for(&["exited", " generation=1 ", "status=exit code 0"]);
    let status = baton.wait_exit();
    assert!(status.success(), "{status:?}\n{}", baton.output());
    assert!(baton.output().contains("every worker is gone: exiting"));
}
