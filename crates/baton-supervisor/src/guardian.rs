//! A small process that kills every worker group when baton itself dies.
//!
//! `PR_SET_PDEATHSIG` reaches only baton's direct child, so a worker started
//! through `sh -c` or `npm start`, or one that forks, would outlive a baton
//! killed with SIGKILL. The guardian is forked before the runtime starts
//! (one thread: no lock can be held across the fork) and reads a pipe from
//! baton: baton writes "add pgid" after each spawn and "forget pgid" when a
//! group is gone. When the pipe hits end-of-file — baton exited, however it
//! died — the guardian sends SIGKILL to every group it still knows of and
//! exits. On a clean exit baton has forgotten every group, so nothing is
//! killed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const ADD: u32 = 1;
const FORGET: u32 = 2;

/// baton's end of the guardian: tell it about worker groups.
#[derive(Debug)]
pub struct Guardian {
    pid: libc::pid_t,
    pipe: Option<OwnedFd>,
}

impl Guardian {
    /// Fork the guardian. Call it while the process has a single thread
    /// (before the tokio runtime starts).
    pub fn start() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the caller guarantees a single thread, so the child may run
        // ordinary code; it never returns from `guard`.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                drop(write);
                guard(read)
            }
            pid => Ok(Guardian {
                pid,
                pipe: Some(write),
            }),
        }
    }

    /// The guardian's pid (baton's reaper must recognise it).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// A worker group now exists.
    pub fn add(&self, pgid: libc::pid_t) {
        self.send(ADD, pgid);
    }

    /// A worker group is gone: never kill its (reusable) id.
    pub fn forget(&self, pgid: libc::pid_t) {
        self.send(FORGET, pgid);
    }

    fn send(&self, op: u32, pgid: libc::pid_t) {
        let Some(pipe) = &self.pipe else { return };
        let mut record = [0u8; 8];
        record[..4].copy_from_slice(&op.to_ne_bytes());
        record[4..].copy_from_slice(&pgid.to_ne_bytes());
        // A pipe write of at most PIPE_BUF bytes is atomic. It fails only if
        // the guardian died, which the reaper reports.
        // SAFETY: writes a local buffer to a descriptor we own.
        unsafe { libc::write(pipe.as_raw_fd(), record.as_ptr().cast(), record.len()) };
    }

    /// Close the pipe (the guardian kills what it still knows of) and wait
    /// for it to exit, unless the reaper already reaped it.
    pub fn finish(mut self, already_reaped: bool) {
        self.pipe = None;
        if !already_reaped {
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// The guardian's whole life.
fn guard(pipe: OwnedFd) -> ! {
    // SAFETY: plain system calls on this (single-threaded) process.
    unsafe {
        // A Ctrl-C on the terminal reaches baton's whole process group, and
        // `kill -USR1 $(pidof baton)` the guardian too: it must outlive
        // baton, so it ignores every signal baton handles or ignores.
        for signal in crate::signals::guardian_ignores() {
            libc::signal(signal, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"baton-guardian".as_ptr());
        // Hold nothing of baton's (its listening sockets above all): keep
        // the pipe at fd 3 and stderr for the one line it may print.
        let fd = libc::dup2(pipe.as_raw_fd(), 3);
        libc::syscall(
            libc::SYS_close_range,
            4 as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        libc::close(0);
        libc::close(1);
        std::mem::forget(pipe);
        let killed = watch(fd);
        if killed > 0 {
            let line = b"baton-guardian: baton is gone; killed its worker groups\n";
            libc::write(2, line.as_ptr().cast(), line.len());
        }
        libc::_exit(0);
    }
}

/// Read records until end-of-file, then SIGKILL every group still known.
/// Returns how many groups were signalled.
fn watch(fd: RawFd) -> usize {
    let mut groups: Vec<libc::pid_t> = Vec::new();
    let mut record = [0u8; 8];
    loop {
        // SAFETY: reads into a local buffer from our own pipe.
        let n = unsafe { libc::read(fd, record.as_mut_ptr().cast(), record.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n != record.len() as isize {
            break;
        }
        let op = u32::from_ne_bytes(record[..4].try_into().expect("4 bytes"));
        let pgid = libc::pid_t::from_ne_bytes(record[4..].try_into().expect("4 bytes"));
        match op {
            ADD => groups.push(pgid),
            FORGET => groups.retain(|&g| g != pgid),
            _ => {}
        }
    }
    for &pgid in &groups {
        // SAFETY: signals a process group baton created for a worker.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    groups.len()
}
