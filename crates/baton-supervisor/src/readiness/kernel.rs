//! `--ready auto`: whether a process waits for connections on a socket
//! baton handed it, as the kernel shows, without the process's help.
//!
//! A process waits on a listening socket in one of three ways, and each
//! shows in `/proc`:
//!
//! - **registered in an epoll set** (Go, node, nginx, tokio, asyncio): the
//!   epoll descriptor's `/proc/PID/fdinfo/N` lists `tfd: … ino:HEX` with the
//!   socket's inode. Go registers a listener in its poller when it creates
//!   it (`net.FileListener`, `net.Listen`), which is before it serves:
//!   "registered" means "about to serve", not "serving".
//! - **blocked in `accept`/`accept4`** (or, for a UDP socket, `recvfrom`,
//!   `recvmsg`, `recvmmsg`, `read`): `/proc/PID/task/TID/syscall` holds the
//!   call's number, then its arguments, the descriptor first.
//! - **blocked in `poll`/`ppoll`/`select`/`pselect6`** (Python's
//!   socketserver polls, gunicorn's sync workers select): the arguments are
//!   only a pointer to the pollfd array or fd_set, read with
//!   `process_vm_readv`. The kernel allows that to an ancestor with the
//!   same uid (baton started the worker), and to root.
//!
//! A socket is recognised by its inode (`socket:[N]` in `/proc/PID/fd`),
//! the same in every process that holds it, whatever descriptor number it
//! has there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::IoSliceMut;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;

use super::procfs::{self, BlockedCall, TCP_LISTEN};

/// The sockets baton hands its workers, by inode.
#[derive(Clone, Debug, Default)]
pub struct HandedSockets {
    by_inode: HashMap<u64, String>,
}

impl HandedSockets {
    /// From baton's listeners: `(name, address, socket)`.
    pub fn new<'a>(sockets: impl IntoIterator<Item = (&'a str, &'a str, BorrowedFd<'a>)>) -> Self {
        let by_inode = sockets
            .into_iter()
            .filter_map(|(name, address, fd)| {
                let inode = inode_of(fd)?;
                Some((inode, format!("{name} ({address})")))
            })
            .collect();
        HandedSockets { by_inode }
    }

    /// Their inodes.
    pub fn inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_inode.keys().copied()
    }

    fn label(&self, inode: u64) -> Option<&str> {
        self.by_inode.get(&inode).map(String::as_str)
    }
}

fn inode_of(fd: BorrowedFd<'_>) -> Option<u64> {
    let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    file.metadata().ok().map(|m| m.ino())
}

/// How a process waits on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The socket is in one of its epoll sets.
    Epoll,
    /// A thread is blocked in `accept`/`accept4` on it.
    Accept,
    /// A thread is blocked receiving from it (a datagram socket).
    Receive,
    /// A thread is blocked in `poll`/`ppoll` with it among its fds.
    Poll,
    /// A thread is blocked in `select`/`pselect6` with it in its read set.
    Select,
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wait::Epoll => "registered in epoll",
            Wait::Accept => "blocked in accept",
            Wait::Receive => "blocked receiving",
            Wait::Poll => "blocked in poll",
            Wait::Select => "blocked in select",
        })
    }
}

/// What one look at a process group found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Whether a process waits on a handed socket.
    pub waiting: bool,
    /// What was seen, in words.
    pub seen: String,
}

/// Look at every process of the group `group` (and their descendants that
/// left it): does one wait on a handed socket? With `explain`, say why
/// not (reading the network tables costs more, so callers ask for it
/// less often).
pub fn look(group: i32, handed: &HandedSockets, explain: bool) -> Finding {
    let pids = members(group);
    let mut holders = 0;
    let mut foreign = BTreeSet::new();
    for &pid in &pids {
        let Some(files) = Files::read(pid) else {
            continue;
        };
        if let Some((wait, inode)) = waits(pid, &files, handed) {
            let socket = handed.label(inode).unwrap_or("?");
            return Finding {
                waiting: true,
                seen: format!("pid {pid} waits on {socket}: {wait}"),
            };
        }
        if files.sockets.values().any(|i| handed.label(*i).is_some()) {
            holders += 1;
        }
        if explain {
            foreign.extend(foreign_listeners(pid, &files, handed));
        }
    }
    let seen = if pids.is_empty() {
        "no process is left in its group".to_owned()
    } else if let Some((pid, address)) = foreign.iter().next() {
        format!("pid {pid} listens on {address}, which baton does not hold")
    } else if holders == 0 {
        format!(
            "none of its {} processes holds a socket baton handed it (closed fd 3?)",
            pids.len()
        )
    } else {
        "no process waits on a socket baton handed it".to_owned()
    };
    Finding {
        waiting: false,
        seen,
    }
}

/// The pids of a process group and of every descendant of its members.
pub(crate) fn members(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let table: Vec<(i32, i32, i32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, pgrp) = procfs::parse_stat(&stat)?;
            Some((pid, ppid, pgrp))
        })
        .collect();
    let mut found: BTreeSet<i32> = table
        .iter()
        .filter(|(_, _, pgrp)| *pgrp == group)
        .map(|(pid, _, _)| *pid)
        .collect();
    loop {
        let more: Vec<i32> = table
            .iter()
            .filter(|(pid, ppid, _)| found.contains(ppid) && !found.contains(pid))
            .map(|(pid, _, _)| *pid)
            .collect();
        if more.is_empty() {
            return found.into_iter().collect();
        }
        found.extend(more);
    }
}

/// A process's descriptors that matter here.
#[derive(Debug, Default)]
pub struct Files {
    /// Socket descriptors and their inodes.
    pub(crate) sockets: BTreeMap<i32, u64>,
    /// Epoll descriptors.
    epolls: Vec<i32>,
}

impl Files {
    /// Read `/proc/PID/fd`; `None` if the process is gone or hidden.
    pub fn read(pid: i32) -> Option<Files> {
        let mut files = Files::default();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(inode) = procfs::parse_socket_link(&link) {
                files.sockets.insert(fd, inode);
            } else if procfs::is_epoll_link(&link) {
                files.epolls.push(fd);
            }
        }
        Some(files)
    }

    fn handed(&self, fd: u64, handed: &HandedSockets) -> Option<u64> {
        let inode = *self.sockets.get(&i32::try_from(fd).ok()?)?;
        handed.label(inode).map(|_| inode)
    }
}

/// Whether process `pid` waits on a handed socket: how, and which.
pub fn waits(pid: i32, files: &Files, handed: &HandedSockets) -> Option<(Wait, u64)> {
    for epoll in &files.epolls {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")) else {
            continue;
        };
        if let Some(inode) = procfs::parse_epoll_targets(&info)
            .into_iter()
            .find(|i| handed.label(*i).is_some())
        {
            return Some((Wait::Epoll, inode));
        }
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("syscall")) else {
            continue;
        };
        let Some(call) = procfs::parse_syscall(&text) else {
            continue;
        };
        if let Some(found) = blocked_on(pid, call, files, handed) {
            return Some(found);
        }
    }
    None
}

/// The most descriptors baton reads of a pollfd array or fd_set.
const MAX_FDS: u64 = 65536;

fn blocked_on(
    pid: i32,
    call: BlockedCall,
    files: &Files,
    handed: &HandedSockets,
) -> Option<(Wait, u64)> {
    let [a0, a1, ..] = call.args;
    match Call::of(call.number)? {
        Call::Accept => files.handed(a0, handed).map(|i| (Wait::Accept, i)),
        Call::Receive => files.handed(a0, handed).map(|i| (Wait::Receive, i)),
        Call::Poll => {
            let count = a1.min(MAX_FDS) as usize;
            let bytes = read_memory(pid, a0, count * 8)?;
            bytes.chunks_exact(8).find_map(|pollfd| {
                let fd = i32::from_ne_bytes(pollfd[..4].try_into().ok()?);
                let fd = u64::try_from(fd).ok()?;
                files.handed(fd, handed).map(|i| (Wait::Poll, i))
            })
        }
        Call::Select => {
            let nfds = a0.min(MAX_FDS);
            // An fd_set is an array of longs, one bit per descriptor.
            let bytes = read_memory(pid, a1, nfds.div_ceil(64) as usize * 8)?;
            files
                .sockets
                .iter()
                .filter(|(fd, inode)| (**fd as u64) < nfds && handed.label(**inode).is_some())
                .find(|(fd, _)| {
                    let bit = **fd as usize;
                    bytes
                        .get(bit / 8)
                        .is_some_and(|b| b & (1 << (bit % 8)) != 0)
                })
                .map(|(_, inode)| (Wait::Select, *inode))
        }
    }
}

/// The blocking calls that can wait on a socket, by what their arguments hold.
enum Call {
    /// The descriptor is the first argument.
    Accept,
    /// The descriptor is the first argument; it receives datagrams.
    Receive,
    /// A pollfd array, then its length.
    Poll,
    /// nfds, then the read fd_set.
    Select,
}

impl Call {
    fn of(number: i64) -> Option<Call> {
        match number {
            libc::SYS_accept | libc::SYS_accept4 => Some(Call::Accept),
            libc::SYS_recvfrom | libc::SYS_recvmsg | libc::SYS_recvmmsg | libc::SYS_read => {
                Some(Call::Receive)
            }
            libc::SYS_ppoll => Some(Call::Poll),
            libc::SYS_pselect6 => Some(Call::Select),
            #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
            libc::SYS_poll => Some(Call::Poll),
            #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
            libc::SYS_select => Some(Call::Select),
            _ => None,
        }
    }
}

/// Read `len` bytes at `address` in process `pid`.
fn read_memory(pid: i32, address: u64, len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec {
        base: usize::try_from(address).ok()?,
        len,
    }];
    let read = process_vm_readv(
        Pid::from_raw(pid),
        &mut [IoSliceMut::new(&mut buf)],
        &remote,
    )
    .ok()?;
    buf.truncate(read);
    Some(buf)
}

/// Listening TCP sockets and bound UDP sockets of `pid` that baton did
/// not hand it: where a worker that binds its own address listens.
fn foreign_listeners(pid: i32, files: &Files, handed: &HandedSockets) -> Vec<(i32, String)> {
    let own: BTreeSet<u64> = files
        .sockets
        .values()
        .copied()
        .filter(|i| handed.label(*i).is_none())
        .collect();
    if own.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        let listens = |s: &procfs::NetSocket| {
            if table.starts_with("tcp") {
                s.state == TCP_LISTEN
            } else {
                s.local.port() != 0
            }
        };
        for socket in procfs::parse_net_table(&text) {
            if own.contains(&socket.inode) && listens(&socket) {
                let proto = if table.starts_with("udp") {
                    "udp://"
                } else {
                    ""
                };
                found.push((pid, format!("{proto}{}", socket.local)));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests;
