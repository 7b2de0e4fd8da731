//! `--user` / `--group`: baton stays root to bind, and its workers and
//! build steps run as the user, with its groups and its `HOME`, `USER` and
//! `LOGNAME`. They still reach what they must: the notify socket (a worker
//! of another uid says `READY=1` through 0711 directories), and under
//! `--ready auto` baton, as root, still reads the worker's `/proc`. These
//! tests run as root (as CI does) and make the users they need.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use baton_e2e::{
    Baton, Traffic, assert_no_failures, baton_bin, environment_of, exclusive,
    output_within_deadline, runnable_by_all, test_worker_bin,
};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

/// The workers' user, member of [`EXTRA`] besides its own group.
const WORKER: &str = "baton-test-worker";
/// A supplementary group of [`WORKER`].
const EXTRA: &str = "baton-test-extra";
/// A user that is not root, to start baton as.
const OTHER: &str = "baton-test-other";

/// Whether this test can make users and start processes as them.
fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: --user needs baton to run as root");
    }
    root
}

/// Make `name` (a system user without a home) in `groups`, unless it exists.
fn make_user(name: &str, groups: &[&str]) -> nix::unistd::User {
    static MAKE: Mutex<()> = Mutex::new(());
    let _one = MAKE.lock().unwrap_or_else(|p| p.into_inner());
    for group in groups {
        if nix::unistd::Group::from_name(group).unwrap().is_none() {
            let _ = Command::new("groupadd").args(["--system", group]).status();
        }
    }
    let find = || nix::unistd::User::from_name(name).expect("the user database");
    if find().is_none() {
        let mut useradd = Command::new("useradd");
        useradd
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            useradd.args(["--groups", &groups.join(",")]);
        }
        let _ = useradd.arg(name).status();
    }
    find().unwrap_or_else(|| panic!("cannot make the user {name} with useradd"))
}

fn gid(group: &str) -> u32 {
    nix::unistd::Group::from_name(group)
        .unwrap()
        .unwrap_or_else(|| panic!("no group {group}"))
        .gid
        .as_raw()
}

/// `Uid:`, `Gid:` and `Groups:` of a process, from `/proc/PID/status`.
fn ids(pid: i32) -> BTreeMap<String, Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| ["Uid", "Gid", "Groups"].contains(key))
        .map(|(key, value)| {
            let ids = value
                .split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect();
            (key.to_owned(), ids)
        })
        .collect()
}

fn args(baton: &[&str], worker: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--listen", "http=127.0.0.1:0"]
        .iter()
        .chain(baton)
        .map(|s| s.to_string())
        .collect();
    args.push("--".into());
    args.push(runnable_by_all(test_worker_bin()).display().to_string());
    args.extend(worker.iter().map(|s| s.to_string()));
    args
}

#[test]
fn workers_run_as_the_user_with_its_groups_and_a_reload_under_load_fails_nothing() {
    if !root() {
        return;
    }
    let _one = exclusive();
    let user = make_user(WORKER, &[EXTRA]);
    let (uid, own) = (user.uid.as_raw(), user.gid.as_raw());
    let mut baton = Baton::start(&args(&["--user", WORKER, "--ready", "notify"], &[]));
    // Only a READY=1 that reached the notify socket makes it ready.
    let worker = baton.wait_ready(1);
    let ids = ids(worker);
    assert_eq!(ids["Uid"], [uid; 4], "real, effective, saved, fs uid");
    assert_eq!(ids["Gid"], [own; 4]);
    assert_eq!(ids["Groups"], [gid(EXTRA).min(own), gid(EXTRA).max(own)]);
    assert_eq!(environment_of(worker, "USER").unwrap(), WORKER);
    assert_eq!(environment_of(worker, "LOGNAME").unwrap(), WORKER);
    assert_eq!(environment_of(worker, "HOME").unwrap(), "/nonexistent");
    let runtime = baton.wait_for(&["runtime directory"]);
    let runtime = Path::new(baton_e2e::field(&runtime, "path").unwrap());
    for dir in [runtime, runtime.parent().unwrap()] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & 0o077, 0o011, "{}: {mode:04o}", dir.display());
    }

    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 8);
    traffic.serve(50);
    baton.signal(Signal::SIGHUP);
    let next = baton.wait_ready(2);
    baton.wait_for(&["exited", " generation=1 "]);
    traffic.serve(50);
    let report = traffic.finish();
    assert_no_failures(&report);
    assert_eq!(self::ids(next)["Uid"], [uid; 4]);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// `--preload` under `--user`: the library and the generation's drain page
/// are readable by the worker's user, so an unchanged `python3 -m
/// http.server` of that user takes baton's socket, and is drained by
/// baton (it has no drain of its own) on every reload.
#[test]
fn a_preloaded_server_of_the_user_takes_batons_socket_and_is_drained_by_baton() {
    if !root() {
        return;
    }
    let _one = exclusive();
    make_user(WORKER, &[EXTRA]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("index.html"), "ok\n").unwrap();
    let port = baton_e2e::free_port();
    let args: Vec<String> = [
        "run",
        "--listen",
        &format!("http=:{port}"),
        "--user",
        WORKER,
        "--preload",
        "--ready",
        "auto",
        "--control",
        "none",
        "--",
        baton_e2e::recipes::python(),
        "-m",
        "http.server",
        &port.to_string(),
        "--directory",
        &dir.path().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let baton = Baton::start(&args);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let run = baton_e2e::recipes::reloads_with_traffic(baton, addr, Mode::NewConnection, 8, 3);
    assert_no_failures(&run.report);
    let drained = run
        .output
        .matches("stopped taking connections and finished its own");
    assert_eq!(drained.count(), 4, "{}", run.output);
}

#[test]
fn with_a_group_and_ready_auto_builds_and_workers_run_as_the_user() {
    if !root() {
        return;
    }
    let _one = exclusive();
    let user = make_user(WORKER, &[EXTRA]);
    let extra = gid(EXTRA);
    // The build writes into a directory only the user may write, outside
    // the watched one.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out, watched) = (dir.path().join("out"), dir.path().join("watched"));
    std::fs::create_dir(&out).unwrap();
    std::fs::create_dir(&watched).unwrap();
    nix::unistd::chown(&out, Some(user.uid), None).unwrap();
    let build = format!("id -u > {0}/uid && id -g > {0}/gid", out.display());
    let watched = watched.display().to_string();
    let mut baton = Baton::start(&args(
        &[
            "--user", WORKER, "--group", EXTRA, "--ready", "auto", "--watch", &watched, "--build",
            &build,
        ],
        &[],
    ));
    // Ready under `auto` means baton read the worker's /proc.
    let worker = baton.wait_ready(1);
    let ids = ids(worker);
    assert_eq!(ids["Uid"], [user.uid.as_raw(); 4]);
    assert_eq!(ids["Gid"], [extra; 4], "--group is the primary group");
    assert!(ids["Groups"].contains(&extra), "{ids:?}");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    assert_eq!(read("uid").trim(), user.uid.to_string());
    assert_eq!(read("gid").trim(), extra.to_string());
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// One line on stderr, exit 1, and no process started.
fn refused(mut command: Command, expected: &str) {
    command.env("BATON_CONTROL", "none");
    let output = output_within_deadline(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with(expected), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn an_unknown_user_or_a_baton_that_is_not_root_is_refused_before_anything_starts() {
    if !root() {
        return;
    }
    let other = make_user(OTHER, &[]);
    let worker = runnable_by_all(test_worker_bin());
    let mut flag = Command::new(baton_bin());
    flag.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--user",
        "no-such-user-baton",
        "--",
    ])
    .arg(&worker);
    refused(
        flag,
        "baton: error: user 'no-such-user-baton' does not exist",
    );
    let mut variable = Command::new(baton_bin());
    variable
        .args(["run", "--listen", "127.0.0.1:0", "--"])
        .arg(&worker)
        .env("BATON_USER", "root")
        .env("BATON_GROUP", "no-such-group-baton");
    refused(
        variable,
        "baton: error: group 'no-such-group-baton' does not exist",
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "user = \"no-such-user-baton\"\n").unwrap();
    let mut check = Command::new(baton_bin());
    check
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(file.path())
        .arg("--")
        .arg(&worker);
    refused(
        check,
        "baton: error: user 'no-such-user-baton' does not exist",
    );
    // Not root: another uid cannot be taken.
    let mut not_root = Command::new("setpriv");
    not_root
        .arg(format!("--reuid={}", other.uid))
        .arg(format!("--regid={}", other.gid))
        .arg("--clear-groups")
        .arg(runnable_by_all(baton_bin()))
        .args(["run", "--listen", "127.0.0.1:0", "--user", WORKER, "--"])
        .arg(&worker)
        .env_remove("XDG_RUNTIME_DIR")
        .current_dir("/");
    make_user(WORKER, &[EXTRA]);
    refused(
        not_root,
        &format!("baton: error: --user {WORKER} needs baton to run as root"),
    );
}
