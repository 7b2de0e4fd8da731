//! Socket addresses as the kernel passes them (`struct sockaddr` bytes),
//! and the one rule of `--preload`: which `bind()` gets a socket baton
//! holds. Shared, as source, by the supervisor and the preload library
//! (`preload/shim.rs`, `no_std`), so both read addresses alike: `core`
//! only, no allocation, no panic.

/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// The largest address the library looks at (`sizeof(struct sockaddr_storage)`).
pub const MAX_LEN: usize = 128;

/// An address a socket is bound to, or asks to be bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr<'a> {
    /// IPv4: the address and the port (host order).
    V4 { ip: [u8; 4], port: u16 },
    /// IPv6: the address and the port (host order).
    V6 { ip: [u8; 16], port: u16 },
    /// A unix socket: a path (without its terminating NUL), or an
    /// abstract name (starting with a NUL byte).
    Unix(&'a [u8]),
}

impl Addr<'_> {
    /// A wildcard address (`0.0.0.0` or `[::]`) and its port.
    fn any_port(&self) -> Option<u16> {
        match *self {
            Addr::V4 { ip, port } if ip == [0; 4] => Some(port),
            Addr::V6 { ip, port } if ip == [0; 16] => Some(port),
            _ => None,
        }
    }
}

/// Read a `struct sockaddr` of `bytes.len()` bytes (what `bind()` was
/// given, what `getsockname()` wrote). `None` for another family, a
/// short address, or an unnamed unix socket.
pub fn parse(bytes: &[u8]) -> Option<Addr<'_>> {
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    let port = || Some(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
    match family {
        AF_INET => {
            let ip = bytes.get(4..8)?;
            Some(Addr::V4 {
                ip: [ip[0], ip[1], ip[2], ip[3]],
                port: port()?,
            })
        }
        AF_INET6 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(bytes.get(8..24)?);
            Some(Addr::V6 { ip, port: port()? })
        }
        AF_UNIX => {
            let path = bytes.get(2..)?;
            match path.first() {
                None => None,
                // Abstract: every byte counts, NULs included.
                Some(0) if path.len() > 1 => Some(Addr::Unix(path)),
                Some(0) => None,
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    path.get(..end).map(Addr::Unix)
                }
            }
        }
        _ => None,
    }
}

/// Whether a `bind()` to `bind` is answered with the socket bound to
/// `held`: a specific address matches only itself; `0.0.0.0:P` and
/// `[::]:P` both match baton's `:P` listener (a dual-stack `[::]:P`, or
/// `0.0.0.0:P` where the host has no IPv6); a unix path matches itself.
/// `held_dual_stack`: `held` is `[::]` and takes IPv4 too (not
/// `IPV6_V6ONLY`). Port 0 (any free port) never matches.
pub fn matches(bind: &Addr<'_>, held: &Addr<'_>, held_dual_stack: bool) -> bool {
    match (bind, held) {
        (Addr::Unix(a), Addr::Unix(b)) => !a.is_empty() && a == b,
        (Addr::Unix(_), _) | (_, Addr::Unix(_)) => false,
        _ if port(bind) == 0 || port(bind) != port(held) => false,
        _ if bind == held => true,
        _ => match (bind.any_port(), held.any_port(), held) {
            (Some(_), Some(_), Addr::V6 { .. }) => {
                matches!(bind, Addr::V6 { .. }) || held_dual_stack
            }
            (Some(_), Some(_), _) => true,
            _ => false,
        },
    }
}

fn port(addr: &Addr<'_>) -> u16 {
    match *addr {
        Addr::V4 { port, .. } | Addr::V6 { port, .. } => port,
        Addr::Unix(_) => 0,
    }
}

/// The lowercase hex digit of `nibble` (its low 4 bits): how the library
/// sends an address to baton.
pub fn hex_digit(nibble: u8) -> u8 {
    b"0123456789abcdef"[usize::from(nibble & 0xf)]
}
