//! Workers written for other supervisors run under baton unchanged: they
//! find their sockets in `SERVER_STARTER_PORT`, `EINHORN_FD_*`, `NGINX`
//! or, through the `listenfd` crate, `LISTEN_FDS`. Each is reloaded under
//! new-connection load with `--ready auto` (none of them says READY=1),
//! and no request may fail.

use baton_e2e::free_port;
use baton_e2e::recipes::{nginx_conf, require_sbin};
use baton_e2e::{Baton, exclusive};

use super::*;

#[test]
fn a_server_starter_worker_runs_unchanged() {
    let _serial = exclusive();
    let perl = require("perl").display().to_string();
    let worker = fixture("starter_worker.pl").display().to_string();
    let baton = Baton::start(&baton_args(
        "http=127.0.0.1:0",
        &["--ready", "auto"],
        &[&perl, &worker],
    ));
    let line = baton.wait_for(&["starter-worker pid=", "generation=1 "]);
    let port = baton.address("http").port();
    assert!(
        line.contains(&format!("port=127.0.0.1:{port} fd=3")),
        "{line}"
    );
    reloads_under_load(baton, "Server::Starter worker (accept)");
}

#[test]
fn an_einhorn_worker_runs_unchanged() {
    let _serial = exclusive();
    let worker = fixture("einhorn_worker.py").display().to_string();
    let baton = Baton::start(&baton_args(
        "http=127.0.0.1:0",
        &["--ready", "auto"],
        &[python(), &worker],
    ));
    baton.wait_for(&["einhorn-worker pid=", "fds=[3]"]);
    reloads_under_load(baton, "einhorn worker (poll)");
}

/// nginx adopts the socket named in `NGINX` because it matches its
/// `listen` directive (it binds nothing itself); QUIT is its graceful stop.
#[test]
fn nginx_adopts_the_socket_through_its_upgrade_variable() {
    let _serial = exclusive();
    let nginx = require_sbin("nginx");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir.path(), port)).unwrap();
    let baton = Baton::start(&baton_args(
        &format!("http=127.0.0.1:{port}"),
        &["--ready", "auto", "--stop-signal", "QUIT"],
        &[
            &nginx.display().to_string(),
            "-e",
            "stderr",
            "-p",
            &dir.path().display().to_string(),
            "-c",
            &conf.display().to_string(),
        ],
    ));
    baton.wait_for(&["using inherited sockets from \"3;\""]);
    reloads_under_load(baton, "nginx (epoll)");
}

#[test]
fn a_listenfd_server_runs_unchanged() {
    let _serial = exclusive();
    let server = listenfd_server().display().to_string();
    let baton = Baton::start(&baton_args(
        "http=127.0.0.1:0",
        &["--ready", "auto"],
        &[&server],
    ));
    let port = baton.address("http").port();
    baton.wait_for(&[
        "listenfd-server pid=",
        &format!("serving on 127.0.0.1:{port}"),
    ]);
    reloads_under_load(baton, "listenfd server (epoll)");
}
