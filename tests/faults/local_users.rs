//! Other local users share the machine, and `/tmp`, with baton: they may
//! make its runtime directory first (mode 0777, or a symlink), pose as
//! baton behind a control socket, send `READY=1` for a worker, or clean
//! `/tmp` under it. Nobody else can steer, spoof or delete: each case runs
//! the real baton. Those that need a second uid run as root (as CI does),
//! make the users they need, and act as them through `setpriv`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use baton_e2e::{
    Baton, Traffic, alive, assert_no_failures, baton_bin, environment_of, eventually, exclusive,
    output_within_deadline, pid_in, run_args, runnable_by_all, test_worker_bin,
};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

/// Tests that use `/tmp/baton-UID` of [`SELF`] take turns.
static SELF_BASE: Mutex<()> = Mutex::new(());

/// The user baton runs as where the default directory matters.
const SELF: &str = "baton-test-self";
/// The other local user.
const OTHER: &str = "baton-test-other";

/// A local user.
struct User {
    uid: u32,
    gid: u32,
}

/// The user `name`, made (a system user without home) if missing.
fn user(name: &str) -> User {
    static MAKE: Mutex<()> = Mutex::new(());
    let _one = MAKE.lock().unwrap_or_else(|p| p.into_inner());
    let find = || nix::unistd::User::from_name(name).expect("the user database");
    if find().is_none() {
        // Another test process may make it at the same time: look again.
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", name])
            .status();
    }
    let found = find().unwrap_or_else(|| panic!("cannot make the user {name} with useradd"));
    User {
        uid: found.uid.as_raw(),
        gid: found.gid.as_raw(),
    }
}

/// Whether this test can act as other users (root, with setpriv).
fn can_switch_users() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: acting as other local users needs root");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is missing");
        return false;
    }
    true
}

/// `program` run as `user` with no supplementary groups, and without the
/// variables that point baton elsewhere than its default directory.
fn as_user(user: &User, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .arg(program)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("BATON_CONTROL")
        .current_dir("/");
    command
}

/// `baton ARGS…` as `user`, to its end.
fn baton_as(user: &User, args: &[&str]) -> Output {
    let mut command = as_user(user, &runnable_by_all(baton_bin()));
    command.args(args);
    output_within_deadline(command)
}

/// `baton run` of a worker as `user`, with its default control socket.
fn run_as(user: &User) -> Output {
    let worker = runnable_by_all(test_worker_bin());
    let worker = worker.to_str().unwrap();
    baton_as(
        user,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "app",
            "--",
            worker,
        ],
    )
}

/// Remove whatever is at `path`: a directory, a file or a symlink.
fn clear(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// A directory at `path` made by `owner`, open to all (0777).
fn open_dir_of(owner: &User, path: &Path) {
    clear(path);
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).unwrap();
}

/// A stream socket at `path` that `owner` binds and listens on (in a child
/// of that uid, so `SO_PEERCRED` names it), and that this process accepts
/// on: a server posing as baton.
fn listen_as(owner: &User, path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    let address = socket2::SockAddr::unix(path).unwrap();
    let fd = socket.as_raw_fd();
    let mut child = Command::new("true");
    child.uid(owner.uid).gid(owner.gid);
    // SAFETY: bind(2) and listen(2) are async-signal-safe system calls on
    // an address built before the fork.
    unsafe {
        child.pre_exec(move || {
            if libc::bind(fd, address.as_ptr().cast(), address.len()) != 0
                || libc::listen(fd, 16) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert!(
        child.status().unwrap().success(),
        "bind as uid {}",
        owner.uid
    );
    // Whoever wants to be fooled may connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    UnixListener::from(OwnedFd::from(socket))
}

/// Answer one connection with success, whatever it asked: what a fake
/// baton says to make `ctl reload` look done. Tells whether it accepted.
fn answer_ok_once(listener: UnixListener) -> Arc<AtomicBool> {
    let accepted = Arc::new(AtomicBool::new(false));
    let flag = accepted.clone();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            flag.store(true, Ordering::SeqCst);
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let _ = (&stream).write_all(b"{\"v\":1,\"ok\":true}\n");
        }
    });
    accepted
}

/// Send `message` to the datagram socket at `path` as `user`: connected
/// here, sent by a child of that uid (the kernel attaches the credentials
/// of the process that sends).
fn send_as(user: &User, path: &Path, message: &'static [u8]) {
    let client = UnixDatagram::unbound().unwrap();
    client.connect(path).unwrap();
    let fd = client.as_raw_fd();
    let mut child = Command::new("true");
    child.uid(user.uid).gid(user.gid);
    // SAFETY: one send(2), async-signal-safe, in the forked child.
    unsafe {
        child.pre_exec(move || {
            if libc::send(fd, message.as_ptr().cast(), message.len(), 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert!(
        child.status().unwrap().success(),
        "send as uid {}",
        user.uid
    );
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Another user made `/tmp/baton-UID` first, open to all, or as a symlink
/// to a directory of theirs: baton refuses it (naming it and why) instead
/// of serving its control socket from there; `baton ctl` refuses it too.
#[test]
fn another_users_runtime_directory_or_symlink_is_refused() {
    if !can_switch_users() {
        return;
    }
    let _base = SELF_BASE.lock().unwrap_or_else(|p| p.into_inner());
    let (me, other) = (user(SELF), user(OTHER));
    let base = PathBuf::from(format!("/tmp/baton-{}", me.uid));
    let owned_by_other = format!("owned by uid {}", other.uid);

    open_dir_of(&other, &base);
    let run = run_as(&me);
    let error = stderr(&run);
    assert!(!run.status.success(), "{run:?}");
    assert!(error.contains(&base.display().to_string()), "{error}");
    assert!(error.contains(&owned_by_other), "{error}");
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "made nothing");
    let ctl = baton_as(&me, &["ctl", "--name", "app", "status"]);
    let error = stderr(&ctl);
    assert!(!ctl.status.success(), "{ctl:?}");
    assert!(error.contains(&owned_by_other), "{error}");

    let theirs = PathBuf::from(format!("/tmp/baton-e2e-theirs-{}", std::process::id()));
    open_dir_of(&other, &theirs);
    clear(&base);
    std::os::unix::fs::symlink(&theirs, &base).unwrap();
    std::os::unix::fs::lchown(&base, Some(other.uid), Some(other.gid)).unwrap();
    let run = run_as(&me);
    let error = stderr(&run);
    assert!(!run.status.success(), "{run:?}");
    assert!(error.contains(&base.display().to_string()), "{error}");
    assert!(error.contains("symlink"), "{error}");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0, "followed");
    clear(&base);
    clear(&theirs);
}

/// A server of another user cannot make `baton ctl reload` report a
/// success: not from the default directory that user made first (ctl
/// refuses the directory and never connects), not from a path ctl was
/// given in `/tmp` with the socket file handed to the client's uid (the
/// server's `SO_PEERCRED` gives it away), not even to root's ctl.
#[test]
fn a_server_of_another_user_cannot_answer_for_baton() {
    if !can_switch_users() {
        return;
    }
    let _base = SELF_BASE.lock().unwrap_or_else(|p| p.into_inner());
    let (me, other) = (user(SELF), user(OTHER));
    let base = PathBuf::from(format!("/tmp/baton-{}", me.uid));

    open_dir_of(&other, &base);
    let fake = base.join("app.sock");
    let accepted = answer_ok_once(listen_as(&other, &fake));
    let ctl = baton_as(&me, &["ctl", "--name", "app", "reload"]);
    let error = stderr(&ctl);
    assert!(!ctl.status.success(), "{ctl:?}");
    assert!(error.contains(&base.display().to_string()), "{error}");
    assert!(
        error.contains(&format!("owned by uid {}", other.uid)),
        "{error}"
    );
    assert!(
        !accepted.load(Ordering::SeqCst),
        "ctl connected to the fake"
    );
    // Let the fake's thread go.
    let _ = std::os::unix::net::UnixStream::connect(&fake);
    clear(&base);

    let given = PathBuf::from(format!("/tmp/baton-e2e-fake-{}.sock", std::process::id()));
    answer_ok_once(listen_as(&other, &given));
    std::os::unix::fs::chown(&given, Some(me.uid), Some(me.gid)).unwrap();
    let given_arg = given.to_str().unwrap();
    let ctl = baton_as(&me, &["ctl", "--control", given_arg, "reload"]);
    let error = stderr(&ctl);
    assert!(!ctl.status.success(), "{ctl:?}");
    let server_is_other = format!("the server runs as uid {}", other.uid);
    assert!(error.contains(&server_is_other), "{error}");

    answer_ok_once(listen_as(&other, &given));
    let mut root = Command::new(baton_bin());
    root.args(["ctl", "--control", given_arg, "reload"]);
    let ctl = output_within_deadline(root);
    let error = stderr(&ctl);
    assert!(!ctl.status.success(), "{ctl:?}");
    assert!(error.contains(&server_is_other), "{error}");
    clear(&given);
}

/// Under umask 000, another user sends `READY=1` for a generation that
/// never gets ready: by path, as `systemd-notify --ready` does (the
/// directory keeps them out), and through a socket connected for them (its
/// credentials show their uid: logged, ignored). The reload fails on its
/// deadline and generation 1 serves every request.
#[test]
fn another_users_ready_does_not_make_a_generation_ready() {
    if !can_switch_users() {
        return;
    }
    let _serial = exclusive();
    let other = user(OTHER);
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 000 && exec \"$@\"", "sh"])
        .arg(baton_bin())
        .args(run_args(
            &["--ready", "notify", "--ready-timeout", "10s"],
            &["--never-ready", "--from-gen", "2"],
        ));
    let mut baton = Baton::spawn(command);
    let first = baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 4);
    traffic.serve(50);

    std::thread::scope(|scope| {
        let reload = scope.spawn(|| baton.ctl_json(&["reload"]));
        let second = pid_in(&baton.wait_for(&["test-worker", "never-ready"]));
        let notify = PathBuf::from(environment_of(second, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET"));
        let mut by_path = as_user(&other, Path::new("systemd-notify"));
        by_path.arg("--ready").env("NOTIFY_SOCKET", &notify);
        let by_path = output_within_deadline(by_path);
        assert!(!by_path.status.success(), "{by_path:?}");
        send_as(&other, &notify, b"READY=1");
        baton.wait_for(&[
            "notify message from another user ignored",
            &format!("uid={}", other.uid),
        ]);

        let (exit, response) = reload.join().unwrap();
        assert_eq!(exit.code(), Some(1), "{response:#}");
        let reason = response["reload"]["reason"].as_str().expect("a reason");
        assert!(reason.contains("not ready within 10s"), "{reason}");
    });
    traffic.serve(50);
    let report = traffic.finish();
    assert_no_failures(&report);
    let pids: Vec<&String> = report.header_values.keys().collect();
    assert_eq!(pids, [&first.to_string()], "only generation 1 served");
    assert_eq!(
        baton.count(&[" ready generation="]),
        1,
        "{}",
        baton.output()
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// `--control` naming a regular file: baton refuses to start and deletes
/// nothing (connect() to a file fails like a stale socket).
#[test]
fn a_control_path_that_is_a_regular_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    std::fs::write(&path, "precious").unwrap();
    let mut command = Command::new(baton_bin());
    command.args(run_args(&["--control", path.to_str().unwrap()], &[]));
    let output = output_within_deadline(command);
    let error = stderr(&output);
    assert!(!output.status.success(), "{output:?}");
    assert!(error.contains("is not a socket"), "{error}");
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

/// A baton killed with SIGKILL cannot clean up; the next baton removes
/// the directory it left (its lock is free) and keeps those of live ones.
#[test]
fn a_killed_batons_directory_is_removed_by_the_next_baton() {
    let _serial = exclusive();
    let live = Baton::start(&run_args(&["--ready", "notify", "--name", "live"], &[]));
    let live_worker = live.wait_ready(1);
    let mut killed = Baton::start(&run_args(&["--ready", "notify", "--name", "killed"], &[]));
    let worker = killed.wait_ready(1);
    let notify_dir_of = |pid| {
        let socket = PathBuf::from(environment_of(pid, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET"));
        socket.parent().unwrap().to_owned()
    };
    let left = notify_dir_of(worker);
    let kept = notify_dir_of(live_worker);
    killed.signal(Signal::SIGKILL);
    killed.wait_exit();
    assert!(
        eventually(|| !alive(worker)),
        "the guardian kills the worker"
    );
    assert!(left.is_dir(), "a killed baton cannot clean up");
    let _ = std::fs::remove_file(killed.control());

    let next = Baton::start(&run_args(&["--ready", "notify", "--name", "killed"], &[]));
    next.wait_ready(1);
    assert!(!left.exists(), "{} is left over", left.display());
    assert!(kept.is_dir(), "a live baton's directory is kept");
    for mut baton in [next, live] {
        baton.signal(Signal::SIGTERM);
        assert!(baton.wait_exit().success(), "{}", baton.output());
    }
    assert!(!kept.exists(), "removed at exit");
}

/// A tmp cleaner removes the notify directory while baton runs: baton
/// makes it again (generation 1's socket included) and the next reloads
/// work, under load, without a failed request.
#[test]
fn a_removed_notify_directory_is_made_again_and_the_next_reload_works() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
    let first = baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::NewConnection, 4);
    traffic.serve(50);
    let socket = PathBuf::from(environment_of(first, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET"));
    let dir = socket.parent().unwrap().to_owned();

    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        eventually(|| socket.exists()),
        "not made again: {}",
        baton.output()
    );
    baton.wait_for(&["notify directory vanished"]);
    let (exit, response) = baton.ctl_json(&["reload"]);
    assert!(exit.success(), "{response:#}");
    assert_eq!(response["reload"]["generation"], 2, "{response:#}");
    traffic.serve(50);

    // Right before a reload: the spawn repairs it if the check did not.
    std::fs::remove_dir_all(&dir).unwrap();
    let (exit, response) = baton.ctl_json(&["reload"]);
    assert!(exit.success(), "{response:#}");
    assert_eq!(response["reload"]["generation"], 3, "{response:#}");
    traffic.serve(50);

    let report = traffic.finish();
    assert_no_failures(&report);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert!(!dir.exists(), "removed at exit");
}
