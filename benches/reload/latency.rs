//! What baton adds to a reload, stamped by both ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::process::{Notify, free_port};
use crate::procfs::monotonic_ns;
use crate::servers::{BatonServer, Server, spawn_bound_worker, wait_exited};
use crate::stats::{median, ms};
use crate::{Options, WAIT};

/// test-worker's `GET /timings`: CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub pid: i32,
    pub main_ns: u64,
    pub ready_ns: Option<u64>,
    pub stop_ns: Option<u64>,
}

/// One HTTP/1.1 connection, kept alive, for `GET /timings`.
pub struct Http {
    pub stream: TcpStream,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Http { stream }
    }

    /// `GET /timings`; `None` if the connection was closed.
    pub fn timings(&mut self) -> Option<Timings> {
        self.stream
            .write_all(b"GET /timings HTTP/1.1\r\nHost: bench\r\n\r\n")
            .ok()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let length: usize = header("content-length")?.parse().ok()?;
        let pid: i32 = header("x-pid")?.parse().ok()?;
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).ok()?;
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(Timings {
            pid,
            main_ns: json["main_ns"].as_u64()?,
            ready_ns: json["ready_ns"].as_u64(),
            stop_ns: json["stop_ns"].as_u64(),
        })
    }
}

pub struct Latency {
    /// kill(SIGHUP) → the new worker's `main`.
    pub sighup_to_main: Vec<Duration>,
    /// The new worker's READY=1 → the old worker's stop signal.
    pub ready_to_stop: Vec<Duration>,
    /// The new worker's own start: `main` → READY=1.
    pub worker_start: Vec<Duration>,
    /// For comparison: this bench's `Command::spawn` → the worker's `main`.
    pub spawn_to_main: Vec<Duration>,
}

pub fn reload_latency(plan: &Options) -> Latency {
    let mut baton = BatonServer::start();
    let addr = baton.addr();
    let mut latency = Latency {
        sighup_to_main: Vec::new(),
        ready_to_stop: Vec::new(),
        worker_start: Vec::new(),
        spawn_to_main: Vec::new(),
    };
    for _ in 0..plan.latency_samples {
        // Only the active worker accepts now: this connection is its.
        let mut old = Http::connect(addr);
        let old_pid = old.timings().expect("timings of the active worker").pid;
        let sighup = monotonic_ns();
        baton.baton.signal(Signal::SIGHUP);
        baton.generation += 1;
        let new_pid = baton.baton.wait_ready(baton.generation);
        // The old worker answers on the connection it already has until
        // its idle grace (1 s) ends; its stop_ns is set once the signal
        // has arrived.
        let deadline = Instant::now() + WAIT;
        let stopped = loop {
            let t = old.timings().expect("the old worker still answers");
            assert_eq!(t.pid, old_pid);
            if let Some(stop) = t.stop_ns {
                break stop;
            }
            assert!(Instant::now() < deadline, "the old worker never stopped");
            std::thread::sleep(Duration::from_micros(500));
        };
        drop(old);
        // The old worker no longer accepts: a new connection reaches the new one.
        let new = loop {
            let t = Http::connect(addr).timings().expect("timings");
            if t.pid == new_pid {
                break t;
            }
            assert!(Instant::now() < deadline, "the new worker never answered");
        };
        let ready = new.ready_ns.expect("the new worker is ready");
        latency
            .sighup_to_main
            .push(Duration::from_nanos(new.main_ns.saturating_sub(sighup)));
        latency
            .ready_to_stop
            .push(Duration::from_nanos(stopped.saturating_sub(ready)));
        latency
            .worker_start
            .push(Duration::from_nanos(ready.saturating_sub(new.main_ns)));
        wait_exited(&baton.baton, baton.generation - 1);
    }
    baton.stop();
    // The same worker started by this bench directly.
    let notify = Notify::new();
    for _ in 0..plan.latency_samples {
        let port = free_port();
        let spawned = monotonic_ns();
        let mut worker = spawn_bound_worker(port, &notify);
        notify.wait_ready(&mut worker.0);
        let t = Http::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .timings()
            .expect("timings");
        latency
            .spawn_to_main
            .push(Duration::from_nanos(t.main_ns.saturating_sub(spawned)));
        worker.stop(Signal::SIGTERM);
    }
    latency
}

impl Latency {
    /// What baton adds, per reload: SIGHUP → main plus READY=1 → stop.
    pub fn added(&self) -> Vec<Duration> {
        self.sighup_to_main
            .iter()
            .zip(&self.ready_to_stop)
            .map(|(a, b)| *a + *b)
            .collect()
    }

    pub fn table(&self) -> String {
        let line = |name: &str, values: &[Duration]| {
            let mut sorted = values.to_vec();
            sorted.sort_unstable();
            let p90 = sorted.get((sorted.len() * 9).div_ceil(10).saturating_sub(1));
            format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                sorted.len(),
                ms(sorted.first().copied()),
                ms(median(&sorted)),
                ms(p90.copied()),
                ms(sorted.last().copied()),
            )
        };
        let mut out = String::from(
            "No load; CLOCK_MONOTONIC stamps from the bench (kill) and from test-worker (`GET /timings`: main entry, READY=1, stop signal).\n\n\
             | interval | samples | min | median | p90 | max |\n|---|---:|---:|---:|---:|---:|\n",
        );
        out += &line("kill(SIGHUP) → new worker's main", &self.sighup_to_main);
        out += &line(
            "new worker's READY=1 → old worker's stop signal",
            &self.ready_to_stop,
        );
        out += &line("**what baton adds (sum of both)**", &self.added());
        out += &line(
            "(the worker's own start: main → READY=1)",
            &self.worker_start,
        );
        out += &line(
            "(for comparison: bench's Command::spawn → main, no baton)",
            &self.spawn_to_main,
        );
        out
    }
}
