//! Each way of waiting, shown by a thread of this very test process.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::*;

fn me() -> i32 {
    std::process::id() as i32
}

fn handed(fd: BorrowedFd<'_>) -> HandedSockets {
    HandedSockets::new([("http", "127.0.0.1:1", fd)])
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    inode_of(fd).unwrap()
}

/// Wait (up to a generous deadline) until this process is seen waiting.
fn seen(handed: &HandedSockets) -> Option<(Wait, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = Files::read(me()).unwrap();
        if let Some(found) = waits(me(), &files, handed) {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_socket_nobody_waits_on_is_not_seen() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let files = Files::read(me()).unwrap();
    assert_eq!(waits(me(), &files, &handed(listener.as_fd())), None);
}

#[test]
fn a_socket_in_an_epoll_set_is_seen() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: creates a new descriptor, owned below.
    let epoll = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
    // A dup registered, then closed: epoll tracks the open file.
    let dup = listener.try_clone().unwrap();
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: both descriptors are open; the event is a local.
    let rc = unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            dup.as_raw_fd(),
            &mut event,
        )
    };
    assert_eq!(rc, 0);
    drop(dup);
    let handed = handed(listener.as_fd());
    assert_eq!(seen(&handed), Some((Wait::Epoll, inode(listener.as_fd()))));
}

#[test]
fn a_thread_blocked_in_accept_is_seen() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handed = handed(listener.as_fd());
    let ino = inode(listener.as_fd());
    let thread = std::thread::spawn(move || listener.accept().map(|_| ()));
    assert_eq!(seen(&handed), Some((Wait::Accept, ino)));
    TcpStream::connect(addr).unwrap();
    thread.join().unwrap().unwrap();
}

#[test]
fn a_thread_blocked_in_poll_is_seen() {
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handed = handed(listener.as_fd());
    let fds = [other.as_raw_fd(), listener.as_raw_fd()];
    let thread = std::thread::spawn(move || {
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: the array is a local of the right length.
        unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as _, 30_000) }
    });
    assert_eq!(seen(&handed), Some((Wait::Poll, inode(listener.as_fd()))));
    TcpStream::connect(addr).unwrap();
    assert_eq!(thread.join().unwrap(), 1);
}

#[test]
fn a_thread_blocked_in_select_is_seen() {
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handed = handed(listener.as_fd());
    let fds = [other.as_raw_fd(), listener.as_raw_fd()];
    let thread = std::thread::spawn(move || {
        // SAFETY: FD_ZERO/FD_SET on a local set, with descriptors below
        // FD_SETSIZE (a test process has few); select reads it.
        unsafe {
            let mut set = std::mem::zeroed::<libc::fd_set>();
            libc::FD_ZERO(&mut set);
            for fd in fds {
                libc::FD_SET(fd, &mut set);
            }
            let mut timeout = libc::timeval {
                tv_sec: 30,
                tv_usec: 0,
            };
            let nfds = fds.iter().max().unwrap() + 1;
            libc::select(
                nfds,
                &mut set,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut timeout,
            )
        }
    });
    assert_eq!(seen(&handed), Some((Wait::Select, inode(listener.as_fd()))));
    TcpStream::connect(addr).unwrap();
    assert_eq!(thread.join().unwrap(), 1);
}

#[test]
fn a_thread_blocked_receiving_datagrams_is_seen() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let handed = handed(socket.as_fd());
    let ino = inode(socket.as_fd());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        socket.recv_from(&mut buf).map(|(n, _)| n)
    });
    assert_eq!(seen(&handed), Some((Wait::Receive, ino)));
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"hi", addr)
        .unwrap();
    assert_eq!(thread.join().unwrap().unwrap(), 2);
}

#[test]
fn a_listener_of_its_own_is_named() {
    let baton_holds = TcpListener::bind("127.0.0.1:0").unwrap();
    let its_own = TcpListener::bind("127.0.0.1:0").unwrap();
    let files = Files::read(me()).unwrap();
    let found = foreign_listeners(me(), &files, &handed(baton_holds.as_fd()));
    let own = (me(), its_own.local_addr().unwrap().to_string());
    assert!(found.contains(&own), "{found:?}");
    let held = (me(), baton_holds.local_addr().unwrap().to_string());
    assert!(!found.contains(&held), "{found:?}");
}

#[test]
fn an_empty_group_is_said_to_be_empty() {
    // No process has a group id of -2.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let finding = look(-2, &handed(listener.as_fd()), true);
    assert_eq!(
        finding,
        Finding {
            waiting: false,
            seen: "no process is left in its group".into()
        }
    );
}
