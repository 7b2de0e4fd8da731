//! Start a worker: fork, put its sockets at fds 3, 4, …, set `LISTEN_PID`
//! (and `WATCHDOG_PID`, with a watchdog) to its own pid, exec. Workers also
//! get the variables of [other supervisors](supervisors) for the same
//! descriptors.
//!
//! `LISTEN_PID` must equal the worker's pid, which exists only after fork;
//! `std::process::Command` installs the environment after `pre_exec` runs
//! and may place its own error pipe where fd 3 must go. So this module forks
//! by itself: everything (argv, envp with fixed-size `LISTEN_PID=` and
//! `WATCHDOG_PID=` buffers,
//! high copies of the sockets) is prepared in the parent, and the child does
//! only async-signal-safe system calls before `execve`. Between fork and exec
//! there is no allocation, no lock and no Rust standard library I/O. With
//! `--user`, the ids were looked up before fork ([`crate::credentials`]);
//! the child only calls `setgroups`, `setgid`, `setuid`.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod supervisors;

/// Variables of baton's own environment that must not reach a worker: they
/// describe baton's sockets and baton's notify socket, not the worker's.
pub const PRIVATE_VARIABLES: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
    "LISTEN_FDS_FIRST_FD",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "FDSTORE",
    "BATON_GENERATION",
    // Set for each worker from its own sockets (see `supervisors`).
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "EINHORN_FD_COUNT",
    "EINHORN_MASTER_PID",
    "NGINX",
];

/// What went wrong starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program is not in `PATH`, or not an executable file.
    #[error("command '{0}' not found (not an executable file, nor in PATH)")]
    NotFound(String),
    /// The working directory is not a directory baton can enter.
    #[error("workdir {path}: {reason}")]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A string holds a NUL byte and cannot be passed to exec.
    #[error("'{0}' contains a NUL byte")]
    Nul(String),
    /// A system call in the parent failed.
    #[error("cannot start the worker: {0}")]
    Io(#[from] io::Error),
    /// The child could not set itself up or exec.
    #[error("cannot {stage} {program}: {source}")]
    Child {
        /// What it was doing.
        stage: &'static str,
        /// The program as resolved, for the message.
        program: String,
        /// The error.
        source: io::Error,
    },
}

/// The command a worker runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The working directory, if not baton's.
    pub cwd: Option<PathBuf>,
}

/// What a started process is to baton.
#[derive(Debug)]
pub enum Role<'a> {
    /// A generation's worker: its sockets land at fds 3, 4, … and it gets
    /// `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, `NOTIFY_SOCKET`,
    /// `BATON_GENERATION` and [other supervisors' variables](supervisors)
    /// (and `WATCHDOG_USEC`, `WATCHDOG_PID` with a watchdog).
    Worker {
        /// Its generation number.
        generation: u64,
        /// The sockets, in order, with their names.
        sockets: &'a [(&'a str, BorrowedFd<'a>)],
        /// Its generation's notify socket.
        notify_socket: &'a Path,
        /// The watchdog interval asked of it, if any.
        watchdog: Option<Duration>,
    },
    /// A helper such as the build step: no socket and none of those
    /// variables.
    Helper,
}

impl Role<'_> {
    fn sockets(&self) -> &[(&str, BorrowedFd<'_>)] {
        match self {
            Role::Worker { sockets, .. } => sockets,
            Role::Helper => &[],
        }
    }
}

/// One process to start.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    /// What to exec, and where.
    pub command: &'a WorkerCommand,
    /// A worker or a helper.
    pub role: Role<'a>,
    /// The environment to start from (baton's own, usually).
    pub env: Vec<(OsString, OsString)>,
    /// Where stdout and stderr go instead of baton's own.
    pub output: Option<BorrowedFd<'a>>,
    /// The user to run as (`--user`), instead of baton's own.
    pub user: Option<&'a crate::credentials::Credentials>,
}

/// Find the program the way `execvp` would, but in the parent, so that a
/// missing program is a clear error instead of a child that exits 127.
pub fn resolve_program(program: &OsStr, cwd: Option<&Path>) -> Result<PathBuf, SpawnError> {
    // A relative program is looked up in the workdir: a missing workdir
    // must be named as such, not as a missing program.
    if let Some(cwd) = cwd {
        let reason = match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some("not a directory".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = reason {
            return Err(SpawnError::Workdir {
                path: cwd.to_owned(),
                reason,
            });
        }
    }
    let not_found = || SpawnError::NotFound(program.to_string_lossy().into_owned());
    let candidate = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        let on_disk = match cwd {
            Some(cwd) if candidate.is_relative() => cwd.join(candidate),
            _ => candidate.to_path_buf(),
        };
        return if is_executable(&on_disk) {
            Ok(candidate.to_path_buf())
        } else {
            Err(not_found())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(candidate))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
const WATCHDOG_PID_PREFIX: &[u8] = b"WATCHDOG_PID=";

/// Write `LISTEN_PID=<pid>\0` into `buf` without allocating: this runs
/// between fork and exec.
fn write_listen_pid(buf: &mut [u8; 32], pid: libc::pid_t) {
    write_pid_variable(buf, LISTEN_PID_PREFIX, pid);
}

/// Write `<prefix><pid>\0` into `buf` without allocating.
fn write_pid_variable(buf: &mut [u8; 32], prefix: &[u8], pid: libc::pid_t) {
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - start;
    buf[..prefix.len()].copy_from_slice(prefix);
    let prefix = prefix.len();
    buf[prefix..prefix + len].copy_from_slice(&digits[start..]);
    buf[prefix + len] = 0;
}

fn cstring(bytes: impl Into<Vec<u8>>) -> Result<CString, SpawnError> {
    let bytes = bytes.into();
    CString::new(bytes.clone()).map_err(|_| SpawnError::Nul(String::from_utf8_lossy(&bytes).into()))
}

/// Everything the child needs, built before fork.
struct PreparedExec {
    path: CString,
    cwd: Option<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    listen_pid: Box<[u8; 32]>,
    /// `WATCHDOG_PID=`, filled like `LISTEN_PID=`, when there is a watchdog.
    watchdog_pid: Option<Box<[u8; 32]>>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Copies of the sockets at fds ≥ 3+N, so no dup2 target clobbers one.
    sources: Vec<OwnedFd>,
    dev_null: OwnedFd,
    output: Option<OwnedFd>,
    empty_mask: libc::sigset_t,
    /// The descriptor limit baton was started with, if it raised its own.
    nofile: Option<libc::rlimit>,
    /// baton's pid, to tell whether it died before the child armed
    /// `PR_SET_PDEATHSIG`.
    parent: libc::pid_t,
    /// The user to become: uid, gid and every group.
    user: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
}

impl PreparedExec {
    fn new(request: &SpawnRequest<'_>, path: &Path) -> Result<Self, SpawnError> {
        let command = request.command;
        let mut argv = vec![cstring(command.program.as_bytes())?];
        for arg in &command.args {
            argv.push(cstring(arg.as_bytes())?);
        }
        let mut env = Vec::new();
        for (key, value) in &request.env {
            let private = PRIVATE_VARIABLES.iter().any(|v| OsStr::new(v) == key)
                || key.as_bytes().starts_with(b"EINHORN_FD_");
            if !private {
                let mut pair = key.clone().into_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                env.push(cstring(pair)?);
            }
        }
        let mut watchdog_pid = None;
        if let Role::Worker {
            generation,
            sockets,
            notify_socket,
            watchdog,
        } = request.role
        {
            let names: Vec<&str> = sockets.iter().map(|(name, _)| *name).collect();
            env.push(cstring(format!("LISTEN_FDS={}", sockets.len()))?);
            env.push(cstring(format!("LISTEN_FDNAMES={}", names.join(":")))?);
            let mut notify = b"NOTIFY_SOCKET=".to_vec();
            notify.extend_from_slice(notify_socket.as_os_str().as_bytes());
            env.push(cstring(notify)?);
            env.push(cstring(format!("BATON_GENERATION={generation}"))?);
            let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
            for var in supervisors::variables(generation, &fds, std::process::id()) {
                env.push(cstring(var)?);
            }
            if let Some(interval) = watchdog {
                env.push(cstring(format!("WATCHDOG_USEC={}", interval.as_micros()))?);
                watchdog_pid = Some(Box::new([0u8; 32]));
            }
        }

        let mut listen_pid = Box::new([0u8; 32]);
        write_listen_pid(&mut listen_pid, 0);
        let mut envp_ptrs: Vec<_> = env.iter().map(|s| s.as_ptr()).collect();
        if let Role::Worker { .. } = request.role {
            envp_ptrs.push(listen_pid.as_ptr().cast());
        }
        if let Some(slot) = &mut watchdog_pid {
            write_pid_variable(slot, WATCHDOG_PID_PREFIX, 0);
            envp_ptrs.push(slot.as_ptr().cast());
        }
        envp_ptrs.push(std::ptr::null());
        let mut argv_ptrs: Vec<_> = argv.iter().map(|s| s.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        let first_free = 3 + request.role.sockets().len() as RawFd;
        let sources = request
            .role
            .sockets()
            .iter()
            .map(|(_, fd)| dup_above(fd.as_fd(), first_free))
            .collect::<io::Result<Vec<_>>>()?;
        let dev_null = dup_above(std::fs::File::open("/dev/null")?.as_fd(), first_free)?;
        let output = request
            .output
            .map(|fd| dup_above(fd, first_free))
            .transpose()?;

        // SAFETY: sigemptyset only writes the set it is given.
        let empty_mask = unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            set
        };
        Ok(PreparedExec {
            path: cstring(path.as_os_str().as_bytes())?,
            cwd: command
                .cwd
                .as_ref()
                .map(|c| cstring(c.as_os_str().as_bytes()))
                .transpose()?,
            _argv: argv,
            argv_ptrs,
            _env: env,
            listen_pid,
            watchdog_pid,
            envp_ptrs,
            sources,
            dev_null,
            output,
            empty_mask,
            nofile: crate::fdlimit::for_children(),
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            user: request
                .user
                .map(|user| (user.uid, user.gid, user.groups.clone())),
        })
    }

    /// Runs in the child between fork and exec: async-signal-safe calls
    /// only. Returns only on failure, with the stage and errno.
    fn exec_in_child(&mut self, error_pipe: RawFd) -> (u8, i32) {
        let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: every call below is async-signal-safe, takes pointers to
        // buffers that were built before fork and stay alive, and touches
        // only this process (the child).
        unsafe {
            // Its own process group, so baton can signal the whole worker.
            if libc::setpgid(0, 0) != 0 {
                return (STAGE_SETUP, errno());
            }
            // Groups first, while still root; the uid last. Before the
            // death signal: a change of credentials clears it.
            if let Some((uid, gid, groups)) = &self.user
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0)
            {
                return (STAGE_USER, errno());
            }
            // If baton dies before its guardian learns this group, the
            // leader at least dies with it (and has no children yet).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != self.parent {
                libc::_exit(127);
            }
            // A clean start: no blocked signal, default dispositions (Rust
            // ignores SIGPIPE; exec keeps ignored signals ignored).
            libc::sigprocmask(libc::SIG_SETMASK, &self.empty_mask, std::ptr::null_mut());
            for signal in 1..32 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            if libc::dup2(self.dev_null.as_raw_fd(), 0) < 0 {
                return (STAGE_SETUP, errno());
            }
            if let Some(output) = &self.output
                && (libc::dup2(output.as_raw_fd(), 1) < 0 || libc::dup2(output.as_raw_fd(), 2) < 0)
            {
                return (STAGE_SETUP, errno());
            }
            // Sources sit above 3+N, so no target clobbers a source, and
            // dup2 to a different fd clears FD_CLOEXEC on the target.
            for (i, source) in self.sources.iter().enumerate() {
                if libc::dup2(source.as_raw_fd(), 3 + i as RawFd) < 0 {
                    return (STAGE_SETUP, errno());
                }
            }
            // Whatever else baton holds must not leak into the worker, even a
            // descriptor baton itself inherited without FD_CLOEXEC. Marking
            // (not closing) keeps the error pipe usable until exec. Kernels
            // before 5.11 lack the flag; baton's own fds are CLOEXEC anyway.
            let first_free = 3 + self.sources.len() as libc::c_uint;
            libc::syscall(
                libc::SYS_close_range,
                first_free,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            let _ = error_pipe;
            if let Some(nofile) = &self.nofile
                && libc::setrlimit(libc::RLIMIT_NOFILE, nofile) != 0
            {
                return (STAGE_SETUP, errno());
            }
            if let Some(cwd) = &self.cwd
                && libc::chdir(cwd.as_ptr()) != 0
            {
                return (STAGE_CHDIR, errno());
            }
            let pid = libc::getpid();
            write_listen_pid(&mut self.listen_pid, pid);
            if let Some(slot) = &mut self.watchdog_pid {
                write_pid_variable(slot, WATCHDOG_PID_PREFIX, pid);
            }
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            );
            (STAGE_EXEC, errno())
        }
    }
}

const STAGE_SETUP: u8 = 1;
const STAGE_CHDIR: u8 = 2;
const STAGE_EXEC: u8 = 3;
const STAGE_USER: u8 = 4;

fn stage_name(stage: u8) -> &'static str {
    match stage {
        STAGE_CHDIR => "change to the working directory of",
        STAGE_EXEC => "execute",
        STAGE_USER => "switch to the --user of",
        _ => "set up the process of",
    }
}

/// Duplicate `fd` to the lowest free descriptor ≥ `min`, close-on-exec.
fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches nothing else.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A close-on-exec pipe: (read end, write end), the write end above `min`.
fn error_pipe(min: RawFd) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((read, dup_above(write.as_fd(), min)?))
}

/// Start one worker; returns its pid, which is also its process group id.
///
/// The caller must reap it (baton's one reaper does). The child's exec
/// failure is reported here, and that child is reaped here.
pub fn spawn(request: &SpawnRequest<'_>) -> Result<libc::pid_t, SpawnError> {
    let path = resolve_program(&request.command.program, request.command.cwd.as_deref())?;
    let mut prepared = PreparedExec::new(request, &path)?;
    let (read_end, write_end) = error_pipe(3 + request.role.sockets().len() as RawFd)?;

    // SAFETY: the child runs only `exec_in_child` (async-signal-safe calls on
    // memory prepared above) and then `_exit`, never returning into Rust code
    // that could take a lock another thread held at fork time.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if pid == 0 {
        let (stage, errno) = prepared.exec_in_child(write_end.as_raw_fd());
        let mut report = [0u8; 5];
        report[0] = stage;
        report[1..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write and _exit are async-signal-safe; the buffer is on
        // this stack. _exit skips atexit handlers and destructors.
        unsafe {
            libc::write(write_end.as_raw_fd(), report.as_ptr().cast(), report.len());
            libc::_exit(127);
        }
    }
    drop(write_end);
    drop(prepared);
    match read_report(&read_end)? {
        None => Ok(pid),
        Some((stage, errno)) => {
            // The child exits at once; reap it here so no zombie is left.
            let mut status = 0;
            // SAFETY: waits for our own child, whose pid we hold.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Err(SpawnError::Child {
                stage: stage_name(stage),
                program: path.display().to_string(),
                source: io::Error::from_raw_os_error(errno),
            })
        }
    }
}

/// EOF means exec succeeded (the write end closed on exec); five bytes are a
/// failure report from the child.
fn read_report(read_end: &OwnedFd) -> io::Result<Option<(u8, i32)>> {
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reads into the unfilled part of a local buffer.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    if got < report.len() {
        return Ok(None);
    }
    let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
    Ok(Some((report[0], errno)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen_pid(pid: libc::pid_t) -> String {
        let mut buf = [0xffu8; 32];
        write_listen_pid(&mut buf, pid);
        let end = buf.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(buf[..end].to_vec()).unwrap()
    }

    #[test]
    fn listen_pid_is_written_without_allocating() {
        assert_eq!(listen_pid(0), "LISTEN_PID=0");
        assert_eq!(listen_pid(7), "LISTEN_PID=7");
        assert_eq!(listen_pid(4194304), "LISTEN_PID=4194304");
        assert_eq!(listen_pid(i32::MAX), "LISTEN_PID=2147483647");
        let mut buf = [0xffu8; 32];
        write_pid_variable(&mut buf, WATCHDOG_PID_PREFIX, i32::MAX);
        let end = buf.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&buf[..end], b"WATCHDOG_PID=2147483647");
    }

    #[test]
    fn programs_resolve_like_execvp() {
        assert_eq!(
            resolve_program(OsStr::new("sh"), None)
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
        assert!(resolve_program(OsStr::new("/bin/sh"), None).is_ok());
        let err = resolve_program(OsStr::new("no-such-program-baton"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "command 'no-such-program-baton' not found (not an executable file, nor in PATH)"
        );
        // A directory or a file without an x bit is not a program.
        assert!(resolve_program(OsStr::new("/tmp/"), None).is_err());
        let err = resolve_program(OsStr::new("sh"), Some(Path::new("/no/such/dir"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "workdir /no/such/dir: No such file or directory (os error 2)"
        );
    }
}
