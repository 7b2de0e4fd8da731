//! Logs nobody reads: a stderr that fails every write (`/dev/full`), one
//! whose reader went away (`| head -1`), one nobody reads (a full pipe),
//! and a worker that floods baton's log with `STATUS=`. baton serves on,
//! reloads, answers `ctl`, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use baton_e2e::{
    Baton, DEADLINE, TOKEN_VAR, Traffic, assert_no_failures, baton_bin, eventually, exclusive,
    output_within_deadline, processes_with_token, run_args,
};
use baton_loadgen::Mode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A baton whose stderr the test chooses (the harness's [`Baton`] reads
/// it all the time, which is what these tests must not do).
struct Unread {
    child: Child,
    token: String,
    control: PathBuf,
}

impl Unread {
    fn start(args: &[String], stderr: Stdio) -> Unread {
        let token = format!("logs-{}-{}", std::process::id(), rand_suffix());
        let control = std::env::temp_dir().join(format!("baton-e2e-{token}.sock"));
        let child = Command::new(baton_bin())
            .args(args)
            .env(TOKEN_VAR, &token)
            .env("BATON_CONTROL", &control)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start baton");
        Unread {
            child,
            token,
            control,
        }
    }

    /// `baton ctl --json ARGS…`, if baton answered.
    fn ctl(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut command = Command::new(baton_bin());
        command
            .args(["ctl", "--json", "--control"])
            .arg(&self.control)
            .args(args);
        let output = output_within_deadline(command);
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Wait until `generation` is active; the address of the first listener.
    fn wait_active(&self, generation: u64) -> SocketAddr {
        let mut address = None;
        let active = eventually(|| {
            let Some(status) = self.ctl(&["status"]) else {
                return false;
            };
            let status = &status["status"];
            address = status["listeners"][0]["address"]
                .as_str()
                .and_then(|a| a.parse().ok());
            status["generations"].as_array().is_some_and(|gens| {
                gens.iter()
                    .any(|g| g["generation"] == generation && g["state"] == "active")
            })
        });
        assert!(active, "generation {generation} never became active");
        address.expect("a TCP listener")
    }

    /// `ctl reload`, to its outcome.
    fn reload(&self) -> serde_json::Value {
        self.ctl(&["reload"]).expect("baton answers a reload")
    }

    fn stop(&mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "baton did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_nothing_left(&self) {
        assert!(
            eventually(|| processes_with_token(&self.token).is_empty()),
            "left behind: {:?}",
            processes_with_token(&self.token)
        );
        assert!(!self.control.exists(), "the control socket was removed");
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Reload under load, then stop: nothing failed, nothing is left.
fn serves_reloads_and_stops(mut baton: Unread) {
    let addr = baton.wait_active(1);
    let traffic = Traffic::start(addr, Mode::NewConnection, 4);
    traffic.serve(50);
    for generation in 2..=4 {
        let answer = baton.reload();
        assert_eq!(answer["ok"], true, "reload to {generation}: {answer}");
        traffic.serve(20);
    }
    let report = traffic.finish();
    assert_no_failures(&report);
    eprintln!(
        "fault-table: 3 reloads, {} requests, {} failed",
        report.ok,
        report.failed_total()
    );
    let status = baton.stop();
    assert!(status.success(), "baton exited with {status}");
    baton.assert_nothing_left();
}

/// Old code: the first log line panicked baton (exit 101), every worker
/// died with it and the control socket stayed.
#[test]
fn a_stderr_that_fails_every_write_is_not_fatal() {
    let _serial = exclusive();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    serves_reloads_and_stops(Unread::start(&run_args(&[], &[]), full.into()));
}

/// `baton run … 2>&1 | head -1`: the reader takes one line and goes away.
#[test]
fn a_stderr_whose_reader_went_away_is_not_fatal() {
    let _serial = exclusive();
    let (read, write) = std::io::pipe().unwrap();
    let baton = Unread::start(&run_args(&[], &[]), write.into());
    let mut first = String::new();
    BufReader::new(read).read_line(&mut first).unwrap();
    assert!(first.contains("listening"), "{first}");
    // The read end is gone: every write now fails with EPIPE.
    serves_reloads_and_stops(baton);
}

/// A pipe nobody reads: once it is full, a blocking write would stop
/// baton's loop (old code: `ctl` timed out, reloads never ended).
#[test]
fn a_stderr_nobody_reads_never_stops_baton() {
    let _serial = exclusive();
    let (read, write) = std::io::pipe().unwrap();
    let read = OwnedFd::from(read);
    shrink_pipe(&read);
    // A worker that writes nothing itself, so only baton meets the full pipe.
    let args: Vec<String> = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--ready",
        "delay=20ms",
        "--",
        "sleep",
        "1000",
    ]
    .map(String::from)
    .to_vec();
    let mut baton = Unread::start(&args, write.into());
    baton.wait_active(1);
    let mut reloads = 0;
    // One page: full once a line no longer fits in what is left of it.
    while unread_bytes(&read) < 4096 - 1024 {
        assert_eq!(baton.reload()["ok"], true);
        reloads += 1;
        assert!(reloads < 1000, "the pipe never filled");
    }
    // Full: each line from now on waits in baton's queue (1024 lines) or
    // is dropped; some 6 lines a reload overflow it.
    for _ in 0..250 {
        let started = Instant::now();
        let answer = baton.reload();
        assert_eq!(answer["ok"], true, "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a reload took {:?}",
            started.elapsed()
        );
    }
    // Someone reads again: baton's writer gets through, and says how many
    // lines it had to drop.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = std::thread::spawn({
        let log = log.clone();
        let mut read = std::fs::File::from(read);
        move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = read.read(&mut chunk) {
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }
    });
    assert_eq!(baton.reload()["ok"], true);
    let dropped = eventually(|| log.lock().unwrap().contains("log lines dropped"));
    let text = log.lock().unwrap().clone();
    assert!(dropped, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("log lines dropped"))
        .unwrap();
    eprintln!(
        "fault-table: full pipe: {reloads} reloads to fill it, 250 more each answered; {line}"
    );
    let status = baton.stop();
    assert!(status.success(), "baton exited with {status}");
    reader.join().unwrap();
    baton.assert_nothing_left();
}

fn shrink_pipe(fd: &OwnedFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe we own; the kernel rounds up to a page.
    let size = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size > 0, "F_SETPIPE_SZ");
}

fn unread_bytes(fd: &OwnedFd) -> i32 {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    bytes
}

/// Old code: one log line per `STATUS=` (1.4 GB in 8 s for a busy loop).
#[test]
fn a_worker_flooding_status_is_rate_limited() {
    let _serial = exclusive();
    let started = Instant::now();
    let mut baton = Baton::start(&run_args(
        &["--ready", "notify"],
        &["--status-flood", "20000"],
    ));
    baton.wait_ready(1);
    baton.wait_for(&["status-flood sent=20000"]);
    // The next generation has none: forgetting the first tells the rest.
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    let seconds = started.elapsed().as_secs() + 1;
    let shown = baton.count(&["worker status", "flood"]);
    assert!(
        shown as u64 <= 5 * (seconds + 1),
        "{shown} status lines in {seconds} s"
    );
    let output = baton.output();
    let suppressed: u64 = output
        .lines()
        .filter(|l| l.contains("worker status lines suppressed"))
        .filter_map(|l| baton_e2e::field(l, "suppressed")?.parse::<u64>().ok())
        .sum();
    eprintln!(
        "fault-table: STATUS flood: {shown} lines shown in {seconds} s, {suppressed} counted as suppressed"
    );
    // Those still queued at the stop are never read; the rest are shown
    // or counted.
    assert!(
        (19_000..=20_000).contains(&(suppressed + shown as u64)),
        "{shown} shown, {suppressed} suppressed"
    );
}
