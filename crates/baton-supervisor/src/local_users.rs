//! Which local users baton believes: its own uid and root. Other users
//! share the machine (and `/tmp`), and may pose as a worker or as baton.

use std::io;
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// Whether `uid` is baton's own effective uid, or root.
pub fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// The uid of the process at the other end of a connected unix socket
/// (`SO_PEERCRED`: who called `connect` or `listen`).
pub fn peer_uid(socket: &impl AsFd) -> io::Result<u32> {
    let cred = getsockopt(socket, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// Whether a client may believe a server of uid `peer` whose socket is in
/// a directory owned by `dir_owner`: the client's own uid or root, as a
/// rule; a root client also believes the directory's owner, who could put
/// any socket there anyway (`/run/baton` given to `User=` by systemd).
pub fn believable_server(peer: u32, dir_owner: u32) -> bool {
    trusted(peer) || (nix::unistd::geteuid().is_root() && peer == dir_owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_is_our_own_uid() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let uid = peer_uid(&a).unwrap();
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
        assert!(trusted(uid));
        assert!(trusted(0));
        assert!(believable_server(uid, 12345));
    }
}
