//! Server::Starter (`start_server`), driven through its output.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use baton_e2e::test_worker_bin;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::WAIT;
use crate::process::{Owned, free_port};
use crate::servers::{Reload, Server};

/// Every line a process wrote, with the instant it was read.
#[derive(Default)]
pub struct TimedLines {
    pub lines: Mutex<Vec<(Instant, String)>>,
    pub changed: Condvar,
}

impl TimedLines {
    pub fn read(self: &Arc<Self>, pipe: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("BATON_E2E_ECHO").is_some() {
                    eprintln!("{line}");
                }
                lines.lines.lock().unwrap().push((Instant::now(), line));
                lines.changed.notify_all();
            }
        });
    }

    pub fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// Waits for the `nth` (1-based) line containing every one of `needles`.
    pub fn wait_nth(&self, nth: usize, needles: &[&str]) -> (Instant, String) {
        self.wait_nth_within(nth, needles, WAIT).unwrap_or_else(|| {
            let lines = self.lines.lock().unwrap();
            let output: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
            panic!(
                "no line #{nth} with {needles:?} within {WAIT:?}; output:\n{}",
                output.join("\n")
            );
        })
    }

    /// The `nth` line containing every one of `needles`, if it comes
    /// within `limit`.
    pub fn wait_nth_within(
        &self,
        nth: usize,
        needles: &[&str],
        limit: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(found) = lines
                .iter()
                .filter(|(_, l)| needles.iter().all(|n| l.contains(n)))
                .nth(nth - 1)
            {
                return Some(found.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}

/// `start_server --port=127.0.0.1:PORT -- test-worker` (Server::Starter);
/// SIGHUP starts a new worker, waits `--interval` (1 s by default), then
/// sends SIGTERM to the old one.
///
/// start_server can miss a SIGHUP: its signal handler pushes the signal,
/// but a HUP that lands just as its main loop goes back to `wait()` (after
/// it decided there was nothing to do, before it armed the handler to
/// interrupt the wait) leaves it blocked until some child exits. The bench
/// triggers right after the previous reload ended, which is exactly then.
/// A HUP not acknowledged (`received HUP`) within a second is counted as
/// lost, and start_server is woken with SIGALRM, which it ignores otherwise;
/// the reload is timed from the first SIGHUP.
pub struct StartServer {
    pub process: Owned,
    pub lines: Arc<TimedLines>,
    pub port: u16,
    pub worker: i32,
    pub lost_hups: usize,
}

impl StartServer {
    pub fn start() -> StartServer {
        let port = free_port();
        let mut child = Command::new("start_server")
            .arg(format!("--port=127.0.0.1:{port}"))
            .arg("--")
            .arg(test_worker_bin())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start start_server");
        let lines = Arc::new(TimedLines::default());
        lines.read(child.stdout.take().expect("piped"));
        lines.read(child.stderr.take().expect("piped"));
        let (_, started) = lines.wait_nth(1, &["starting new worker "]);
        let worker = last_number(&started);
        lines.wait_nth(1, &[&format!("test-worker pid={worker} ready")]);
        StartServer {
            process: Owned(child),
            lines,
            port,
            worker,
            lost_hups: 0,
        }
    }
}

impl Drop for StartServer {
    /// After a panic: SIGTERM lets start_server stop its workers; killing
    /// it outright would leave them behind.
    fn drop(&mut self) {
        let child = &mut self.process.0;
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.process.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.process.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(Pid::from_raw(self.worker), Signal::SIGKILL);
    }
}

/// The number at the end of a line (`starting new worker 1234`).
pub fn last_number(line: &str) -> i32 {
    line.rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

impl Server for StartServer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn reload(&mut self) -> Reload {
        let running = self.lines.count("new worker is now running");
        let started = self.lines.count("starting new worker ");
        let heard = self.lines.count("received HUP");
        let pid = Pid::from_raw(self.process.pid());
        let trigger = Instant::now();
        let _ = kill(pid, Signal::SIGHUP);
        if self
            .lines
            .wait_nth_within(heard + 1, &["received HUP"], Duration::from_secs(1))
            .is_none()
        {
            self.lost_hups += 1;
            let _ = kill(pid, Signal::SIGALRM);
        }
        let (_, line) = self.lines.wait_nth(started + 1, &["starting new worker "]);
        let old = std::mem::replace(&mut self.worker, last_number(&line));
        let (ready, _) = self
            .lines
            .wait_nth(running + 1, &["new worker is now running"]);
        let (gone, _) = self.lines.wait_nth(1, &[&format!("old worker {old} died")]);
        Reload {
            trigger,
            ready,
            gone,
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        Some(self.process.pid())
    }

    fn stop(&mut self) {
        self.process.stop(Signal::SIGTERM);
    }

    fn notes(&self) -> Option<String> {
        (self.lost_hups > 0).then(|| {
            format!(
                "{} SIGHUP(s) lost by start_server (no `received HUP` within 1 s; woken with SIGALRM, reload timed from the first SIGHUP)",
                self.lost_hups
            )
        })
    }
}
