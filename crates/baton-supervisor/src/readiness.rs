//! The per-generation `NOTIFY_SOCKET` receivers.
//!
//! Each generation gets its own datagram socket, so a `READY=1` counts for
//! the generation whose socket it arrives on, whoever sends it: the worker,
//! a wrapper such as `npm start`, or a short-lived `systemd-notify --ready`
//! that is gone before anyone could look up its pid. A late `READY=1` of an
//! older generation arrives on that generation's socket and never counts
//! for a newer one; so does a `WATCHDOG=1`. The sender's pid (from
//! `SO_PASSCRED`) is only logged.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, UnixAddr, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::machine::Generation;

/// sd_notify messages are small; systemd itself reads at most a page.
const MAX_MESSAGE: usize = 4096;

/// A message that arrived on a generation's notify socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The generation whose socket it arrived on.
    pub generation: Generation,
    /// The sender's pid, when the kernel told it.
    pub sender: Option<i32>,
    /// Whether the message holds the line `READY=1`.
    pub ready: bool,
    /// Whether the message holds the line `WATCHDOG=1`.
    pub watchdog: bool,
    /// `STATUS=` text, if any.
    pub status: Option<String>,
}

/// Parse one sd_notify datagram: newline-separated `KEY=VALUE` lines.
pub fn parse(generation: Generation, sender: Option<i32>, message: &[u8]) -> Notification {
    let text = String::from_utf8_lossy(message);
    let mut notification = Notification {
        generation,
        sender,
        ready: false,
        watchdog: false,
        status: None,
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => notification.ready = true,
            Some(("WATCHDOG", "1")) => notification.watchdog = true,
            Some(("STATUS", status)) => notification.status = Some(status.to_owned()),
            _ => {}
        }
    }
    notification
}

/// The private directory that holds every generation's notify socket.
#[derive(Debug)]
pub struct ReadinessDir {
    dir: tempfile::TempDir,
}

impl ReadinessDir {
    /// Create a mode-0700 directory under `$XDG_RUNTIME_DIR`, else the
    /// system temp directory; it is removed when this value drops.
    pub fn new() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new().prefix("baton-").tempdir_in(base)?;
        Ok(ReadinessDir { dir })
    }

    /// Bind the notify socket of `generation` and forward every message on
    /// it to `sink` until the returned receiver is dropped.
    pub fn listen(
        &self,
        generation: Generation,
        sink: mpsc::UnboundedSender<Notification>,
    ) -> io::Result<ReadinessSocket> {
        let path = self.dir.path().join(format!("gen-{generation}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket::setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
        let task = tokio::spawn(receive(socket, generation, sink));
        Ok(ReadinessSocket { path, task })
    }
}

/// One generation's notify socket; dropping it stops listening and removes
/// the socket file.
#[derive(Debug)]
pub struct ReadinessSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ReadinessSocket {
    /// The path to give the worker as `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadinessSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn receive(
    socket: UnixDatagram,
    generation: Generation,
    sink: mpsc::UnboundedSender<Notification>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        match socket
            .async_io(Interest::READABLE, || recv_with_pid(&socket, &mut buf))
            .await
        {
            Ok((len, sender)) => {
                if sink.send(parse(generation, sender, &buf[..len])).is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(generation, %error, "cannot read the notify socket");
                return;
            }
        }
    }
}

/// One `recvmsg` that also reads the sender's credentials.
fn recv_with_pid(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let sender = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
            _ => None,
        })
    });
    Ok((msg.bytes, sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_counts_only_as_a_whole_line() {
        assert!(parse(1, None, b"READY=1").ready);
        assert!(parse(1, None, b"STATUS=warming up\nREADY=1\n").ready);
        assert!(!parse(1, None, b"READY=0").ready);
        assert!(!parse(1, None, b"XREADY=1").ready);
        assert!(!parse(1, None, b"RELOADING=1").ready);
        assert!(parse(1, None, b"WATCHDOG=1").watchdog);
        assert!(parse(1, None, b"STATUS=x\nWATCHDOG=1\n").watchdog);
        assert!(!parse(1, None, b"WATCHDOG=trigger").watchdog);
        assert!(!parse(1, None, b"READY=1").watchdog);
        assert_eq!(
            parse(1, None, b"STATUS=warming up").status.as_deref(),
            Some("warming up")
        );
    }

    #[tokio::test]
    async fn each_generation_hears_only_its_own_socket() {
        let dir = ReadinessDir::new().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let one = dir.listen(1, tx.clone()).unwrap();
        let two = dir.listen(2, tx).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", two.path()).unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got.generation, 2);
        assert!(got.ready);
        assert_eq!(got.sender, Some(std::process::id() as i32));
        client.send_to(b"STATUS=x", one.path()).unwrap();
        assert_eq!(rx.recv().await.unwrap().generation, 1);
        let path = one.path().to_owned();
        drop(one);
        assert!(!path.exists());
    }
}
