//! How baton learns that a new generation is ready: the per-generation
//! `NOTIFY_SOCKET` receivers (this file), and for `--ready auto` what the
//! kernel shows of the generation's processes ([`kernel`], watched by an
//! [`observer`] thread).
//!
//! ## The notify sockets
//!
//! Each generation gets its own datagram socket, so a `READY=1` counts for
//! the generation whose socket it arrives on, whoever sends it: the worker,
//! a wrapper such as `npm start`, or a short-lived `systemd-notify --ready`
//! that is gone before anyone could look up its pid. A late `READY=1` of an
//! older generation arrives on that generation's socket and never counts
//! for a newer one; so does a `WATCHDOG=1`. The sender's pid (from
//! `SO_PASSCRED`) is only logged.
//!
//! The sockets live in baton's own [`RuntimeDir`] (mode 0700, never beside
//! a `--control` path), so only the workers' uid reaches them; and a
//! message counts only when its credentials show that uid or root. Others
//! are logged and ignored. With `--user`, the directory and its base are
//! 0711 (others may pass through, not list), each socket belongs to the
//! workers' user (0600), and that uid counts too. If the directory
//! vanishes (a tmp cleaner), it is made again and the live generations'
//! sockets are bound again.

use std::collections::BTreeMap;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, UnixAddr, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::credentials::Credentials;
use crate::local_users;
use crate::machine::Generation;
use crate::runtime_dir::{RuntimeDir, RuntimeDirError};

pub mod kernel;
pub mod observer;
pub mod procfs;

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
    /// A report of the preload library (`BATON_PRELOAD_UNHELD=`), if any.
    pub unheld: Option<String>,
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
        unheld: None,
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => notification.ready = true,
            Some(("WATCHDOG", "1")) => notification.watchdog = true,
            Some(("STATUS", status)) => notification.status = Some(status.to_owned()),
            Some((crate::preload::REPORT_KEY, report)) => {
                notification.unheld = Some(report.to_owned());
            }
            _ => {}
        }
    }
    notification
}

/// The private directory that holds every generation's notify socket.
#[derive(Debug)]
pub struct ReadinessDir {
    dir: RuntimeDir,
    /// Whether the last repair failed (logged once, not at every check).
    broken: bool,
}

impl ReadinessDir {
    /// Hold the notify sockets in `dir`; it is removed when this value drops.
    pub fn new(dir: RuntimeDir) -> Self {
        ReadinessDir { dir, broken: false }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory itself (the drain pages live beside the sockets).
    pub fn dir(&self) -> &crate::runtime_dir::Dir {
        self.dir.dir()
    }

    /// Bind the notify socket of `generation` and forward every message on
    /// it to `sink` until the returned receiver is dropped; with `user`,
    /// for workers of that user.
    pub fn listen(
        &mut self,
        generation: Generation,
        sink: mpsc::UnboundedSender<Notification>,
        user: Option<&Credentials>,
    ) -> io::Result<ReadinessSocket> {
        let owner = user.map(|user| (user.uid, user.gid));
        if owner.is_some() {
            self.dir.let_others_search().map_err(io::Error::other)?;
        }
        let dir = self.dir.dir();
        let name = format!("gen-{generation}.sock");
        match dir.remove(&name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let socket = UnixDatagram::bind(dir.entry(&name))?;
        // The directory keeps others out already.
        dir.chmod(&name, 0o600)?;
        if let Some((uid, gid)) = owner {
            dir.chown(&name, uid, gid)?;
        }
        socket::setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
        let task = tokio::spawn(receive(socket, generation, sink, owner.map(|(uid, _)| uid)));
        Ok(ReadinessSocket {
            path: self.path().join(name),
            task,
            user: user.cloned(),
        })
    }

    /// Make the directory again if it vanished, and bind the sockets of the
    /// `live` generations again (at the same paths, which their workers
    /// know), so that they can still report and the next spawn works.
    pub fn repair(
        &mut self,
        live: &mut BTreeMap<Generation, ReadinessSocket>,
        sink: &mpsc::UnboundedSender<Notification>,
    ) -> Result<(), RuntimeDirError> {
        let was_broken = self.broken;
        self.broken = true;
        let remade = match self.dir.repair() {
            Ok(remade) => remade,
            Err(error) => {
                if !was_broken {
                    tracing::error!(%error, "the notify directory vanished and cannot be made again: reloads fail until it can");
                }
                return Err(error);
            }
        };
        self.broken = false;
        if !remade {
            return Ok(());
        }
        tracing::warn!(path = %self.path().display(), "the notify directory vanished: made it again");
        let generations: Vec<Generation> = live.keys().copied().collect();
        for generation in generations {
            // The old one's drop removes its path: let it go first.
            let user = live.remove(&generation).and_then(|old| old.user.clone());
            match self.listen(generation, sink.clone(), user.as_ref()) {
                Ok(fresh) => {
                    live.insert(generation, fresh);
                }
                Err(error) => {
                    tracing::warn!(generation, %error, "cannot bind its notify socket again")
                }
            }
        }
        Ok(())
    }
}

/// One generation's notify socket; dropping it stops listening and removes
/// the socket file.
#[derive(Debug)]
pub struct ReadinessSocket {
    path: PathBuf,
    task: JoinHandle<()>,
    /// The workers' user it was made for, if not baton's.
    user: Option<Credentials>,
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
    workers: Option<u32>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        match socket
            .async_io(Interest::READABLE, || recv_with_pid(&socket, &mut buf))
            .await
        {
            Ok((len, sender)) => {
                let message = &buf[..len];
                match sender {
                    Some((pid, uid)) if local_users::trusted(uid) || Some(uid) == workers => {
                        if sink.send(parse(generation, Some(pid), message)).is_err() {
                            return;
                        }
                    }
                    // Attribution is by socket; credentials only say
                    // whether the sender may speak for the worker at all.
                    _ => {
                        let (pid, uid) = sender.unzip();
                        let message = String::from_utf8_lossy(message);
                        tracing::warn!(generation, pid, uid, message = %message.trim_end(), "notify message from another user ignored");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(generation, %error, "cannot read the notify socket");
                return;
            }
        }
    }
}

/// One `recvmsg` that also reads the sender's credentials: pid and uid.
fn recv_with_pid(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<(usize, Option<(i32, u32)>)> {
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
            ControlMessageOwned::ScmCredentials(creds) => Some((creds.pid(), creds.uid())),
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

    fn claim() -> (tempfile::TempDir, ReadinessDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RuntimeDir::claim(&tmp.path().join("baton"), "test").unwrap();
        (tmp, ReadinessDir::new(dir))
    }

    #[tokio::test]
    async fn each_generation_hears_only_its_own_socket() {
        let (_tmp, mut dir) = claim();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let one = dir.listen(1, tx.clone(), None).unwrap();
        let two = dir.listen(2, tx, None).unwrap();
        assert!(two.path().starts_with(dir.path()));
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

    #[tokio::test]
    async fn a_vanished_directory_is_made_again_with_the_live_sockets() {
        let (_tmp, mut dir) = claim();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut live = BTreeMap::new();
        live.insert(1, dir.listen(1, tx.clone(), None).unwrap());
        let path = live[&1].path().to_owned();
        std::fs::remove_dir_all(dir.path()).unwrap();
        dir.repair(&mut live, &tx).unwrap();
        assert!(path.exists(), "the live generation's socket is bound again");
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", &path).unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!((got.generation, got.ready), (1, true));
        // A spawn after the repair works too.
        dir.listen(2, tx, None).unwrap();
    }

    #[tokio::test]
    async fn a_message_from_another_uid_is_ignored() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: sending as another uid needs root");
            return;
        }
        let (_tmp, mut dir) = claim();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let socket = dir.listen(1, tx, None).unwrap();
        // Connected here, sent by a process of uid 65534: the kernel
        // attaches the credentials of the sender at send time.
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.connect(socket.path()).unwrap();
        let fd = client.as_raw_fd();
        let mut other = std::process::Command::new("true");
        other.uid(65534).gid(65534);
        // SAFETY: the closure makes one send(2) system call, which is
        // async-signal-safe, in the forked child.
        unsafe {
            other.pre_exec(move || {
                let message = b"READY=1";
                if libc::send(fd, message.as_ptr().cast(), message.len(), 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        assert!(other.status().unwrap().success());
        client.send(b"STATUS=mine").unwrap();
        let got = rx.recv().await.unwrap();
        assert!(!got.ready, "another uid's READY=1 must not arrive: {got:?}");
        assert_eq!(got.status.as_deref(), Some("mine"));
    }
}
