//! `--preload`: servers that bind their own port, unchanged, get baton's
//! socket from their own `bind()` (baton's preload library), and reload
//! under new-connection load without a failed request: node, `python3 -m
//! http.server`, nginx (master and two workers) and gunicorn (two
//! workers). Node and Python have no drain of their own (they die at once
//! on SIGTERM): baton drains them, and every old generation is seen to
//! stop taking connections and finish its own before its stop signal. A
//! server that listens elsewhere is named with both addresses; a Go
//! program gets one line of advice.

use std::net::SocketAddr;
use std::time::Instant;

use baton_e2e::{Baton, exclusive};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

use baton_e2e::free_port;
use baton_e2e::recipes::{nginx_conf, reloads_with_traffic, require_sbin};

use super::*;

/// Reloads per server. Issue 16 asks for 20 each (`PRELOAD_RELOADS=20`
/// runs that); gunicorn, whose master takes up to seconds to start and to
/// stop beside `stress-ng --cpu 2`, runs 10 in CI to stay well within the
/// load client's two minutes.
fn reloads(default: u64) -> u64 {
    std::env::var("PRELOAD_RELOADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// `baton run --listen http=LISTEN --preload --ready auto FLAGS… -- COMMAND…`.
fn preload_args(listen: &str, flags: &[&str], command: &[&str]) -> Vec<String> {
    let mut all = vec!["--preload", "--ready", "auto"];
    all.extend(flags);
    baton_args(&format!("http={listen}"), &all, command)
}

/// Generation 1 is ready; reload `reloads` times under
/// new-connection load on `addr`, each time until the old generation has
/// exited and the new one served more: zero requests may fail, and each
/// old generation (and the last, at shutdown) must have been drained by
/// baton: no longer taking connections, its own finished, before its stop
/// signal. `distinct`: the server names its process in `X-Pid`, and more
/// than one must have answered.
fn reloads_under_load_at(baton: Baton, addr: SocketAddr, name: &str, reloads: u64, distinct: bool) {
    let started = Instant::now();
    // Each reload waits for the old generation's exit: the socket the old
    // one had is the new one's, so who answers next is the new generation.
    let run = reloads_with_traffic(baton, addr, Mode::NewConnection, 8, reloads);
    let report = run.report;
    assert_no_failures(&report);
    let quiet = run
        .output
        .matches("stopped taking connections and finished its own")
        .count();
    assert_eq!(quiet as u64, reloads + 1, "{}", run.output);
    assert!(
        !run.output.contains("sending its stop signal now"),
        "{}",
        run.output
    );
    if distinct {
        assert!(
            report.distinct_header_values() > reloads as usize,
            "responses came from only {} processes: {}",
            report.distinct_header_values(),
            report.summary()
        );
    }
    let times = run.ready_ms;
    eprintln!(
        "{name} (--preload): {reloads} reloads, {}; time to ready: {}; test took {:.1} s",
        report.summary(),
        spread(times),
        started.elapsed().as_secs_f64()
    );
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `http.createServer().listen(PORT)`: libuv binds `[::]:PORT` (or
/// `0.0.0.0:PORT`), which baton's `:PORT` listener answers. Node has no
/// SIGTERM handler here: it dies at once on its stop signal, so what it
/// accepted (each answer takes 50 ms) must be finished before baton sends
/// it.
#[test]
fn node_that_listens_on_its_own_port() {
    let _serial = exclusive();
    let node = require("node").display().to_string();
    let port = free_port();
    let script = format!(
        "require('http').createServer((q, r) => setTimeout(() => {{ r.setHeader('X-Pid', process.pid); r.end('ok\\n'); }}, 50)).listen({port})"
    );
    let baton = Baton::start(&preload_args(
        &format!(":{port}"),
        &[],
        &[&node, "-e", &script],
    ));
    reloads_under_load_at(baton, local(port), "node", reloads(20), true);
}

/// `python3 -m http.server PORT`: one port, every interface. It has no
/// graceful stop: SIGTERM ends it at once, with what it accepted, unless
/// baton drained it first.
#[test]
fn python_http_server_on_its_own_port() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "ok\n").unwrap();
    let port = free_port().to_string();
    let mut command = vec![python(), "-m", "http.server", &port];
    let dir_arg = dir.path().display().to_string();
    command.extend(["--directory", &dir_arg]);
    let baton = Baton::start(&preload_args(&format!(":{port}"), &[], &command));
    let port = port.parse().unwrap();
    reloads_under_load_at(
        baton,
        local(port),
        "python3 -m http.server",
        reloads(20),
        false,
    );
}

/// nginx binds `listen 127.0.0.1:PORT` itself in its master, whose two
/// workers inherit it. (Without `NGINX`, which would make it adopt baton's
/// sockets with no preloading at all.)
#[test]
fn nginx_master_and_two_workers_bind_their_own_listen_address() {
    let _serial = exclusive();
    let nginx = require_sbin("nginx").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("nginx.conf");
    let text = nginx_conf(dir.path(), port).replace("worker_processes 1;", "worker_processes 2;");
    std::fs::write(&conf, text).unwrap();
    let prefix = dir.path().display().to_string();
    let conf = conf.display().to_string();
    let baton = Baton::start(&preload_args(
        &format!("127.0.0.1:{port}"),
        &["--stop-signal", "QUIT"],
        &[
            "env", "-u", "NGINX", &nginx, "-e", "stderr", "-p", &prefix, "-c", &conf,
        ],
    ));
    reloads_under_load_at(baton, local(port), "nginx", reloads(20), true);
}

/// gunicorn `--bind 127.0.0.1:PORT`, two sync workers. (Without
/// `LISTEN_PID`, which would make gunicorn take fd 3 by itself.)
#[test]
fn gunicorn_with_two_workers_binds_its_own_address() {
    let _serial = exclusive();
    let gunicorn = require("gunicorn").display().to_string();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let dir = fixture("").display().to_string();
    let baton = Baton::start(&preload_args(
        &bind,
        &[],
        &[
            "env",
            "-u",
            "LISTEN_PID",
            python(),
            &gunicorn,
            "--bind",
            &bind,
            "--workers",
            "2",
            "--chdir",
            &dir,
            "wsgi_pid:app",
        ],
    ));
    reloads_under_load_at(baton, local(port), "gunicorn", reloads(10), true);
}

/// A server that listens on an address baton does not hold keeps its own
/// socket, and baton names both addresses.
#[test]
fn a_server_that_listens_elsewhere_is_named_with_both_addresses() {
    // One write of the whole line: print() writes the text and its newline
    // apart, and baton's warning (written the moment the socket listens)
    // could land between them.
    let script = "import socket, sys\n\
        s = socket.create_server(('127.0.0.1', 0)); sys.stderr.write('own-server listens on %s:%d\\n' % s.getsockname()); sys.stderr.flush(); s.accept()";
    // The generation never becomes ready (it waits on its own socket); a
    // second one would print another address than the warning of the
    // first names, so none is started while the test looks.
    let mut baton = Baton::start(&preload_args("127.0.0.1:0", &[], &[python(), "-c", script]));
    let own = baton.wait_for(&["own-server listens on "]);
    let (_, own) = own.split_once("own-server listens on ").unwrap();
    let own = own.split_whitespace().next().unwrap().to_owned();
    let held = baton.address("http");
    let warning = baton.wait_for(&["which baton does not hold", " generation=1 "]);
    assert!(
        warning.contains(&format!(
            "listens on {own}, which baton does not hold (baton holds http={held})"
        )),
        "{warning}"
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

/// A Go program makes its sockets without libc: one line says so at start,
/// and points to LISTEN_FDS and `--ready auto`; it still runs (on fd 3).
#[test]
fn a_go_program_gets_one_line_of_advice() {
    let go = go_server().display().to_string();
    let mut baton = Baton::start(&preload_args("127.0.0.1:0", &[], &[&go]));
    baton.wait_ready(1);
    let line = baton.wait_for(&["is a Go program"]);
    assert!(
        line.contains("LISTEN_FDS") && line.contains("--ready auto"),
        "{line}"
    );
    assert_eq!(baton.count(&["is a Go program"]), 1, "{}", baton.output());
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}
