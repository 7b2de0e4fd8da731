//! The systems under test and how each one reloads: baton, a plain
//! restart, a socket holder that kills its worker (start_server is in
//! `start_server`).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_e2e::{Baton, run_args, test_worker_bin};
use nix::sys::signal::Signal;

use crate::process::{Notify, Owned, free_port};
use crate::start_server::StartServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Baton,
    Restart,
    StartServer,
    FdHolder,
    FdHolderTerm,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Baton => "baton",
            System::Restart => "restart",
            System::StartServer => "start_server",
            System::FdHolder => "fd-holder",
            System::FdHolderTerm => "fd-holder-term",
        }
    }

    pub fn start(self) -> Box<dyn Server> {
        match self {
            System::Baton => Box::new(BatonServer::start()),
            System::Restart => Box::new(RestartServer::start()),
            System::StartServer => Box::new(StartServer::start()),
            System::FdHolder => Box::new(FdHolder::start(Signal::SIGKILL)),
            System::FdHolderTerm => Box::new(FdHolder::start(Signal::SIGTERM)),
        }
    }
}

/// One reload, as the bench saw it.
#[derive(Debug, Clone, Copy)]
pub struct Reload {
    pub trigger: Instant,
    /// The new worker is ready (as its supervisor decides: for baton its
    /// READY=1, for start_server the end of its `--interval`).
    pub ready: Instant,
    /// The old worker has exited.
    pub gone: Instant,
}

impl Reload {
    pub fn until_ready(&self) -> Duration {
        self.ready - self.trigger
    }

    /// Trigger → new worker ready and old worker gone.
    pub fn until_done(&self) -> Duration {
        self.ready.max(self.gone) - self.trigger
    }
}

/// A running system under test.
pub trait Server {
    fn addr(&self) -> SocketAddr;
    /// Triggers a reload and waits until it is complete.
    fn reload(&mut self) -> Reload;
    /// The supervisor process whose RSS and CPU time the row reports.
    fn supervisor_pid(&self) -> Option<i32>;
    /// Stops everything it started.
    fn stop(&mut self);
    /// Anything odd the system did during the row.
    fn notes(&self) -> Option<String> {
        None
    }
}

/// `baton run --listen http=127.0.0.1:0 --ready notify -- test-worker`.
pub struct BatonServer {
    pub baton: Baton,
    pub generation: u64,
    pub addr: SocketAddr,
}

impl BatonServer {
    pub fn start() -> BatonServer {
        let baton = Baton::start(&run_args(&["--ready", "notify"], &[]));
        baton.wait_ready(1);
        let addr = baton.address("http");
        BatonServer {
            baton,
            generation: 1,
            addr,
        }
    }
}

impl Server for BatonServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn reload(&mut self) -> Reload {
        let trigger = Instant::now();
        self.baton.signal(Signal::SIGHUP);
        self.generation += 1;
        self.baton.wait_ready(self.generation);
        let ready = Instant::now();
        wait_exited(&self.baton, self.generation - 1);
        Reload {
            trigger,
            ready,
            gone: Instant::now(),
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        Some(self.baton.pid())
    }

    fn stop(&mut self) {
        self.baton.signal(Signal::SIGTERM);
        let status = self.baton.wait_exit();
        assert!(status.success(), "baton: {status:?}");
    }
}

/// Waits for baton's `exited` line of `generation`.
pub fn wait_exited(baton: &Baton, generation: u64) -> String {
    baton.wait_for(&["exited", &format!(" generation={generation} ")])
}

/// `test-worker --bind 127.0.0.1:PORT`, telling `notify` when it is ready.
pub fn spawn_bound_worker(port: u16, notify: &Notify) -> Owned {
    let child = Command::new(test_worker_bin())
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start test-worker");
    Owned(child)
}

/// Stop the worker (SIGTERM, wait), start a new one that binds the port
/// itself: what a plain service restart does.
pub struct RestartServer {
    pub port: u16,
    pub notify: Notify,
    pub worker: Owned,
}

impl RestartServer {
    pub fn start() -> RestartServer {
        let port = free_port();
        let notify = Notify::new();
        let mut worker = spawn_bound_worker(port, &notify);
        notify.wait_ready(&mut worker.0);
        RestartServer {
            port,
            notify,
            worker,
        }
    }
}

impl Server for RestartServer {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn reload(&mut self) -> Reload {
        let trigger = Instant::now();
        self.worker.stop(Signal::SIGTERM);
        let gone = Instant::now();
        self.worker = spawn_bound_worker(self.port, &self.notify);
        let ready = self.notify.wait_ready(&mut self.worker.0);
        Reload {
            trigger,
            ready,
            gone,
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        None
    }

    fn stop(&mut self) {
        self.worker.stop(Signal::SIGTERM);
    }
}

/// Holds the listening socket and restarts the worker by killing it, like
/// systemfd under a file watcher: the socket never closes, but the old
/// worker is gone before the new one serves.
pub struct FdHolder {
    pub socket: socket2::Socket,
    pub addr: SocketAddr,
    pub signal: Signal,
    pub notify: Notify,
    pub worker: Owned,
}

impl FdHolder {
    pub fn start(signal: Signal) -> FdHolder {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        socket.bind(&addr.into()).expect("bind");
        // The same accept queue length as baton's default.
        socket.listen(1024).expect("listen");
        let addr = socket
            .local_addr()
            .expect("local_addr")
            .as_socket()
            .expect("an inet address");
        let notify = Notify::new();
        let mut worker = spawn_fd_worker(socket.as_raw_fd(), &notify);
        notify.wait_ready(&mut worker.0);
        FdHolder {
            socket,
            addr,
            signal,
            notify,
            worker,
        }
    }
}

/// `test-worker` with the socket at fd 3, `LISTEN_FDS=1` and `LISTEN_PID`
/// set to its own pid by a shell that then execs it.
pub fn spawn_fd_worker(fd: RawFd, notify: &Notify) -> Owned {
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
        .arg(test_worker_bin())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and
    // exec; `fd` is an open descriptor of this process.
    unsafe {
        command.pre_exec(move || {
            let rc = if fd == 3 {
                // dup2 onto itself would keep FD_CLOEXEC: clear it.
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Owned(command.spawn().expect("cannot start sh -c test-worker"))
}

impl Server for FdHolder {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn reload(&mut self) -> Reload {
        let trigger = Instant::now();
        self.worker.stop(self.signal);
        let gone = Instant::now();
        self.worker = spawn_fd_worker(self.socket.as_raw_fd(), &self.notify);
        let ready = self.notify.wait_ready(&mut self.worker.0);
        Reload {
            trigger,
            ready,
            gone,
        }
    }

    fn supervisor_pid(&self) -> Option<i32> {
        None
    }

    fn stop(&mut self) {
        self.worker.stop(Signal::SIGTERM);
    }
}
