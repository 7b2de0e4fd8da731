//! Processes the bench starts itself, and how it knows they are ready.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::WAIT;

/// A datagram socket a worker sends `READY=1` to (`NOTIFY_SOCKET`), so
/// the bench knows when a worker it started itself is serving.
pub struct Notify {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub socket: UnixDatagram,
}

impl Notify {
    pub fn new() -> Notify {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Notify {
            _dir: dir,
            path,
            socket,
        }
    }

    /// Waits for `READY=1` from `worker`; panics if it exits first.
    pub fn wait_ready(&self, worker: &mut Child) -> Instant {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 512];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") => {
                    return Instant::now();
                }
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("notify socket: {err}"),
            }
            if let Some(status) = worker.try_wait().expect("try_wait") {
                panic!(
                    "worker {} exited before it was ready: {status}",
                    worker.id()
                );
            }
            assert!(Instant::now() < deadline, "no READY=1 within {WAIT:?}");
        }
    }
}

/// A child that is killed (by its pid) if it is still running when dropped.
pub struct Owned(pub Child);

impl Owned {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `signal` and waits for the exit.
    pub fn stop(&mut self, signal: Signal) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), signal);
            wait_child(&mut self.0);
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits for `child` to exit; panics after [`WAIT`].
pub fn wait_child(child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit within {WAIT:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
