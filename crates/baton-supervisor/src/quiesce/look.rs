//! Whether a quiescing generation is quiet, as `/proc` shows: no process
//! waits for connections on a handed socket (as `--ready auto` sees it:
//! in an epoll set, or blocked in `accept`, `poll` or `select` on it), and
//! none holds a connection accepted on one.
//!
//! A process may still *hold* a handed socket and be quiet: nginx's
//! master keeps the listening sockets for its workers but sleeps in
//! `sigsuspend`, and never accepts.

use std::collections::HashSet;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::readiness::kernel::{self, Files, HandedSockets};
use crate::readiness::procfs::{self, TCP_LISTEN};

/// What the connections accepted on baton's sockets look like: the TCP
/// ports and unix paths they were accepted on.
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    /// Local ports of baton's TCP listeners.
    pub ports: HashSet<u16>,
    /// Paths of baton's unix stream listeners.
    pub paths: HashSet<PathBuf>,
}

impl Accepted {
    /// From the listeners' local addresses.
    pub fn new(
        tcp: impl IntoIterator<Item = SocketAddr>,
        unix: impl IntoIterator<Item = PathBuf>,
    ) -> Self {
        Accepted {
            ports: tcp.into_iter().map(|a| a.port()).collect(),
            paths: unix.into_iter().collect(),
        }
    }
}

/// One look at a quiescing generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quiet {
    /// Processes that still wait for connections on a handed socket.
    pub waiting: usize,
    /// Connections accepted on a handed socket that are still open.
    pub connections: usize,
}

impl Quiet {
    /// Whether the generation may be stopped now.
    pub fn is_quiet(&self) -> bool {
        self.waiting == 0 && self.connections == 0
    }
}

/// Look at every process of the group `group` (and their descendants).
pub fn look(group: i32, handed: &HandedSockets, accepted: &Accepted) -> Quiet {
    let mut quiet = Quiet::default();
    let mut sockets = HashSet::new();
    for pid in kernel::members(group) {
        let Some(files) = Files::read(pid) else {
            continue;
        };
        if kernel::waits(pid, &files, handed).is_some() {
            quiet.waiting += 1;
        }
        sockets.extend(files.sockets.values().copied());
    }
    quiet.connections = connections(&sockets, accepted);
    quiet
}

/// How many of `sockets` are connections accepted on baton's sockets.
fn connections(sockets: &HashSet<u64>, accepted: &Accepted) -> usize {
    if sockets.is_empty() {
        return 0;
    }
    let mut count = 0;
    if !accepted.ports.is_empty() {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            each_line(table, |line| {
                if let Some(s) = procfs::parse_net_line(line)
                    && s.state != TCP_LISTEN
                    && sockets.contains(&s.inode)
                    && accepted.ports.contains(&s.local.port())
                {
                    count += 1;
                }
            });
        }
    }
    if !accepted.paths.is_empty() {
        // Num RefCount Protocol Flags Type St Inode Path: an accepted
        // socket shows its listener's path.
        each_line("/proc/net/unix", |line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(inode), Some(path)) = (fields.get(6), fields.get(7))
                && inode.parse().is_ok_and(|i: u64| sockets.contains(&i))
                && fields.get(5) != Some(&"01")
                && accepted.paths.contains(std::path::Path::new(path))
            {
                count += 1;
            }
        });
    }
    count
}

/// Stream a table a line at a time: on a busy host it is megabytes.
fn each_line(path: &str, mut f: impl FnMut(&str)) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        f(&line);
        line.clear();
    }
}
