//! baton's runtime directories: where its control and notify sockets live.
//!
//! A path under `/tmp` is shared with every local user, who may have made
//! it first — with mode 0777, or as a symlink — to steer baton's sockets or
//! to pose as baton. So each directory is opened from its parent's
//! descriptor without following a symlink (`openat`, `O_NOFOLLOW`), checked
//! on the open descriptor (`fstat`: type, owner, mode), and what baton does
//! inside goes through that descriptor (`fstatat`, `unlinkat`, and `bind`
//! or `connect` by `/proc/self/fd/N/NAME`): the directory checked is the
//! directory used. Anything else is refused with the reason and the path.
//!
//! Layout, under [`base`] (`/run/baton` for root, `$XDG_RUNTIME_DIR/baton`,
//! else `/tmp/baton-UID`; owned by baton's uid, never group- or
//! other-writable, created 0700):
//!
//! - `NAME.sock`: the default control socket of the baton named `NAME`;
//! - `NAME.PID.d/`: one running baton's notify sockets ([`RuntimeDir`]),
//!   mode 0700 and `flock`ed while that baton lives, so the next baton
//!   removes it once its owner is gone (two batons may share a name when
//!   their `--control` paths differ, hence the pid).
//!
//! A future `--user` worker (another uid) would need 0711 on the directory
//! of its notify socket and the socket itself given to that uid.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// The mode of the directories baton creates.
const PRIVATE: u32 = 0o700;

/// Why a runtime directory or file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// It exists, but not as baton can trust it.
    #[error("unsafe runtime directory {path}: {reason}")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// A system call failed.
    #[error("runtime directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl RuntimeDirError {
    fn io(path: &Path, source: impl Into<io::Error>) -> Self {
        RuntimeDirError::Io {
            path: path.to_owned(),
            source: source.into(),
        }
    }

    fn refused(path: &Path, reason: impl Into<String>) -> Self {
        RuntimeDirError::Unsafe {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// Whether the directory does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeDirError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The directory where baton keeps its runtime files by default:
/// `/run/baton` for root, `$XDG_RUNTIME_DIR/baton` otherwise, else
/// `/tmp/baton-UID`.
pub fn base() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/baton");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("baton"),
        _ => PathBuf::from(format!("/tmp/baton-{uid}")),
    }
}

/// What a directory must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// baton's own ([`base`] and what it makes inside): owned by baton's
    /// uid, not writable by group or others. Created 0700 when missing.
    Own,
    /// One that holds a socket named by `--control`: owned by baton's uid
    /// or root (any uid, for root), and not writable by others unless
    /// sticky (`/tmp`), where nobody can replace another's file.
    Holder,
}

/// An open, checked directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    stat: FileStat,
}

/// What a directory entry is, seen without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A unix socket.
    Socket,
    /// A symbolic link.
    Symlink,
    /// A directory.
    Directory,
    /// Anything else (a regular file, a fifo, a device).
    Other,
}

impl Dir {
    /// Open `path` and check it by `rule`; with `create`, make it (and any
    /// missing parent) with mode 0700 first.
    pub fn open(path: &Path, rule: Rule, create: bool) -> Result<Dir, RuntimeDirError> {
        if rule == Rule::Holder {
            // Named by the user: a symlink to it is theirs to make
            // (/var/run -> /run); what counts is the directory reached.
            if create && !path.exists() {
                make_parents(path)?;
            }
            let dir = Dir::open_path(path)?;
            dir.check(Rule::Holder)?;
            return Ok(dir);
        }
        let (parent, name) = split(path)?;
        if create && !parent.exists() {
            make_parents(parent)?;
        }
        // The parent must not let others swap the last component.
        let parent = Dir::open_path(parent)?;
        parent.check(Rule::Holder)?;
        parent.open_child(name, rule, create)
    }

    /// Open a directory by path, following symlinks; unchecked.
    fn open_path(path: &Path) -> Result<Dir, RuntimeDirError> {
        let flags = directory_flags() - OFlag::O_NOFOLLOW;
        let fd = nix::fcntl::open(path, flags, Mode::empty())
            .map_err(|e| RuntimeDirError::io(path, e))?;
        Dir::from_fd(fd, path.to_owned())
    }

    fn from_fd(fd: OwnedFd, path: PathBuf) -> Result<Dir, RuntimeDirError> {
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| RuntimeDirError::io(&path, e))?;
        Ok(Dir { fd, path, stat })
    }

    /// Open the directory `name` inside this one, without following a
    /// symlink, and check it by `rule`; with `create`, make it 0700 if it
    /// is missing.
    pub fn open_child(&self, name: &str, rule: Rule, create: bool) -> Result<Dir, RuntimeDirError> {
        let path = self.path.join(name);
        let mut created = false;
        loop {
            match nix::fcntl::openat(&self.fd, name, directory_flags(), Mode::empty()) {
                Ok(fd) => {
                    if created {
                        // mkdir's mode went through the umask; set it exactly.
                        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(PRIVATE))
                            .map_err(|e| RuntimeDirError::io(&path, e))?;
                    }
                    let dir = Dir::from_fd(fd, path)?;
                    dir.check(rule)?;
                    return Ok(dir);
                }
                Err(Errno::ENOENT) if create && !created => {
                    match nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(PRIVATE))
                    {
                        Ok(()) => created = true,
                        // Someone else made it first: check theirs.
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(RuntimeDirError::io(&path, e)),
                    }
                }
                Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    return Err(match self.kind(name) {
                        Ok(Some(Kind::Symlink)) => RuntimeDirError::refused(
                            &path,
                            "it is a symlink, and baton follows none here: another user may have made it to steer baton's sockets; remove it",
                        ),
                        Ok(Some(_)) => RuntimeDirError::refused(
                            &path,
                            "it is not a directory: baton deletes nothing it did not make; remove it",
                        ),
                        _ => RuntimeDirError::io(&path, e),
                    });
                }
                Err(e) => return Err(RuntimeDirError::io(&path, e)),
            }
        }
    }

    /// Refuse this directory unless it satisfies `rule`.
    pub fn check(&self, rule: Rule) -> Result<(), RuntimeDirError> {
        let ours = nix::unistd::geteuid().as_raw();
        let owner = self.stat.st_uid;
        let mode = self.stat.st_mode & 0o7777;
        let refuse = |reason: String| Err(RuntimeDirError::refused(&self.path, reason));
        if SFlag::from_bits_truncate(self.stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            return refuse("it is not a directory: remove it".into());
        }
        match rule {
            Rule::Own if owner != ours => refuse(format!(
                "it is owned by uid {owner}, not by baton's uid {ours}: another user may have made it to steer or pose as baton; remove it (or set XDG_RUNTIME_DIR)"
            )),
            Rule::Own if mode & 0o022 != 0 => refuse(format!(
                "its mode {mode:04o} lets other users write into it; baton needs 0700: chmod 700 it, or remove it"
            )),
            Rule::Holder if owner != ours && owner != 0 && ours != 0 => refuse(format!(
                "it is owned by uid {owner}, neither baton's uid {ours} nor root: that user could replace the socket; choose another directory"
            )),
            Rule::Holder if mode & 0o022 != 0 && mode & 0o1000 == 0 => refuse(format!(
                "its mode {mode:04o} lets other users replace the socket and is not sticky (like /tmp): chmod o-w,g-w it, or choose another directory"
            )),
            _ => Ok(()),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The uid that owns it.
    pub fn owner(&self) -> u32 {
        self.stat.st_uid
    }

    /// Its device and inode.
    fn identity(&self) -> (u64, u64) {
        (self.stat.st_dev, self.stat.st_ino)
    }

    /// A path to `name` inside this very directory, for `bind`, `connect`
    /// and `chmod`, which take no directory descriptor: through
    /// `/proc/self/fd` (the real path where `/proc` is missing).
    pub fn entry(&self, name: &str) -> PathBuf {
        static PROC: OnceLock<bool> = OnceLock::new();
        if *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
            PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
        } else {
            self.path.join(name)
        }
    }

    /// What `name` is, without following a symlink; `None` if it is missing.
    pub fn kind(&self, name: &str) -> io::Result<Option<Kind>> {
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(
                match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
                    SFlag::S_IFSOCK => Kind::Socket,
                    SFlag::S_IFLNK => Kind::Symlink,
                    SFlag::S_IFDIR => Kind::Directory,
                    _ => Kind::Other,
                },
            )),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove the file `name` (not a directory) from this directory.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(io::Error::from)
    }

    /// Give `name`, which baton just made in this directory, to `uid`
    /// and `gid` (a `--user` worker's notify socket), without following a
    /// symlink.
    pub fn chown(&self, name: &str, uid: u32, gid: u32) -> io::Result<()> {
        nix::unistd::fchownat(
            &self.fd,
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
    }

    /// Let group and others pass through this directory (`x`), not list
    /// or write it: 0700 becomes 0711.
    fn let_others_search(&mut self) -> Result<(), RuntimeDirError> {
        let mode = (self.stat.st_mode & 0o7777) | 0o011;
        nix::sys::stat::fchmod(&self.fd, Mode::from_bits_truncate(mode))
            .map_err(|e| RuntimeDirError::io(&self.path, e))?;
        self.stat.st_mode = (self.stat.st_mode & !0o7777) | mode;
        Ok(())
    }

    /// Set the mode of `name`, which baton just made in this directory.
    pub fn chmod(&self, name: &str, mode: u32) -> io::Result<()> {
        nix::sys::stat::fchmodat(
            &self.fd,
            name,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(io::Error::from)
    }

    /// Take this directory's `flock`: blocking, or `None` if another
    /// process holds it.
    fn lock(&self, wait: bool) -> Result<Option<Flock<OwnedFd>>, RuntimeDirError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| RuntimeDirError::io(&self.path, e))?;
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match Flock::lock(fd, arg) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(RuntimeDirError::io(&self.path, e)),
        }
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn make_parents(path: &Path) -> Result<(), RuntimeDirError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE)
        .create(path)
        .map_err(|e| RuntimeDirError::io(path, e))
}

fn directory_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The parent and the last component of `path`.
pub fn split(path: &Path) -> Result<(&Path, &str), RuntimeDirError> {
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok((parent, name))
        }
        _ => Err(RuntimeDirError::refused(
            path,
            "not a path to a file in a directory (or not UTF-8)",
        )),
    }
}

/// One running baton's own directory, `BASE/NAME.PID.d`, for its notify
/// sockets: made 0700 and `flock`ed while this value lives, removed when
/// it drops.
#[derive(Debug)]
pub struct RuntimeDir {
    base: PathBuf,
    name: String,
    dir: Dir,
    _lock: Flock<OwnedFd>,
    /// Whether others may pass through it and its base (`--user`).
    searchable: bool,
}

impl RuntimeDir {
    /// Make the directory of the baton named `name` under `base` (made if
    /// missing), first removing those of batons that are gone (their lock
    /// is free).
    pub fn claim(base: &Path, name: &str) -> Result<RuntimeDir, RuntimeDirError> {
        let dir = format!("{name}.{}.d", std::process::id());
        RuntimeDir::make(base, dir, true)
    }

    fn make(base: &Path, name: String, sweep: bool) -> Result<RuntimeDir, RuntimeDirError> {
        let parent = Dir::open(base, Rule::Own, true)?;
        // Other batons of this uid sweep and make theirs under the same
        // lock: none removes a directory made but not yet locked.
        let _base_lock = parent.lock(true)?;
        if sweep {
            remove_leftovers(&parent);
        }
        if parent.kind(&name).ok().flatten() == Some(Kind::Directory) {
            // A leftover of a dead baton with this pid, or of this one
            // renamed away and back: remove it only if nobody holds it.
            remove_if_unlocked(&parent, &name);
        }
        let dir = parent.open_child(&name, Rule::Own, true)?;
        let lock = dir.lock(false)?.ok_or_else(|| {
            RuntimeDirError::refused(dir.path(), "another running baton holds it")
        })?;
        Ok(RuntimeDir {
            base: base.to_owned(),
            name,
            dir,
            _lock: lock,
            searchable: false,
        })
    }

    /// Let workers of another user (`--user`) reach the sockets inside:
    /// this directory and its base become 0711 (others pass through but
    /// cannot list or write), also when the directory is made again.
    pub fn let_others_search(&mut self) -> Result<(), RuntimeDirError> {
        if self.searchable {
            return Ok(());
        }
        let mut base = Dir::open(&self.base, Rule::Own, false)?;
        base.let_others_search()?;
        self.dir.let_others_search()?;
        self.searchable = true;
        Ok(())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory, open.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Whether the path still names this directory (a tmp cleaner may have
    /// removed it, or the whole base).
    pub fn intact(&self) -> bool {
        std::fs::symlink_metadata(self.path()).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && (m.dev(), m.ino()) == self.dir.identity()
        })
    }

    /// Re-create the directory (and the base) where it vanished; `true`
    /// when a new one was made, whose sockets must be bound again.
    pub fn repair(&mut self) -> Result<bool, RuntimeDirError> {
        if self.intact() {
            return Ok(false);
        }
        let searchable = self.searchable;
        *self = RuntimeDir::make(&self.base, self.name.clone(), false)?;
        if searchable {
            self.let_others_search()?;
        }
        Ok(true)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.intact() {
            let _ = std::fs::remove_dir_all(self.path());
        }
    }
}

/// Remove every `*.d` directory in `base` that no live baton locks.
fn remove_leftovers(base: &Dir) {
    let Ok(entries) = std::fs::read_dir(base.entry(".")) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str()
            && name.ends_with(".d")
        {
            remove_if_unlocked(base, name);
        }
    }
}

/// Remove the directory `name` in `base` if it is baton's own and its
/// lock is free: the baton that made it is gone.
fn remove_if_unlocked(base: &Dir, name: &str) {
    let Ok(dir) = base.open_child(name, Rule::Own, false) else {
        return;
    };
    match dir.lock(false) {
        Ok(Some(_lock)) => {
            // Through the checked base: std's remove_dir_all follows no symlink.
            match std::fs::remove_dir_all(base.entry(name)) {
                Ok(()) => {
                    tracing::info!(path = %dir.path().display(), "removed the runtime directory of a baton that is gone")
                }
                Err(error) => {
                    tracing::warn!(path = %dir.path().display(), %error, "cannot remove the runtime directory of a baton that is gone")
                }
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "cannot check a runtime directory"),
    }
}

#[cfg(test)]
mod tests;
