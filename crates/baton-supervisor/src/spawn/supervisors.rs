//! The variables through which other supervisors hand sockets to their
//! workers, so that a worker written for one of them runs under baton
//! unchanged. Every worker gets them, beside `LISTEN_FDS`; each names the
//! same descriptors 3, 4, …
//!
//! - Server::Starter (`start_server`; Starman, Starlet, Go's
//!   `server-starter` listeners): `SERVER_STARTER_PORT=ADDR=FD;…`, with
//!   `ADDR` as `start_server --port`/`--path` would write it (`8080` for
//!   every interface, `127.0.0.1:8080`, `[::1]:8080`, a socket path), and
//!   `SERVER_STARTER_GENERATION`. Server::Starter hands out stream sockets
//!   only, so UDP sockets are left out of it.
//! - einhorn: `EINHORN_FD_COUNT`, `EINHORN_FD_0=3`, … and
//!   `EINHORN_MASTER_PID`, which its clients compare with their parent's
//!   pid: baton's own, since baton forks every worker itself.
//! - nginx's binary upgrade: `NGINX=3;4;` — a new nginx adopts the
//!   inherited sockets that match its `listen` directives and closes its
//!   copy of the others. Its graceful stop is QUIT, not TERM:
//!   `--stop-signal QUIT`.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use socket2::{Domain, SockRef, Type};

/// `KEY=VALUE` strings for a worker of `generation` whose sockets are at
/// fds 3, 4, … in this order; `baton_pid` is the parent of every worker.
pub fn variables(generation: u64, sockets: &[BorrowedFd<'_>], baton_pid: u32) -> Vec<String> {
    let fds = (3..).take(sockets.len());
    let mut vars = Vec::new();
    let starter: Vec<String> = sockets
        .iter()
        .zip(fds.clone())
        .filter_map(|(socket, fd)| Some(format!("{}={fd}", starter_address(*socket)?)))
        .collect();
    if !starter.is_empty() {
        vars.push(format!("SERVER_STARTER_PORT={}", starter.join(";")));
    }
    vars.push(format!("SERVER_STARTER_GENERATION={generation}"));
    vars.push(format!("EINHORN_FD_COUNT={}", sockets.len()));
    for (i, fd) in fds.clone().enumerate() {
        vars.push(format!("EINHORN_FD_{i}={fd}"));
    }
    vars.push(format!("EINHORN_MASTER_PID={baton_pid}"));
    let nginx: String = fds.map(|fd| format!("{fd};")).collect();
    vars.push(format!("NGINX={nginx}"));
    vars
}

/// A stream socket's address as `start_server` writes it; `None` for a
/// datagram socket or one whose address cannot be read.
fn starter_address(socket: BorrowedFd<'_>) -> Option<String> {
    let socket = SockRef::from(&socket);
    if socket.r#type().ok()? != Type::STREAM {
        return None;
    }
    let local = socket.local_addr().ok()?;
    if socket.domain().ok()? == Domain::UNIX {
        return local
            .as_pathname()
            .map(|path| path.display().to_string())
            .or_else(|| {
                local
                    .as_abstract_namespace()
                    .map(|name| format!("@{}", String::from_utf8_lossy(name)))
            });
    }
    Some(match local.as_socket()? {
        // `start_server --port 8080` listens on every interface.
        addr if addr.ip().is_unspecified() => addr.port().to_string(),
        SocketAddr::V4(addr) => addr.to_string(),
        SocketAddr::V6(addr) => format!("[{}]:{}", addr.ip(), addr.port()),
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn every_supervisor_sees_the_same_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let any = std::net::TcpListener::bind("[::]:0").unwrap();
        let any_port = any.local_addr().unwrap().port();
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sockets = [tcp.as_fd(), any.as_fd(), unix.as_fd(), udp.as_fd()];
        let vars = variables(7, &sockets, 42);
        assert_eq!(
            vars,
            vec![
                format!(
                    "SERVER_STARTER_PORT=127.0.0.1:{port}=3;{any_port}=4;{}=5",
                    path.display()
                ),
                "SERVER_STARTER_GENERATION=7".to_owned(),
                "EINHORN_FD_COUNT=4".to_owned(),
                "EINHORN_FD_0=3".to_owned(),
                "EINHORN_FD_1=4".to_owned(),
                "EINHORN_FD_2=5".to_owned(),
                "EINHORN_FD_3=6".to_owned(),
                "EINHORN_MASTER_PID=42".to_owned(),
                "NGINX=3;4;5;6;".to_owned(),
            ]
        );
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        let Ok(tcp) = std::net::TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback here
        };
        let port = tcp.local_addr().unwrap().port();
        assert_eq!(starter_address(tcp.as_fd()), Some(format!("[::1]:{port}")));
    }
}
