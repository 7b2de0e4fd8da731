//! What a worker inherits, how baton stops, and how it refuses bad input.

use std::net::TcpListener;

use baton_e2e::{
    Baton, Traffic, assert_no_failures, eventually, exclusive, http_get, processes_with_token,
    run_args, test_worker_bin,
};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

#[test]
fn a_worker_gets_exactly_its_sockets_and_its_own_listen_pid() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let mut baton = Baton::start(&[
        "run".to_string(),
        "--listen".into(),
        "web=127.0.0.1:0".into(),
        "--listen".into(),
        format!("admin=unix:{}", socket.display()),
        "--ready".into(),
        "notify".into(),
        "--".into(),
        test_worker_bin().display().to_string(),
    ]);
    let pid = baton.wait_ready(1);
    let (status, body) = http_get(baton.address("web"), "/fds");
    assert_eq!(status, 200, "{body}");
    let fds: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(fds["fds"], serde_json::json!([0, 1, 2, 3, 4]), "{body}");
    assert_eq!(fds["LISTEN_PID"], pid.to_string(), "{body}");
    assert_eq!(fds["LISTEN_FDS"], "2", "{body}");
    assert_eq!(fds["LISTEN_FDNAMES"], "web:admin", "{body}");
    assert!(socket.exists());
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert!(!socket.exists(), "baton removes the unix socket it created");
}

#[test]
fn sigterm_under_load_completes_every_request_in_flight() {
    let _serial = exclusive();
    let mut baton = Baton::start(&run_args(&["--ready", "notify"], &["--work", "200ms"]));
    baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::KeepAlive, 8);
    traffic.wait_for(|s| s.ok >= 16 && s.in_flight() >= 4);
    traffic.stop();
    baton.signal(Signal::SIGTERM);
    let report = traffic.finish();
    assert_no_failures(&report);
    let status = baton.wait_exit();
    assert!(status.success(), "{status:?}\n{}", baton.output());
    assert!(
        eventually(|| processes_with_token(baton.token()).is_empty()),
        "left behind: {:?}",
        processes_with_token(baton.token())
    );
}

/// baton killed outright: its guardian kills every worker group, the
/// worker's own children included, even behind a shell wrapper.
#[test]
fn sigkill_to_baton_leaves_no_process_behind() {
    let _serial = exclusive();
    // The wrapper stays the group leader (it does not exec), so the worker
    // cannot take the inherited socket (LISTEN_PID is the shell's pid): it
    // binds a port of its own, which is all this test needs.
    let script = format!(
        "{} --fork-child --bind 127.0.0.1:0; exit $?",
        test_worker_bin().display()
    );
    let mut baton = Baton::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--ready",
        "delay=300ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    baton.wait_ready(1);
    assert!(
        eventually(|| processes_with_token(baton.token()).len() >= 5),
        "baton, its guardian, sh, the worker and its child: {:?}",
        processes_with_token(baton.token())
    );
    baton.signal(Signal::SIGKILL);
    baton.wait_exit();
    assert!(
        eventually(|| processes_with_token(baton.token()).is_empty()),
        "left behind: {:?}",
        processes_with_token(baton.token())
    );
}

/// A bad command line: the exit code, and a first line that names the
/// problem; nothing is left running.
fn refused(args: &[&str], code: i32, words: &[&str]) {
    let mut baton = Baton::start(args);
    let status = baton.wait_exit();
    baton.wait_output_closed();
    let output = baton.output();
    assert_eq!(status.code(), Some(code), "{args:?}:\n{output}");
    let first = output.lines().next().unwrap_or_default();
    for word in words {
        assert!(
            first.contains(word),
            "{word:?} not in the first line {first:?}"
        );
    }
    assert!(
        eventually(|| processes_with_token(baton.token()).is_empty()),
        "left behind after {args:?}"
    );
}

#[test]
fn bad_command_lines_are_refused_with_a_clear_error() {
    refused(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--ready-timeout",
            "soon",
            "--",
            "true",
        ],
        2,
        &["--ready-timeout", "soon", "expected a duration"],
    );
    refused(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--ready",
            "now",
            "--",
            "true",
        ],
        2,
        &["--ready", "now", "notify"],
    );
    refused(
        &["run", "--listen", "localhost:http", "--", "true"],
        2,
        &["--listen", "localhost:http", "port"],
    );
    refused(&["run", "--listen", "127.0.0.1:0"], 2, &["COMMAND"]);
    refused(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--",
            "no-such-program-for-baton",
        ],
        1,
        &["no-such-program-for-baton", "not found"],
    );
    refused(
        &[
            "run",
            "--listen",
            "unix:/nonexistent-dir/x.sock",
            "--",
            "true",
        ],
        1,
        &["/nonexistent-dir", "does not exist"],
    );
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(
        &["run", "--listen", &addr, "--", "true"],
        1,
        &[&addr, "in use"],
    );
}

/// `--pid-file`: baton's pid, written once the sockets are bound; a second
/// baton naming the same file is refused with nothing started; `kill -HUP
/// $(cat FILE)` reloads; the file goes when baton exits, and one left by a
/// killed baton is replaced.
#[test]
fn the_pid_file_names_the_running_baton_and_goes_with_it() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("baton.pid");
    let path = pid_file.display().to_string();
    let args = run_args(&["--ready", "notify", "--pid-file", &path], &[]);
    let mut baton = Baton::start(&args);
    baton.wait_for(&["pid file", &path]);
    let text = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(text, format!("{}\n", baton.pid()));
    let output = baton.output();
    assert!(
        output.find("listening") < output.find("pid file"),
        "written once the sockets are bound: {output}"
    );
    // At once, before any worker is ready: baton already handles HUP (it
    // reloads once generation 1 is ready), rather than die of it.
    let pid = nix::unistd::Pid::from_raw(text.trim().parse().unwrap());
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();

    let mut second = Baton::start(&args);
    let status = second.wait_exit();
    second.wait_output_closed();
    assert_eq!(status.code(), Some(1), "{}", second.output());
    assert_eq!(
        second.output(),
        format!(
            "baton: error: --pid-file {path}: baton {} is running with it: stop that baton, or choose another --pid-file",
            baton.pid()
        )
    );
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), text);

    baton.wait_ready(2);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert!(!pid_file.exists(), "removed at exit");

    let mut killed = Baton::start(&args);
    killed.wait_for(&["pid file"]);
    killed.signal(Signal::SIGKILL);
    killed.wait_exit();
    assert!(pid_file.exists(), "a killed baton cannot remove it");
    let mut next = Baton::start(&args);
    next.wait_for(&["pid file"]);
    let now = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(now, format!("{}\n", next.pid()), "{}", next.output());
    next.signal(Signal::SIGTERM);
    assert!(next.wait_exit().success(), "{}", next.output());
    assert!(!pid_file.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no temporary file left: {left:?}");
}

/// `--log-format json`: a figure is a JSON number, whatever its Rust type
/// (a `u128` from `Duration::as_millis` came out as a string).
#[test]
fn json_logs_give_every_figure_as_a_number() {
    let mut args = vec!["--log-format".to_owned(), "json".to_owned()];
    args.extend(run_args(&["--ready", "notify"], &[]));
    let mut baton = Baton::start(&args);
    let fields = |line: &str| -> serde_json::Value {
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let ready = fields(&baton.wait_for(&["\"message\":\"ready\"", "\"generation\":1"]));
    assert!(ready["ready_ms"].is_u64(), "{ready}");
    baton.signal(Signal::SIGHUP);
    let exited = fields(&baton.wait_for(&["\"message\":\"exited\"", "\"generation\":1"]));
    assert!(exited["drain_ms"].is_u64(), "{exited}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}
