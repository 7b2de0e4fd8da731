//! baton's own drain, in the process: when baton raises the generation's
//! flag (`drain_page`), this process stops taking connections, and keeps
//! serving the ones it has. baton counts those from `/proc` and sends the
//! stop signal once they are done.
//!
//! Stopping means: every descriptor that refers to a socket baton handed
//! out gets, in its place (`dup3`, same number, same close-on-exec flag), a
//! listening unix socket that nobody connects to, blocking or not as the
//! shared one was. The server's next `accept` on it finds nothing
//! (`EAGAIN`, or it waits) instead of failing with `EINVAL` or taking a
//! connection the next generation should have. epoll tracks the open file,
//! not the descriptor number, so a swap alone would leave the shared
//! socket in the server's epoll sets, reporting connections it can no
//! longer accept (a busy loop): each registration of a handed socket (read
//! from `/proc/self/fdinfo`, which also shows those made through io_uring)
//! is removed first and added again, with its events and data, on the
//! socket that replaced it.
//!
//! The flag is looked at whenever a thread is about to wait, and a wait
//! is cut into slices of [`SLICE_MS`] while the flag may still rise, so
//! that a server asleep in `epoll_wait(-1)` notices it within that time.
//! Once the process has stopped (or in one that holds none of baton's
//! sockets) every call goes straight to libc.

use core::ffi::{c_char, c_int, c_long, c_void};
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use crate::drain_page;
use crate::{errno, set_errno};

/// How long a wait may last before the flag is looked at again.
const SLICE_MS: i64 = 50;
/// The most handed descriptors, and epoll registrations of them, one
/// process has that are swapped.
const MAX_SWAPS: usize = 256;

const O_RDONLY: c_int = 0;
const O_DIRECTORY: c_int = 0o200000;
const O_CLOEXEC: c_int = 0o2000000;
const O_NONBLOCK: c_int = 0o4000;
const F_GETFD: c_int = 1;
const F_GETFL: c_int = 3;
const FD_CLOEXEC: c_int = 1;
const PROT_READ: c_int = 1;
const MAP_SHARED: c_int = 1;
const MAP_FAILED: *mut c_void = !0usize as *mut c_void;
const CLOCK_MONOTONIC: c_int = 1;
const AF_UNIX: c_int = 1;
const SOCK_STREAM: c_int = 1;
const SOCK_NONBLOCK: c_int = O_NONBLOCK;
const EPOLL_CTL_ADD: c_int = 1;
const EPOLL_CTL_DEL: c_int = 2;
const POLLIN: i16 = 1;
const FD_SETSIZE: c_int = 1024;
const FD_SET_BYTES: usize = FD_SETSIZE as usize / 8;
#[cfg(target_arch = "x86_64")]
const SYS_GETDENTS64: c_long = 217;
#[cfg(target_arch = "aarch64")]
const SYS_GETDENTS64: c_long = 61;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Timespec {
    sec: i64,
    nsec: c_long,
}

#[repr(C)]
pub struct Timeval {
    sec: i64,
    usec: c_long,
}

#[repr(C)]
pub struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}

/// `struct epoll_event` (packed on x86-64, as the kernel has it).
#[cfg_attr(target_arch = "x86_64", repr(C, packed))]
#[cfg_attr(not(target_arch = "x86_64"), repr(C))]
#[derive(Clone, Copy)]
pub struct EpollEvent {
    events: u32,
    data: u64,
}

#[link(name = "c")]
unsafe extern "C" {
    fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, len: usize) -> isize;
    fn readlink(path: *const c_char, buf: *mut c_char, len: usize) -> isize;
    fn mmap(
        addr: *mut c_void,
        len: usize,
        prot: c_int,
        flags: c_int,
        fd: c_int,
        off: i64,
    ) -> *mut c_void;
    fn syscall(number: c_long, ...) -> c_long;
    fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut EpollEvent) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn sched_yield() -> c_int;
}

/// Not looked at yet, no page (nothing to do), armed (the flag may rise),
/// busy (one thread swaps), stopped (done).
const UNSET: u8 = 0;
const NONE: u8 = 1;
const ARMED: u8 = 2;
const BUSY: u8 = 3;
const STOPPED: u8 = 4;

static STATE: AtomicU8 = AtomicU8::new(UNSET);
static PAGE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Map the page named by the environment; called from the library's
/// constructor (and after a `fork` the mapping and the state carry over).
pub fn init(held_sockets: bool) {
    let page = crate::env(b"BATON_PRELOAD_DRAIN\0")
        .filter(|_| held_sockets)
        .and_then(map_page);
    match page {
        Some(page) => {
            PAGE.store(page, Ordering::Release);
            STATE.store(ARMED, Ordering::Release);
        }
        None => STATE.store(NONE, Ordering::Release),
    }
}

fn map_page(path: &[u8]) -> Option<*mut u8> {
    let mut name = [0u8; 512];
    if path.len() >= name.len() {
        return None;
    }
    for (slot, &b) in name.iter_mut().zip(path) {
        *slot = b;
    }
    // SAFETY: a NUL-terminated path (the buffer is zeroed past it); the
    // mapping is read-only, of a file baton keeps at least LEN long.
    unsafe {
        let fd = open(name.as_ptr().cast(), O_RDONLY | O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let page = mmap(
            core::ptr::null_mut(),
            drain_page::LEN,
            PROT_READ,
            MAP_SHARED,
            fd,
            0,
        );
        close(fd);
        if page == MAP_FAILED {
            return None;
        }
        let bytes = core::slice::from_raw_parts(page.cast::<u8>(), drain_page::LEN);
        drain_page::valid(bytes).then_some(page.cast())
    }
}

fn page() -> &'static [u8] {
    let page = PAGE.load(Ordering::Acquire);
    // SAFETY: set once, to a mapping of LEN bytes that is never unmapped;
    // baton writes only the flag byte after the process starts, which is
    // read with a volatile load, never through this slice.
    unsafe { core::slice::from_raw_parts(page, drain_page::LEN) }
}

/// Whether the flag may still rise here: waits are sliced, `accept` is
/// watched.
pub fn armed() -> bool {
    STATE.load(Ordering::Acquire) == ARMED
}

fn flag_raised() -> bool {
    let page = PAGE.load(Ordering::Acquire);
    // SAFETY: within the mapping; baton writes this byte from another
    // process, so it is read as volatile memory.
    !page.is_null() && unsafe { core::ptr::read_volatile(page.add(drain_page::FLAG)) } != 0
}

/// Stop taking connections if baton asked for it; true once stopped.
pub fn stop_if_asked() -> bool {
    // Another thread is taking the sockets back: wait for it, so that no
    // thread goes on to wait (or accept) on a socket about to be swapped.
    while STATE.load(Ordering::Acquire) == BUSY {
        // SAFETY: no arguments.
        unsafe { sched_yield() };
    }
    if !armed() || !flag_raised() {
        return STATE.load(Ordering::Acquire) == STOPPED;
    }
    if STATE
        .compare_exchange(ARMED, BUSY, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        let saved = errno();
        stop_taking_connections();
        set_errno(saved);
        STATE.store(STOPPED, Ordering::Release);
    }
    true
}

/// One registration of a handed socket in an epoll set.
#[derive(Clone, Copy)]
struct Registration {
    epoll: c_int,
    fd: c_int,
    event: EpollEvent,
}

fn stop_taking_connections() {
    let mut handed = [0 as c_int; MAX_SWAPS];
    let mut epolls = [0 as c_int; MAX_SWAPS];
    let (mut n_handed, mut n_epolls) = (0, 0);
    for_each_fd(|fd| {
        let (list, n) = match kind(fd) {
            Kind::Handed => (&mut handed, &mut n_handed),
            Kind::Epoll => (&mut epolls, &mut n_epolls),
            Kind::Other => return,
        };
        if let Some(slot) = list.get_mut(*n) {
            *slot = fd;
            *n += 1;
        }
    });
    let mut registrations = [Registration {
        epoll: -1,
        fd: -1,
        event: EpollEvent { events: 0, data: 0 },
    }; MAX_SWAPS];
    let mut n_registrations = 0;
    // Listed first, changed after: the set is not changed while the
    // kernel lists it.
    for &epoll in epolls.iter().take(n_epolls) {
        for_each_registration(epoll, |fd, events, data, inode| {
            if let Some(slot) = registrations.get_mut(n_registrations)
                && drain_page::names(page(), inode)
            {
                let event = EpollEvent { events, data };
                *slot = Registration { epoll, fd, event };
                n_registrations += 1;
            }
        });
    }
    for r in registrations.iter_mut().take(n_registrations) {
        // SAFETY: removes a registration; `fd` still refers to the handed
        // socket, which is how epoll finds it. One that cannot be removed
        // (the descriptor was closed: epoll keeps it while the socket
        // lives) is not added again.
        if unsafe { epoll_ctl(r.epoll, EPOLL_CTL_DEL, r.fd, &raw mut r.event) } != 0 {
            r.epoll = -1;
        }
    }
    for &fd in handed.iter().take(n_handed) {
        replace(fd);
    }
    for r in registrations.iter_mut().take(n_registrations) {
        if r.epoll >= 0 {
            // SAFETY: the registration as it was, now on the replacement.
            unsafe { epoll_ctl(r.epoll, EPOLL_CTL_ADD, r.fd, &raw mut r.event) };
        }
    }
}

/// Put a listening socket nobody connects to at `fd`.
fn replace(fd: c_int) {
    // SAFETY: plain descriptor calls; the new socket is closed here once
    // duplicated onto `fd`.
    unsafe {
        let fd_flags = fcntl(fd, F_GETFD);
        let status = fcntl(fd, F_GETFL);
        let nonblock = if status >= 0 && status & O_NONBLOCK != 0 {
            SOCK_NONBLOCK
        } else {
            0
        };
        let quiet = socket(AF_UNIX, SOCK_STREAM | O_CLOEXEC | nonblock, 0);
        if quiet < 0 {
            return;
        }
        // An abstract name the kernel picks (autobind), only to listen.
        let family = (AF_UNIX as u16).to_ne_bytes();
        let bound = crate::real_bind(quiet, family.as_ptr(), 2) == 0;
        if bound && crate::real_listen(quiet, 1) == 0 {
            let cloexec = if fd_flags >= 0 && fd_flags & FD_CLOEXEC != 0 {
                O_CLOEXEC
            } else {
                0
            };
            dup3(quiet, fd, cloexec);
        }
        close(quiet);
    }
}

enum Kind {
    Handed,
    Epoll,
    Other,
}

/// What `fd` is, from `/proc/self/fd/N`'s link.
fn kind(fd: c_int) -> Kind {
    let mut path = [0u8; 40];
    proc_path(b"/proc/self/fd/", fd, &mut path);
    let mut link = [0u8; 64];
    // SAFETY: a NUL-terminated path; link has that many writable bytes.
    let n = unsafe { readlink(path.as_ptr().cast(), link.as_mut_ptr().cast(), link.len()) };
    let Some(link) = usize::try_from(n).ok().and_then(|n| link.get(..n)) else {
        return Kind::Other;
    };
    if link == b"anon_inode:[eventpoll]" {
        return Kind::Epoll;
    }
    let inode = link
        .strip_prefix(b"socket:[")
        .and_then(|rest| rest.strip_suffix(b"]"))
        .and_then(|digits| parse(digits, 10));
    match inode {
        Some(inode) if drain_page::names(page(), inode) => Kind::Handed,
        _ => Kind::Other,
    }
}

/// Call `f` with each open descriptor (but the one used to list them).
fn for_each_fd(mut f: impl FnMut(c_int)) {
    // SAFETY: a directory opened and closed here; getdents64 fills at most
    // buf's length, in records that each say their own length.
    unsafe {
        let dir = open(
            c"/proc/self/fd".as_ptr(),
            O_RDONLY | O_DIRECTORY | O_CLOEXEC,
        );
        if dir < 0 {
            return;
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = syscall(SYS_GETDENTS64, dir, buf.as_mut_ptr(), buf.len());
            let Ok(n @ 1..) = usize::try_from(n) else {
                break;
            };
            let mut at = 0;
            // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
            while let Some(record) = buf.get(at..n)
                && let Some(&[low, high, _]) = record.get(16..19)
            {
                let reclen = usize::from(u16::from_ne_bytes([low, high]));
                let name = record.get(19..reclen.min(record.len())).unwrap_or(&[]);
                let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                if let Some(fd) = parse(name, 10).and_then(|fd| c_int::try_from(fd).ok())
                    && fd != dir
                {
                    f(fd);
                }
                if reclen == 0 {
                    break;
                }
                at += reclen;
            }
        }
        close(dir);
    }
}

/// Call `f(fd, events, data, inode)` for each registration in an epoll
/// set, from `/proc/self/fdinfo/EPOLL`: lines `tfd: 5 events: 19 data: 5
/// pos:0 ino:2a4f sdev:8`.
fn for_each_registration(epoll: c_int, mut f: impl FnMut(c_int, u32, u64, u64)) {
    let mut path = [0u8; 40];
    proc_path(b"/proc/self/fdinfo/", epoll, &mut path);
    // SAFETY: a NUL-terminated path; the file is read into buf and closed.
    unsafe {
        let file = open(path.as_ptr().cast(), O_RDONLY | O_CLOEXEC);
        if file < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut kept = 0;
        loop {
            let Some(free) = buf.get_mut(kept..) else {
                break;
            };
            let n = read(file, free.as_mut_ptr().cast(), free.len());
            let Ok(n @ 1..) = usize::try_from(n) else {
                break;
            };
            let filled = (kept + n).min(buf.len());
            let mut start = 0;
            while let Some(rest) = buf.get(start..filled)
                && let Some(end) = rest.iter().position(|&b| b == b'\n')
            {
                registration(rest.get(..end).unwrap_or(&[]), &mut f);
                start += end + 1;
            }
            // A line cut by the end of the buffer: keep it for the next
            // read (a buffer-long line is no registration: dropped).
            kept = filled.saturating_sub(start);
            if kept >= buf.len() {
                kept = 0;
            } else {
                for i in 0..kept {
                    if let Some(&b) = buf.get(start + i)
                        && let Some(slot) = buf.get_mut(i)
                    {
                        *slot = b;
                    }
                }
            }
        }
        close(file);
    }
}

fn registration(line: &[u8], f: &mut impl FnMut(c_int, u32, u64, u64)) {
    let mut fields = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty());
    let (mut fd, mut events, mut data, mut inode) = (None, None, None, None);
    while let Some(word) = fields.next() {
        match word {
            b"tfd:" => fd = fields.next().and_then(|w| parse(w, 10)),
            b"events:" => events = fields.next().and_then(|w| parse(w, 16)),
            b"data:" => data = fields.next().and_then(|w| parse(w, 16)),
            _ => {
                if let Some(hex) = word.strip_prefix(b"ino:") {
                    inode = parse(hex, 16);
                }
            }
        }
    }
    if let (Some(fd), Some(events), Some(data), Some(inode)) = (fd, events, data, inode)
        && let (Ok(fd), Ok(events)) = (c_int::try_from(fd), u32::try_from(events))
    {
        f(fd, events, data, inode);
    }
}

/// A number in `radix` (10 or 16), whole or nothing.
fn parse(digits: &[u8], radix: u32) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' if radix == 16 => d - b'a' + 10,
            _ => return None,
        };
        n.checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))
    })
}

/// `prefix` and `fd` in decimal, NUL-terminated, in `out` (zeroed).
fn proc_path(prefix: &[u8], fd: c_int, out: &mut [u8; 40]) {
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut count = 0;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        count += 1;
        if n == 0 {
            break;
        }
    }
    let digits = digits.get(digits.len() - count..).unwrap_or(&[]);
    for (slot, &b) in out.iter_mut().zip(prefix.iter().chain(digits)) {
        *slot = b;
    }
}

fn now_ms() -> i64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: ts is writable.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &raw mut ts) };
    ts.sec
        .saturating_mul(1000)
        .saturating_add(ts.nsec / 1_000_000)
}

/// Run `wait(ms)` (a wait of at most `ms` milliseconds, -1 for ever) for
/// `timeout_ms` in all, in slices while armed, looking at the flag
/// between them. Returns the first result that is not "timed out" (0),
/// or 0 once the time is up.
pub fn sliced(timeout_ms: i64, mut wait: impl FnMut(c_int) -> c_int) -> c_int {
    let start = now_ms();
    loop {
        stop_if_asked();
        let remaining = match timeout_ms {
            ..0 => -1,
            t => (start.saturating_add(t) - now_ms()).max(0),
        };
        if !armed() || remaining == 0 {
            return wait(remaining.clamp(-1, i64::from(c_int::MAX)) as c_int);
        }
        let slice = if remaining < 0 {
            SLICE_MS
        } else {
            remaining.min(SLICE_MS)
        };
        let rc = wait(slice as c_int);
        if rc != 0 || remaining == slice {
            return rc;
        }
    }
}

/// Milliseconds of a `timespec` timeout (rounded up), -1 for none.
pub fn timespec_ms(timeout: *const Timespec) -> i64 {
    if timeout.is_null() {
        return -1;
    }
    // SAFETY: the caller's timespec.
    let t = unsafe { *timeout };
    t.sec
        .saturating_mul(1000)
        .saturating_add((t.nsec + 999_999) / 1_000_000)
}

/// Milliseconds of a `timeval` timeout (rounded up), -1 for none.
pub fn timeval_ms(timeout: *const Timeval) -> i64 {
    if timeout.is_null() {
        return -1;
    }
    // SAFETY: the caller's timeval.
    let t = unsafe { &*timeout };
    t.sec
        .saturating_mul(1000)
        .saturating_add((t.usec + 999) / 1000)
}

/// A `timespec` of `ms` milliseconds.
pub fn timespec(ms: c_int) -> Timespec {
    Timespec {
        sec: i64::from(ms / 1000),
        nsec: c_long::from(ms % 1000) * 1_000_000,
    }
}

/// A `timeval` of `ms` milliseconds.
pub fn timeval(ms: c_int) -> Timeval {
    Timeval {
        sec: i64::from(ms / 1000),
        usec: c_long::from(ms % 1000) * 1000,
    }
}

/// The three `fd_set`s of a `select`, kept to be put back before each
/// slice (a wait that times out clears them). `None` when they are larger
/// than `FD_SETSIZE`: such a select is not sliced.
pub struct FdSets {
    sets: [[u8; FD_SET_BYTES]; 3],
    nfds: c_int,
}

impl FdSets {
    /// Keep the sets of `select(nfds, …)`.
    pub fn keep(nfds: c_int, sets: [*mut u8; 3]) -> Option<FdSets> {
        if !(0..=FD_SETSIZE).contains(&nfds) {
            return None;
        }
        let mut kept = FdSets {
            sets: [[0; FD_SET_BYTES]; 3],
            nfds,
        };
        for (copy, set) in kept.sets.iter_mut().zip(sets) {
            if !set.is_null() {
                // SAFETY: an fd_set is FD_SET_BYTES long.
                unsafe { core::ptr::copy_nonoverlapping(set, copy.as_mut_ptr(), FD_SET_BYTES) };
            }
        }
        Some(kept)
    }

    /// Put them back.
    pub fn restore(&self, sets: [*mut u8; 3]) {
        let bytes = (self.nfds as usize).div_ceil(8).min(FD_SET_BYTES);
        for (copy, set) in self.sets.iter().zip(sets) {
            if !set.is_null() {
                // SAFETY: as in keep.
                unsafe { core::ptr::copy_nonoverlapping(copy.as_ptr(), set, bytes) };
            }
        }
    }
}

/// A blocking `accept` on a handed socket: wait in slices until a
/// connection is there, so that the flag is seen while nothing comes.
/// Returns a negative value (errno set) if the wait failed.
pub fn wait_for_connection(fd: c_int) -> c_int {
    if !armed() || !blocking_handed(fd) {
        return 0;
    }
    let mut poll = PollFd {
        fd,
        events: POLLIN,
        revents: 0,
    };
    loop {
        if stop_if_asked() {
            return 0;
        }
        match crate::real_poll(&raw mut poll, 1, SLICE_MS as c_int) {
            0 => continue,
            rc if rc < 0 => return rc,
            _ => return 0,
        }
    }
}

fn blocking_handed(fd: c_int) -> bool {
    // SAFETY: fcntl with an integer command.
    let status = unsafe { fcntl(fd, F_GETFL) };
    status >= 0 && status & O_NONBLOCK == 0 && matches!(kind(fd), Kind::Handed)
}
