//! `--ready auto`: a generation is ready when one of its processes waits
//! on a socket baton handed it, whatever it says or does not say.

use baton_e2e::{Baton, exclusive, http_get};
use nix::sys::signal::Signal;

use super::*;

/// A Go server that takes LISTEN_FDS, sends no READY=1 and starts 300 ms
/// late is ready once it took the socket (Go registers it in epoll when
/// it creates the listener), never before; reloads under load fail nothing.
#[test]
fn a_go_server_that_never_notifies_is_ready_once_it_listens() {
    let _serial = exclusive();
    let go = go_server().display().to_string();
    let baton = Baton::start(&baton_args(
        "http=127.0.0.1:0",
        &["--ready", "auto"],
        &[&go, "-delay", "300ms"],
    ));
    baton.wait_ready(1);
    // The order of events, not times: the worker took its socket, baton
    // saw it wait, and only then called it ready.
    assert_before(
        &baton,
        &["go-server pid=", "taking fd 3"],
        &["waits for connections", " generation=1 "],
    );
    assert_before(
        &baton,
        &["waits for connections", " generation=1 "],
        &[" ready generation=1 "],
    );
    assert!(
        baton.output().contains("registered in epoll"),
        "{}",
        baton.output()
    );
    assert!(
        ready_ms(&baton, 1) >= 300,
        "ready before the worker listened"
    );
    reloads_under_load(baton, "go (epoll)");
}

/// `python3 -m http.server`'s classes on fd 3 through a two-line wrapper:
/// socketserver waits in poll, which baton reads from the process.
#[test]
fn python_http_server_through_a_two_line_wrapper() {
    let _serial = exclusive();
    let wrapper = "import socket, sys, http.server as h\n\
        s = h.HTTPServer(('', 0), h.SimpleHTTPRequestHandler, False); s.socket = socket.socket(fileno=3); print('python-http serving', file=sys.stderr, flush=True); s.serve_forever()";
    let mut baton = Baton::start(&baton_args(
        "http=127.0.0.1:0",
        &["--ready", "auto"],
        &[python(), "-c", wrapper],
    ));
    baton.wait_ready(1);
    assert_before(&baton, &["python-http serving"], &[" ready generation=1 "]);
    assert!(
        baton.output().contains("blocked in poll"),
        "{}",
        baton.output()
    );
    assert_eq!(http_get(baton.address("http"), "/").0, 200);
    let first = ready_ms(&baton, 1);
    baton.signal(Signal::SIGHUP);
    baton.wait_ready(2);
    eprintln!(
        "python http.server (poll): time to ready {first} ms, then {} ms",
        ready_ms(&baton, 2)
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// gunicorn (2 sync workers, its own LISTEN_FDS support) whose app fails
/// to load from generation 2 on. Its master says READY=1 before any
/// worker loaded the app; under auto that does not count, the broken
/// generation never waits on the socket, and generation 1 keeps serving.
#[test]
fn gunicorn_with_an_app_that_fails_to_load_does_not_replace_the_good_one() {
    let _serial = exclusive();
    let gunicorn = require("gunicorn").display().to_string();
    let dir = fixture("");
    let mut baton = Baton::start(&baton_args(
        "http=127.0.0.1:0",
        &["--ready", "auto", "--ready-timeout", "30s"],
        &[
            python(),
            &gunicorn,
            "--workers",
            "2",
            "--chdir",
            &dir.display().to_string(),
            "gunicorn_app:app",
        ],
    ));
    baton.wait_ready(1);
    assert!(
        baton.output().contains("blocked in select"),
        "{}",
        baton.output()
    );
    let addr = baton.address("http");
    assert_eq!(http_get(addr, "/").0, 200);

    let (status, answer) = baton.ctl_json(&["reload"]);
    assert!(!status.success(), "the reload must fail: {answer}");
    let text = answer.to_string();
    assert!(text.contains("exited before ready"), "{text}");
    // gunicorn's master said READY=1; it did not count.
    baton.wait_for(&["READY=1 received", " generation=2 "]);
    assert_eq!(
        baton.count(&[" ready generation=2 "]),
        0,
        "{}",
        baton.output()
    );
    assert_eq!(http_get(addr, "/").0, 200, "generation 1 keeps serving");
    eprintln!(
        "gunicorn (select): time to ready {} ms",
        ready_ms(&baton, 1)
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// A server that binds an address of its own is never ready, and the
/// timeout says where it listens instead.
#[test]
fn a_server_that_binds_another_address_times_out_saying_where_it_listens() {
    let script = "import socket, sys\n\
        s = socket.create_server(('127.0.0.1', 0)); print('own-server listens on %s:%d' % s.getsockname(), file=sys.stderr, flush=True); s.accept()";
    let mut baton = Baton::start(&baton_args(
        "http=127.0.0.1:0",
        &["--ready", "auto", "--ready-timeout", "2s"],
        &[python(), "-c", script],
    ));
    let own = baton.wait_for(&["own-server listens on"]);
    let own = own.rsplit(' ').next().unwrap().to_owned();
    let failed = baton.wait_for(&["start failed", " generation=1 "]);
    assert!(
        failed.contains(&format!("listens on {own}, which baton does not hold")),
        "{failed}"
    );
    assert!(failed.contains("not ready within 2s"), "{failed}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}
