//! A small process that kills every worker group when baton itself dies.
//!
//! `PR_SET_PDEATHSIG` reaches only baton's direct child, so a worker started
//! through `sh -c` or `npm start`, or one that forks, would outlive a baton
//! killed with SIGKILL. The guardian reads a pipe from baton: baton writes
//! "add pgid" after each spawn and "forget pgid" when a group is gone. When
//! the pipe hits end-of-file — baton exited, however it died — the guardian
//! sends SIGKILL to every group it still knows of and exits. On a clean exit
//! baton has forgotten every group, so nothing is killed.
//!
//! The guardian is baton's own binary (`/proc/self/exe`, which works even
//! when the file was replaced or deleted by an upgrade), exec'd with argv[0]
//! [`GUARDIAN_NAME`]: baton's `main` sees that name and runs [`serve`]
//! instead. Exec'ing, rather than running Rust code in a bare fork, is what
//! lets baton start a guardian at any time: a guardian that dies is
//! replaced from the multi-threaded baton, where a forked child may make
//! only async-signal-safe calls. The name also keeps `pidof baton` to baton
//! alone.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::spawn::PRIVATE_VARIABLES;

/// argv[0] of the guardian, and the name `ps` and `pidof` show.
pub const GUARDIAN_NAME: &str = "baton-guardian";

/// Where the guardian finds its end of the pipe.
const PIPE_FD: RawFd = 3;

const ADD: u32 = 1;
const FORGET: u32 = 2;

/// baton's end of the guardian: tell it about worker groups.
#[derive(Debug)]
pub struct Guardian {
    pid: libc::pid_t,
    pipe: Option<OwnedFd>,
}

impl Guardian {
    /// Start a guardian: fork, and exec baton's own binary in the guardian
    /// role. Safe to call from a multi-threaded process: the child makes
    /// only async-signal-safe calls before `execve`. Returns once the exec
    /// has happened, so the pid it reports is already `baton-guardian`.
    pub fn start() -> io::Result<Self> {
        Self::start_from(c"/proc/self/exe")
    }

    fn start_from(exe: &CStr) -> io::Result<Self> {
        let (read, write) = pipe()?;
        // Close-on-exec: end-of-file on it means the exec happened; four
        // bytes mean it failed, with that errno (what std's spawn does).
        let (exec_read, exec_write) = pipe()?;
        let prepared = Prepared::new(exe, read.as_fd(), exec_write.as_fd())?;
        drop((read, exec_write));
        // SAFETY: the child runs only `exec_in_child` (async-signal-safe
        // calls on memory prepared above), then `_exit`; it never returns
        // into Rust code that could take a lock held at fork time.
        let pid = match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()),
            0 => {
                prepared.exec_in_child();
                // SAFETY: _exit is async-signal-safe and skips destructors.
                unsafe { libc::_exit(127) }
            }
            pid => pid,
        };
        // The parent's copy of the exec pipe's write end must be closed,
        // or the read below never sees end-of-file.
        drop(prepared);
        let guardian = Guardian {
            pid,
            pipe: Some(write),
        };
        match exec_error(exec_read.as_fd()) {
            None => Ok(guardian),
            Some(error) => {
                guardian.finish();
                Err(error)
            }
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
        // the guardian died, which the reaper reports (and mends).
        // SAFETY: writes a local buffer to a descriptor we own.
        unsafe { libc::write(pipe.as_raw_fd(), record.as_ptr().cast(), record.len()) };
    }

    /// Close the pipe (the guardian kills what it still knows of) and wait
    /// for it to exit. Only for a guardian not reaped yet.
    pub fn finish(mut self) {
        self.pipe = None;
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

/// Whether this process was started as a guardian (argv[0] is
/// [`GUARDIAN_NAME`]); then `main` must call [`serve`] and nothing else.
pub fn is_guardian() -> bool {
    std::env::args_os().next().as_deref() == Some(OsStr::new(GUARDIAN_NAME))
}

/// The guardian's whole life: read the pipe at fd 3 until end-of-file,
/// then SIGKILL every group still known, and exit.
pub fn serve() -> ! {
    // SAFETY: plain system calls on this process, which has one thread.
    unsafe {
        // A Ctrl-C on the terminal reaches baton's whole process group, and
        // `kill -USR1 $(pidof baton)` the guardian too: it must outlive
        // baton, so it ignores every signal baton handles or ignores.
        for signal in crate::signals::guardian_ignores() {
            libc::signal(signal, libc::SIG_IGN);
        }
        // exec named it after the file (`exe`); `ps` and `top` show this.
        libc::prctl(libc::PR_SET_NAME, c"baton-guardian".as_ptr());
        // Hold nothing of baton's but the pipe and stderr (for one line).
        libc::syscall(
            libc::SYS_close_range,
            (PIPE_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        let killed = watch(PIPE_FD);
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

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Wait for the child's exec: `None` once it happened (end-of-file on the
/// close-on-exec pipe), or the error the child wrote when it failed.
fn exec_error(fd: BorrowedFd<'_>) -> Option<io::Error> {
    let mut errno = [0u8; 4];
    loop {
        // SAFETY: reads into a local buffer from our own pipe.
        let n = unsafe { libc::read(fd.as_raw_fd(), errno.as_mut_ptr().cast(), errno.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return (n == errno.len() as isize)
            .then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
    }
}

/// Duplicate `fd` above the descriptors the child sets up, close-on-exec.
fn dup_high(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches nothing else.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PIPE_FD + 1) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Everything the child needs, built before fork.
struct Prepared {
    exe: CString,
    argv: [*const libc::c_char; 2],
    envp: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    /// What the guardian ignores, set before exec: no window for a Ctrl-C.
    ignored: Vec<libc::c_int>,
    /// The pipe's read end and /dev/null, above fd 3 so that no dup2
    /// target clobbers them.
    pipe: OwnedFd,
    dev_null: OwnedFd,
    /// Where the child reports a failed exec (close-on-exec).
    exec_status: OwnedFd,
}

impl Prepared {
    fn new(exe: &CStr, pipe: BorrowedFd<'_>, exec_status: BorrowedFd<'_>) -> io::Result<Self> {
        // Baton's environment (the e2e tests find a baton's processes by
        // it), without what describes baton's own sockets and systemd.
        let env: Vec<CString> = std::env::vars_os()
            .filter(|(key, _)| !PRIVATE_VARIABLES.iter().any(|v| OsStr::new(v) == key))
            .filter_map(|(key, value)| {
                let mut pair = key.as_bytes().to_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                CString::new(pair).ok()
            })
            .collect();
        let mut envp: Vec<_> = env.iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Prepared {
            exe: exe.to_owned(),
            argv: [c"baton-guardian".as_ptr(), std::ptr::null()],
            envp,
            _env: env,
            ignored: crate::signals::guardian_ignores(),
            pipe: dup_high(pipe)?,
            dev_null: dup_high(std::fs::File::open("/dev/null")?.as_fd())?,
            exec_status: dup_high(exec_status)?,
        })
    }

    /// Runs in the child between fork and exec: async-signal-safe calls
    /// only. Returns only if exec failed, after telling the parent why.
    fn exec_in_child(&self) {
        // SAFETY: every call is async-signal-safe, uses buffers built before
        // fork, and touches only this process (the child).
        unsafe {
            // Ignored stays ignored across exec.
            for &signal in &self.ignored {
                libc::signal(signal, libc::SIG_IGN);
            }
            let mut empty = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // dup2 to another number clears FD_CLOEXEC on the target.
            if libc::dup2(self.pipe.as_raw_fd(), PIPE_FD) < 0
                || libc::dup2(self.dev_null.as_raw_fd(), 0) < 0
                || libc::dup2(self.dev_null.as_raw_fd(), 1) < 0
            {
                self.report_failure();
                return;
            }
            // Nothing else of baton's — its listening sockets above all —
            // may stay open in the guardian.
            libc::syscall(
                libc::SYS_close_range,
                (PIPE_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            libc::execve(self.exe.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            self.report_failure();
        }
    }

    /// In the child: write errno to the exec pipe (async-signal-safe).
    fn report_failure(&self) {
        // SAFETY: reads this thread's errno and writes a local buffer to a
        // descriptor the child owns.
        unsafe {
            let errno = (*libc::__errno_location()).to_ne_bytes();
            libc::write(
                self.exec_status.as_raw_fd(),
                errno.as_ptr().cast(),
                errno.len(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guardian whose exec fails is an error at once, not a pid that
    /// looks alive until the reaper finds it dead.
    #[test]
    fn a_failed_exec_is_reported_by_start() {
        let error = Guardian::start_from(c"/nonexistent/baton").expect_err("exec fails");
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
    }

    /// `start` returns after the exec: the pid already runs the new
    /// program, never a copy of the caller.
    #[test]
    fn start_returns_after_the_exec() {
        let guardian = Guardian::start_from(c"/bin/cat").expect("cat runs");
        let exe = std::fs::read_link(format!("/proc/{}/exe", guardian.pid()));
        // cat reads /dev/null and exits: a zombie has no exe link, which
        // also proves it was not the test binary.
        let test_binary = std::env::current_exe().expect("current exe");
        assert_ne!(exe.ok(), Some(test_binary));
        guardian.finish();
    }
}
