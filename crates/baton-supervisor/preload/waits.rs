//! The calls a server waits in, wrapped for baton's own drain
//! ([`drain`](crate::drain)): each looks at the flag first, and while it
//! may still rise, waits in slices so that it is seen within a slice. In a
//! process that holds none of baton's sockets, or once it has stopped
//! taking connections, each is libc's call and nothing more.

use core::ffi::{c_int, c_void};
use core::sync::atomic::AtomicUsize;

use crate::drain::{self, EpollEvent, FdSets, PollFd, Timespec, Timeval};
use crate::{ENOSYS, SockLen, real, set_errno};

type EpollWaitFn = unsafe extern "C" fn(c_int, *mut EpollEvent, c_int, c_int) -> c_int;
type EpollPwaitFn =
    unsafe extern "C" fn(c_int, *mut EpollEvent, c_int, c_int, *const c_void) -> c_int;
type PpollFn = unsafe extern "C" fn(*mut PollFd, u64, *const Timespec, *const c_void) -> c_int;
type SelectFn = unsafe extern "C" fn(c_int, *mut u8, *mut u8, *mut u8, *mut Timeval) -> c_int;
type PselectFn =
    unsafe extern "C" fn(c_int, *mut u8, *mut u8, *mut u8, *const Timespec, *const c_void) -> c_int;
type AcceptFn = unsafe extern "C" fn(c_int, *mut u8, *mut SockLen) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut u8, *mut SockLen, c_int) -> c_int;

static REAL_EPOLL_WAIT: AtomicUsize = AtomicUsize::new(0);
static REAL_EPOLL_PWAIT: AtomicUsize = AtomicUsize::new(0);
static REAL_PPOLL: AtomicUsize = AtomicUsize::new(0);
static REAL_SELECT: AtomicUsize = AtomicUsize::new(0);
static REAL_PSELECT: AtomicUsize = AtomicUsize::new(0);
static REAL_ACCEPT: AtomicUsize = AtomicUsize::new(0);
static REAL_ACCEPT4: AtomicUsize = AtomicUsize::new(0);

/// Look up libc's calls (from the library's constructor).
pub fn resolve(resolve: fn(&AtomicUsize, &[u8])) {
    resolve(&REAL_EPOLL_WAIT, b"epoll_wait\0");
    resolve(&REAL_EPOLL_PWAIT, b"epoll_pwait\0");
    resolve(&REAL_PPOLL, b"ppoll\0");
    resolve(&REAL_SELECT, b"select\0");
    resolve(&REAL_PSELECT, b"pselect\0");
    resolve(&REAL_ACCEPT, b"accept\0");
    resolve(&REAL_ACCEPT4, b"accept4\0");
}

fn missing() -> c_int {
    set_errno(ENOSYS);
    -1
}

fn ms(timeout: c_int) -> i64 {
    i64::from(timeout)
}

/// # Safety
/// As `epoll_wait(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut EpollEvent,
    max: c_int,
    timeout: c_int,
) -> c_int {
    let Some(f) = real::<EpollWaitFn>(&REAL_EPOLL_WAIT) else {
        return missing();
    };
    if !drain::armed() {
        // SAFETY: the caller's arguments.
        return unsafe { f(epfd, events, max, timeout) };
    }
    // SAFETY: the caller's arguments, with a shorter timeout.
    drain::sliced(ms(timeout), |t| unsafe { f(epfd, events, max, t) })
}

/// # Safety
/// As `epoll_pwait(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut EpollEvent,
    max: c_int,
    timeout: c_int,
    sigmask: *const c_void,
) -> c_int {
    let Some(f) = real::<EpollPwaitFn>(&REAL_EPOLL_PWAIT) else {
        return missing();
    };
    if !drain::armed() {
        // SAFETY: the caller's arguments.
        return unsafe { f(epfd, events, max, timeout, sigmask) };
    }
    // SAFETY: the caller's arguments, with a shorter timeout; the mask
    // applies to each slice as it would to the whole wait.
    drain::sliced(ms(timeout), |t| unsafe { f(epfd, events, max, t, sigmask) })
}

/// # Safety
/// As `poll(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut PollFd, nfds: u64, timeout: c_int) -> c_int {
    if !drain::armed() {
        return crate::real_poll(fds, nfds, timeout);
    }
    drain::sliced(ms(timeout), |t| crate::real_poll(fds, nfds, t))
}

/// # Safety
/// As `ppoll(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut PollFd,
    nfds: u64,
    timeout: *const Timespec,
    sigmask: *const c_void,
) -> c_int {
    let Some(f) = real::<PpollFn>(&REAL_PPOLL) else {
        return missing();
    };
    if !drain::armed() {
        // SAFETY: the caller's arguments.
        return unsafe { f(fds, nfds, timeout, sigmask) };
    }
    drain::sliced(drain::timespec_ms(timeout), |t| {
        let slice = drain::timespec(t);
        let slice = if t < 0 {
            core::ptr::null()
        } else {
            &raw const slice
        };
        // SAFETY: the caller's arguments, with a shorter timeout.
        unsafe { f(fds, nfds, slice, sigmask) }
    })
}

/// # Safety
/// As `select(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    nfds: c_int,
    read: *mut u8,
    write: *mut u8,
    except: *mut u8,
    timeout: *mut Timeval,
) -> c_int {
    let Some(f) = real::<SelectFn>(&REAL_SELECT) else {
        return missing();
    };
    let sliced = sliced_sets(
        nfds,
        [read, write, except],
        drain::timeval_ms(timeout),
        |t| {
            let mut slice = drain::timeval(t);
            let slice = if t < 0 {
                core::ptr::null_mut()
            } else {
                &raw mut slice
            };
            // SAFETY: the caller's sets, put back as given, and a shorter timeout.
            unsafe { f(nfds, read, write, except, slice) }
        },
    );
    let Some(rc) = sliced else {
        // SAFETY: the caller's arguments.
        return unsafe { f(nfds, read, write, except, timeout) };
    };
    if rc == 0 && !timeout.is_null() {
        // As Linux's select: the time left, none after a timeout.
        // SAFETY: the caller's timeval.
        unsafe { *timeout = drain::timeval(0) };
    }
    rc
}

/// # Safety
/// As `pselect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    read: *mut u8,
    write: *mut u8,
    except: *mut u8,
    timeout: *const Timespec,
    sigmask: *const c_void,
) -> c_int {
    let Some(f) = real::<PselectFn>(&REAL_PSELECT) else {
        return missing();
    };
    let sliced = sliced_sets(
        nfds,
        [read, write, except],
        drain::timespec_ms(timeout),
        |t| {
            let slice = drain::timespec(t);
            let slice = if t < 0 {
                core::ptr::null()
            } else {
                &raw const slice
            };
            // SAFETY: the caller's sets, put back as given, and a shorter timeout.
            unsafe { f(nfds, read, write, except, slice, sigmask) }
        },
    );
    // SAFETY: the caller's arguments.
    sliced.unwrap_or_else(|| unsafe { f(nfds, read, write, except, timeout, sigmask) })
}

/// A `select`-like wait of `total_ms` in slices, its three sets put back
/// before each (a slice that times out clears them). `None` when it is not
/// to be sliced (not armed, or sets beyond `FD_SETSIZE`): the caller makes
/// the call as given, after a look at the flag.
fn sliced_sets(
    nfds: c_int,
    sets: [*mut u8; 3],
    total_ms: i64,
    mut wait: impl FnMut(c_int) -> c_int,
) -> Option<c_int> {
    let Some(kept) = drain::armed().then(|| FdSets::keep(nfds, sets)).flatten() else {
        drain::stop_if_asked();
        return None;
    };
    Some(drain::sliced(total_ms, |t| {
        kept.restore(sets);
        wait(t)
    }))
}

/// # Safety
/// As `accept(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, address: *mut u8, len: *mut SockLen) -> c_int {
    let Some(f) = real::<AcceptFn>(&REAL_ACCEPT) else {
        return missing();
    };
    if drain::armed() && drain::wait_for_connection(fd) < 0 {
        return -1;
    }
    // SAFETY: the caller's arguments.
    unsafe { f(fd, address, len) }
}

/// # Safety
/// As `accept4(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    address: *mut u8,
    len: *mut SockLen,
    flags: c_int,
) -> c_int {
    let Some(f) = real::<Accept4Fn>(&REAL_ACCEPT4) else {
        return missing();
    };
    if drain::armed() && drain::wait_for_connection(fd) < 0 {
        return -1;
    }
    // SAFETY: the caller's arguments.
    unsafe { f(fd, address, len, flags) }
}
