//! The processes a worker starts beside itself: a child left in its
//! process group (`--fork-child`), a daemon that escapes it
//! (`--setsid-daemon`). Both are forked before the runtime starts, while
//! the worker has one thread.

/// Forks a child that ignores SIGTERM and pauses forever.
pub fn fork_child() -> std::io::Result<libc::pid_t> {
    // SAFETY: no other thread exists yet (the runtime has not started),
    // and the child only calls async-signal-safe functions (signal, pause)
    // and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only, in the child of a fork.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            loop {
                libc::pause();
            }
        }
    }
    Ok(pid)
}

/// Starts a daemon the classic way: fork, `setsid`, fork again and let the
/// middle process exit. Returns the daemon's pid.
pub fn setsid_daemon() -> std::io::Result<libc::pid_t> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [read, write] = fds;
    // SAFETY: no other thread exists yet (the runtime has not started);
    // both children only make async-signal-safe calls and never return
    // into Rust code.
    let middle = unsafe { libc::fork() };
    if middle < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if middle == 0 {
        // SAFETY: async-signal-safe calls only, in the child of a fork.
        unsafe {
            libc::setsid();
            let daemon = libc::fork();
            if daemon == 0 {
                libc::close(read);
                libc::close(write);
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                loop {
                    libc::pause();
                }
            }
            libc::write(write, (&raw const daemon).cast(), size_of::<libc::pid_t>());
            libc::_exit(0);
        }
    }
    let mut daemon: libc::pid_t = 0;
    // SAFETY: closes our copy of the write end, reads into a local, and
    // waits for our own child.
    let n = unsafe {
        libc::close(write);
        let n = libc::read(read, (&raw mut daemon).cast(), size_of::<libc::pid_t>());
        libc::close(read);
        libc::waitpid(middle, std::ptr::null_mut(), 0);
        n
    };
    if n != size_of::<libc::pid_t>() as isize || daemon <= 0 {
        return Err(std::io::Error::other("the daemon did not start"));
    }
    Ok(daemon)
}
