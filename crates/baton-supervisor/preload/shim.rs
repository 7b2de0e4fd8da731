//! baton's preload library (`--preload`): a `bind()` to an address baton
//! holds gets baton's socket instead of a new one.
//!
//! Built by `build.rs` with `rustc --crate-type cdylib` (no crate, no
//! std: nothing but libc), embedded in baton and loaded into workers with
//! `LD_PRELOAD`. It runs inside arbitrary programs, so it allocates
//! nothing, never panics (its panic handler aborts, and nothing here
//! indexes out of bounds or overflows), keeps `errno` as the caller would
//! see it from the real call, and keeps no state but what it read at load
//! time: after a `fork` it works the same in the child.
//!
//! - `bind(fd, addr)`: if one of the inherited sockets (fds 3 … 3 +
//!   `LISTEN_FDS`, verified with `getsockname`, whatever the variables
//!   say) is bound to a matching address (`addr::matches`) and is of the
//!   same type, `fd` becomes a duplicate of it (`dup3`, keeping `fd`'s
//!   close-on-exec flag; the shared socket takes `fd`'s `O_NONBLOCK`) and
//!   `bind` returns 0. Otherwise the real `bind`; should it fail with
//!   `EADDRINUSE`, baton is told (below).
//! - `listen(fd)` on a held socket returns 0 and changes nothing (the
//!   backlog stays baton's); a successful `listen` on any other socket
//!   is reported to baton.
//! - `unlink`/`unlinkat` of a held unix socket's path returns 0 and
//!   removes nothing: servers delete a "stale" socket file before they
//!   bind, or theirs when they exit.
//!
//! Reports go to `NOTIFY_SOCKET` as one datagram,
//! `BATON_PRELOAD_UNHELD=listen|inuse HEX` (the `sockaddr` bytes), which
//! baton logs naming both addresses. A process without `LISTEN_FDS` (a
//! child program whose environment dropped it) is left entirely alone.

#![no_std]

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};

#[path = "../src/preload/addr.rs"]
#[allow(dead_code)]
mod addr;
mod drain;
#[path = "../src/preload/drain_page.rs"]
#[allow(dead_code)]
mod drain_page;
mod waits;

use addr::{AF_INET, AF_INET6, AF_UNIX, Addr, MAX_LEN};

type SockLen = u32;

const SOL_SOCKET: c_int = 1;
const SO_TYPE: c_int = 3;
const SO_ACCEPTCONN: c_int = 30;
const IPPROTO_IPV6: c_int = 41;
const IPV6_V6ONLY: c_int = 26;
const F_GETFD: c_int = 1;
const F_GETFL: c_int = 3;
const F_SETFL: c_int = 4;
const FD_CLOEXEC: c_int = 1;
const O_NONBLOCK: c_int = 0o4000;
const O_CLOEXEC: c_int = 0o2000000;
const SOCK_DGRAM: c_int = 2;
const SOCK_CLOEXEC: c_int = O_CLOEXEC;
const AT_FDCWD: c_int = -100;
const AT_REMOVEDIR: c_int = 0x200;
const EADDRINUSE: c_int = 98;
const ENOSYS: c_int = 38;
const MSG_NOSIGNAL: c_int = 0x4000;
const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;
/// The first inherited socket (`SD_LISTEN_FDS_START`).
const FIRST_FD: c_int = 3;
/// More inherited sockets than any baton hands out.
const MAX_FDS: usize = 64;
/// `sizeof(sun_path)`.
const SUN_PATH: usize = 108;

#[link(name = "c")]
#[link(name = "dl")]
unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn getenv(name: *const c_char) -> *const c_char;
    fn getsockname(fd: c_int, addr: *mut u8, len: *mut SockLen) -> c_int;
    fn getsockopt(
        fd: c_int,
        level: c_int,
        name: c_int,
        value: *mut c_void,
        len: *mut SockLen,
    ) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn getcwd(buf: *mut c_char, size: usize) -> *mut c_char;
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn sendto(
        fd: c_int,
        buf: *const c_void,
        len: usize,
        flags: c_int,
        addr: *const u8,
        addr_len: SockLen,
    ) -> isize;
    fn close(fd: c_int) -> c_int;
    fn abort() -> !;
    fn __errno_location() -> *mut c_int;
}

type BindFn = unsafe extern "C" fn(c_int, *const u8, SockLen) -> c_int;
type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type UnlinkFn = unsafe extern "C" fn(*const c_char) -> c_int;
type UnlinkAtFn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
type PollFn = unsafe extern "C" fn(*mut drain::PollFd, u64, c_int) -> c_int;

/// Read once, at load time (or at the first call, should another
/// library's constructor bind before this one's ran).
static STATE: AtomicU8 = AtomicU8::new(0);
static REAL_BIND: AtomicUsize = AtomicUsize::new(0);
static REAL_LISTEN: AtomicUsize = AtomicUsize::new(0);
static REAL_UNLINK: AtomicUsize = AtomicUsize::new(0);
static REAL_UNLINKAT: AtomicUsize = AtomicUsize::new(0);
static REAL_POLL: AtomicUsize = AtomicUsize::new(0);
/// `LISTEN_FDS`, at most [`MAX_FDS`]; 0 turns the library off.
static FD_COUNT: AtomicI32 = AtomicI32::new(0);
/// `NOTIFY_SOCKET` as a `sockaddr_un` (its length; 0: none).
static NOTIFY_LEN: AtomicUsize = AtomicUsize::new(0);
static NOTIFY: [AtomicU8; 2 + SUN_PATH] = [const { AtomicU8::new(0) }; 2 + SUN_PATH];

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: abort is always safe to call; unwinding into C is not.
    unsafe { abort() }
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = constructor;

extern "C" fn constructor() {
    init();
}

fn init() {
    if STATE.load(Ordering::Acquire) == 2 {
        return;
    }
    if STATE
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Another thread is reading the same values: wait for it.
        while STATE.load(Ordering::Acquire) != 2 {
            core::hint::spin_loop();
        }
        return;
    }
    let resolve: fn(&AtomicUsize, &[u8]) = |slot, name| {
        // SAFETY: `name` is NUL-terminated; RTLD_NEXT finds the definition
        // after this library's (libc's).
        let f = unsafe { dlsym(RTLD_NEXT, name.as_ptr().cast()) };
        slot.store(f as usize, Ordering::Release);
    };
    resolve(&REAL_BIND, b"bind\0");
    resolve(&REAL_LISTEN, b"listen\0");
    resolve(&REAL_UNLINK, b"unlink\0");
    resolve(&REAL_UNLINKAT, b"unlinkat\0");
    resolve(&REAL_POLL, b"poll\0");
    waits::resolve(resolve);
    let count = env(b"LISTEN_FDS\0")
        .and_then(decimal)
        .unwrap_or(0)
        .min(MAX_FDS);
    FD_COUNT.store(count as i32, Ordering::Release);
    drain::init(count > 0);
    if let Some(path) = env(b"NOTIFY_SOCKET\0") {
        let abstract_name = path.first() == Some(&b'@');
        if !path.is_empty() && path.len() < SUN_PATH {
            let family = AF_UNIX.to_ne_bytes();
            NOTIFY[0].store(family[0], Ordering::Relaxed);
            NOTIFY[1].store(family[1], Ordering::Relaxed);
            for (slot, &b) in NOTIFY[2..].iter().zip(path) {
                slot.store(b, Ordering::Relaxed);
            }
            if abstract_name {
                NOTIFY[2].store(0, Ordering::Relaxed);
            }
            // A path's length counts its NUL; an abstract name's does not.
            let len = 2 + path.len() + usize::from(!abstract_name);
            NOTIFY_LEN.store(len, Ordering::Release);
        }
    }
    STATE.store(2, Ordering::Release);
}

/// A variable's value, as bytes.
fn env(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv's result lives as long as
    // the environment, which nobody here changes.
    let value = unsafe { getenv(name.as_ptr().cast()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a C string from getenv.
    Some(unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes())
}

fn decimal(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 4 {
        return None;
    }
    text.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

fn errno() -> c_int {
    // SAFETY: the calling thread's errno.
    unsafe { *__errno_location() }
}

fn set_errno(value: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *__errno_location() = value }
}

fn real<F: Copy>(slot: &AtomicUsize) -> Option<F> {
    init();
    let f = slot.load(Ordering::Acquire);
    // SAFETY: a non-null dlsym result for the function F describes.
    (f != 0).then(|| unsafe { core::mem::transmute_copy::<usize, F>(&f) })
}

/// libc's `bind`, for the library's own sockets.
fn real_bind(fd: c_int, address: *const u8, len: SockLen) -> c_int {
    match real::<BindFn>(&REAL_BIND) {
        // SAFETY: the caller's arguments, as bind(2) wants them.
        Some(f) => unsafe { f(fd, address, len) },
        None => -1,
    }
}

/// libc's `listen`, for the library's own sockets (not reported).
fn real_listen(fd: c_int, backlog: c_int) -> c_int {
    match real::<ListenFn>(&REAL_LISTEN) {
        // SAFETY: plain integers.
        Some(f) => unsafe { f(fd, backlog) },
        None => -1,
    }
}

/// libc's `poll`.
fn real_poll(fds: *mut drain::PollFd, nfds: u64, timeout: c_int) -> c_int {
    match real::<PollFn>(&REAL_POLL) {
        // SAFETY: the caller's array of nfds entries.
        Some(f) => unsafe { f(fds, nfds, timeout) },
        None => {
            set_errno(ENOSYS);
            -1
        }
    }
}

fn held_fds() -> core::ops::Range<c_int> {
    FIRST_FD..FIRST_FD + FD_COUNT.load(Ordering::Acquire)
}

fn int_option(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = core::mem::size_of::<c_int>() as SockLen;
    // SAFETY: value and len describe a writable c_int.
    let rc = unsafe { getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    (rc == 0).then_some(value)
}

/// A socket's own address: the bytes and their length.
fn local_address(fd: c_int, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    let mut len = MAX_LEN as SockLen;
    // SAFETY: buf holds len writable bytes.
    let rc = unsafe { getsockname(fd, buf.as_mut_ptr(), &raw mut len) };
    (rc == 0).then_some((len as usize).min(MAX_LEN))
}

/// An absolute form of a relative unix path (`cwd/path`), in `out`.
fn absolute<'a>(path: &'a [u8], out: &'a mut [u8; 2 * SUN_PATH]) -> Option<&'a [u8]> {
    if path.first() == Some(&b'/') || path.first() == Some(&0) {
        return Some(path);
    }
    // SAFETY: out holds that many writable bytes; getcwd NUL-terminates.
    let cwd = unsafe { getcwd(out.as_mut_ptr().cast(), SUN_PATH) };
    if cwd.is_null() {
        return None;
    }
    let cwd_len = out.iter().position(|&b| b == 0)?;
    let total = cwd_len + 1 + path.len();
    let rest = out.get_mut(cwd_len..total)?;
    rest[0] = b'/';
    for (slot, &b) in rest.iter_mut().skip(1).zip(path) {
        *slot = b;
    }
    out.get(..total)
}

/// The held socket a `bind()` to `want` (on a socket of type `kind`)
/// should get.
fn held_for(fd: c_int, want: &Addr<'_>, kind: c_int) -> Option<c_int> {
    for held in held_fds() {
        if held == fd || int_option(held, SOL_SOCKET, SO_TYPE) != Some(kind) {
            continue;
        }
        let mut buf = [0u8; MAX_LEN];
        let Some(len) = local_address(held, &mut buf) else {
            continue;
        };
        let Some(have) = addr::parse(buf.get(..len)?) else {
            continue;
        };
        let dual_stack = matches!(have, Addr::V6 { .. })
            && int_option(held, IPPROTO_IPV6, IPV6_V6ONLY) == Some(0);
        // A stream socket baton holds listens; anything else at that
        // number is not baton's.
        let listening =
            kind == SOCK_DGRAM || int_option(held, SOL_SOCKET, SO_ACCEPTCONN) == Some(1);
        if listening && addr::matches(want, &have, dual_stack) {
            return Some(held);
        }
    }
    None
}

/// Put `held` at `fd`, as `fd` was: close-on-exec if it was, and the
/// shared socket blocking or not as `fd` was made.
fn adopt(fd: c_int, held: c_int) -> bool {
    // SAFETY: fcntl with integer commands on descriptors of this process.
    unsafe {
        let fd_flags = fcntl(fd, F_GETFD);
        let status = fcntl(fd, F_GETFL);
        let held_status = fcntl(held, F_GETFL);
        if status >= 0 && held_status >= 0 && (status ^ held_status) & O_NONBLOCK != 0 {
            fcntl(
                held,
                F_SETFL,
                (held_status & !O_NONBLOCK) | (status & O_NONBLOCK),
            );
        }
        let cloexec = if fd_flags >= 0 && fd_flags & FD_CLOEXEC != 0 {
            O_CLOEXEC
        } else {
            0
        };
        dup3(held, fd, cloexec) == fd
    }
}

/// Tell baton (`NOTIFY_SOCKET`) about an address it does not hold.
fn report(what: &[u8], address: &[u8]) {
    let notify_len = NOTIFY_LEN.load(Ordering::Acquire);
    if notify_len == 0 || FD_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut target = [0u8; 2 + SUN_PATH];
    for (b, slot) in target.iter_mut().zip(NOTIFY.iter()) {
        *b = slot.load(Ordering::Relaxed);
    }
    let prefix: &[u8] = b"BATON_PRELOAD_UNHELD=";
    let mut message = [0u8; 32 + 2 * MAX_LEN];
    let mut len = 0;
    for &b in prefix.iter().chain(what).chain(b" ") {
        if let Some(slot) = message.get_mut(len) {
            *slot = b;
            len += 1;
        }
    }
    for &b in address.iter().take(MAX_LEN) {
        for digit in [addr::hex_digit(b >> 4), addr::hex_digit(b)] {
            if let Some(slot) = message.get_mut(len) {
                *slot = digit;
                len += 1;
            }
        }
    }
    let saved = errno();
    // SAFETY: plain socket calls on a descriptor made and closed here;
    // the buffers outlive them.
    unsafe {
        let s = socket(c_int::from(AF_UNIX), SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if s >= 0 {
            sendto(
                s,
                message.as_ptr().cast(),
                len,
                MSG_NOSIGNAL,
                target.as_ptr(),
                notify_len.min(target.len()) as SockLen,
            );
            close(s);
        }
    }
    set_errno(saved);
}

/// Whether `fd` is one of the held sockets (a duplicate of one): it
/// listens, and at the very address a held socket of its type has.
fn is_held(fd: c_int) -> bool {
    if int_option(fd, SOL_SOCKET, SO_ACCEPTCONN) != Some(1) {
        return false;
    }
    let kind = int_option(fd, SOL_SOCKET, SO_TYPE);
    let mut mine = [0u8; MAX_LEN];
    let Some(mine_len) = local_address(fd, &mut mine) else {
        return false;
    };
    held_fds().any(|held| {
        let mut theirs = [0u8; MAX_LEN];
        int_option(held, SOL_SOCKET, SO_TYPE) == kind
            && local_address(held, &mut theirs) == Some(mine_len)
            && mine.get(..mine_len) == theirs.get(..mine_len)
    })
}

/// Whether `path` (relative to the working directory) is a held unix
/// socket's path.
fn is_held_path(path: *const c_char) -> bool {
    if path.is_null() || FD_COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    // SAFETY: the caller's NUL-terminated path.
    let path = unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes();
    let mut full = [0u8; 2 * SUN_PATH];
    let Some(path) = absolute(path, &mut full) else {
        return false;
    };
    held_fds().any(|held| {
        let mut buf = [0u8; MAX_LEN];
        local_address(held, &mut buf)
            .and_then(|len| addr::parse(buf.get(..len)?))
            .is_some_and(|have| have == Addr::Unix(path))
    })
}

/// # Safety
/// As `bind(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, address: *const u8, len: SockLen) -> c_int {
    let Some(real_bind) = real::<BindFn>(&REAL_BIND) else {
        set_errno(ENOSYS);
        return -1;
    };
    let bytes = if address.is_null() || FD_COUNT.load(Ordering::Acquire) == 0 {
        &[][..]
    } else {
        // SAFETY: the caller passes `len` readable bytes.
        unsafe { core::slice::from_raw_parts(address, (len as usize).min(MAX_LEN)) }
    };
    let saved = errno();
    let want = addr::parse(bytes);
    if let (Some(want), Some(kind)) = (want, int_option(fd, SOL_SOCKET, SO_TYPE)) {
        let mut full = [0u8; 2 * SUN_PATH];
        let want = match want {
            Addr::Unix(path) => absolute(path, &mut full).map(Addr::Unix),
            other => Some(other),
        };
        if let Some(held) = want.and_then(|want| held_for(fd, &want, kind))
            && adopt(fd, held)
        {
            set_errno(saved);
            return 0;
        }
    }
    set_errno(saved);
    // SAFETY: the caller's arguments, as given.
    let rc = unsafe { real_bind(fd, address, len) };
    if rc != 0 && errno() == EADDRINUSE && matches!(want, Some(Addr::V4 { .. } | Addr::V6 { .. })) {
        report(b"inuse", bytes);
    }
    rc
}

/// # Safety
/// As `listen(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(real_listen) = real::<ListenFn>(&REAL_LISTEN) else {
        set_errno(ENOSYS);
        return -1;
    };
    if FD_COUNT.load(Ordering::Acquire) == 0 {
        // SAFETY: the caller's arguments.
        return unsafe { real_listen(fd, backlog) };
    }
    let saved = errno();
    if is_held(fd) {
        set_errno(saved);
        return 0;
    }
    set_errno(saved);
    // SAFETY: the caller's arguments.
    let rc = unsafe { real_listen(fd, backlog) };
    if rc == 0 {
        let mut buf = [0u8; MAX_LEN];
        if let Some(len) = local_address(fd, &mut buf) {
            let family = buf.get(..2).map(|f| u16::from_ne_bytes([f[0], f[1]]));
            if matches!(family, Some(AF_INET | AF_INET6 | AF_UNIX)) {
                report(b"listen", buf.get(..len).unwrap_or(&[]));
            }
        }
        set_errno(saved);
    }
    rc
}

/// # Safety
/// As `unlink(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    let Some(real_unlink) = real::<UnlinkFn>(&REAL_UNLINK) else {
        set_errno(ENOSYS);
        return -1;
    };
    let saved = errno();
    if is_held_path(path) {
        set_errno(saved);
        return 0;
    }
    set_errno(saved);
    // SAFETY: the caller's argument.
    unsafe { real_unlink(path) }
}

/// # Safety
/// As `unlinkat(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlinkat(dir: c_int, path: *const c_char, flags: c_int) -> c_int {
    let Some(real_unlinkat) = real::<UnlinkAtFn>(&REAL_UNLINKAT) else {
        set_errno(ENOSYS);
        return -1;
    };
    let saved = errno();
    // SAFETY: the caller's NUL-terminated path (checked for null first).
    let absolute_path = !path.is_null() && unsafe { *path } == b'/' as c_char;
    if flags & AT_REMOVEDIR == 0 && (dir == AT_FDCWD || absolute_path) && is_held_path(path) {
        set_errno(saved);
        return 0;
    }
    set_errno(saved);
    // SAFETY: the caller's arguments.
    unsafe { real_unlinkat(dir, path, flags) }
}
