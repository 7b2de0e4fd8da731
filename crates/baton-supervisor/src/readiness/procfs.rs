//! What `/proc` says about a process, parsed: the system call each thread
//! is blocked in, the files an epoll set watches, the socket behind a
//! descriptor, and the sockets of a network namespace. Each parser takes
//! the text and is a plain function with tests; reading is left to the
//! caller, since a process can vanish between two reads.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// A thread blocked in a system call: `/proc/PID/task/TID/syscall` holds
/// its number and six arguments (then the stack and instruction pointers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedCall {
    /// The system call's number.
    pub number: i64,
    /// Its six arguments.
    pub args: [u64; 6],
}

/// Parse `/proc/PID/task/TID/syscall`. `None` for a thread that runs
/// (`running`) or is not in a system call (`-1 SP PC`).
pub fn parse_syscall(text: &str) -> Option<BlockedCall> {
    let mut fields = text.split_whitespace();
    let number: i64 = fields.next()?.parse().ok()?;
    if number < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for arg in &mut args {
        let field = fields.next()?;
        *arg = u64::from_str_radix(field.strip_prefix("0x").unwrap_or(field), 16).ok()?;
    }
    Some(BlockedCall { number, args })
}

/// The inodes an epoll set watches, from its `/proc/PID/fdinfo/N`: one
/// line `tfd: 3 events: 19 data: … pos:0 ino:1819e5 sdev:8` per target.
/// The inode is that of the open file, so a `dup` of a socket, or one
/// registered under a descriptor number closed since, still shows.
pub fn parse_epoll_targets(fdinfo: &str) -> Vec<u64> {
    fdinfo
        .lines()
        .filter(|line| line.trim_start().starts_with("tfd:"))
        .filter_map(|line| {
            let ino = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("ino:"))?;
            u64::from_str_radix(ino, 16).ok()
        })
        .collect()
}

/// The inode of a socket from the target of `/proc/PID/fd/N`
/// (`socket:[1579493]`).
pub fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether the target of `/proc/PID/fd/N` is an epoll instance.
pub fn is_epoll_link(link: &str) -> bool {
    link == "anon_inode:[eventpoll]"
}

/// `(ppid, pgrp)` from `/proc/PID/stat`; the command name in parentheses
/// may hold spaces and parentheses itself, so fields count from its end.
pub fn parse_stat(stat: &str) -> Option<(i32, i32)> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// One socket of `/proc/PID/net/{tcp,tcp6,udp,udp6}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetSocket {
    /// Its local address.
    pub local: SocketAddr,
    /// The kernel's state number (TCP: 10 is LISTEN; UDP: 7 is unconnected).
    pub state: u8,
    /// Its inode.
    pub inode: u64,
}

/// TCP's LISTEN state in `/proc/net/tcp`.
pub const TCP_LISTEN: u8 = 0x0a;

/// Parse a `/proc/net/{tcp,tcp6,udp,udp6}` table.
pub fn parse_net_table(text: &str) -> Vec<NetSocket> {
    text.lines().skip(1).filter_map(parse_net_line).collect()
}

/// One line of such a table (`None` for its heading).
pub fn parse_net_line(line: &str) -> Option<NetSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_hex_address(fields.get(1)?)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some(NetSocket {
        local,
        state,
        inode,
    })
}

/// `0100007F:1F90` (127.0.0.1:8080) or 32 hex digits and a port for IPv6:
/// each 32-bit word of the address is printed in host byte order.
fn parse_hex_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    match ip.len() {
        8 => Some(SocketAddr::from((Ipv4Addr::from(word(0)?), port))),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(SocketAddr::from((Ipv6Addr::from(octets), port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines() {
        let accept = "288 0x3 0x7ffd1 0x7ffd2 0x80800 0x0 0x0 0x7ffd0000 0x7f00aa";
        assert_eq!(
            parse_syscall(accept),
            Some(BlockedCall {
                number: 288,
                args: [3, 0x7ffd1, 0x7ffd2, 0x80800, 0, 0],
            })
        );
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffd0000 0x7f00aa\n"), None);
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn epoll_targets() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                      tfd:        3 events:       19 data:                3  pos:0 ino:1819e5 sdev:8\n\
                      tfd:        5 events: 80000019 data:     7f0000000005  pos:0 ino:2a sdev:9\n";
        assert_eq!(parse_epoll_targets(fdinfo), vec![0x1819e5, 0x2a]);
        assert!(parse_epoll_targets("pos:\t0\n").is_empty());
    }

    #[test]
    fn fd_links() {
        assert_eq!(parse_socket_link("socket:[1579493]"), Some(1579493));
        assert_eq!(parse_socket_link("pipe:[12]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert!(is_epoll_link("anon_inode:[eventpoll]"));
        assert!(!is_epoll_link("anon_inode:[eventfd]"));
    }

    #[test]
    fn stat_lines() {
        assert_eq!(
            parse_stat("42 (a (weird) name) S 7 42 42 0 -1 4194560"),
            Some((7, 42))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:270F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n   \
            1: 0100007F:270F 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            parse_net_table(tcp),
            vec![
                NetSocket {
                    local: "127.0.0.1:9999".parse().unwrap(),
                    state: TCP_LISTEN,
                    inode: 123456,
                },
                NetSocket {
                    local: "127.0.0.1:9999".parse().unwrap(),
                    state: 1,
                    inode: 0,
                },
            ]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_net_table(tcp6)[0].local,
            "[::1]:8080".parse::<SocketAddr>().unwrap()
        );
    }
}
