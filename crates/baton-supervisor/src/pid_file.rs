//! `--pid-file PATH`: baton's pid, for `kill -HUP $(cat PATH)` and
//! systemd's `PIDFile=`.
//!
//! The file is written to a temporary name and renamed over `PATH`, so a
//! reader never sees it half-written, and `flock`ed for as long as baton
//! runs: a file whose lock is held names a live baton (refused), one whose
//! lock is free was left by a baton that was killed (replaced). A pid
//! alone cannot tell: it may have been reused by any process. The
//! directory is checked like the one of a `--control` socket (another
//! user must not be able to swap the file) and used through its
//! descriptor.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::runtime_dir::{self, Dir, Kind, Rule, RuntimeDirError};

/// Why the pid file cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// A running baton holds it.
    #[error(
        "--pid-file {path}: baton {pid} is running with it: stop that baton, or choose another --pid-file"
    )]
    InUse {
        /// The path.
        path: PathBuf,
        /// What the file says.
        pid: String,
    },
    /// Something other than a regular file is there.
    #[error(
        "--pid-file {0} exists and is not a regular file: baton replaces nothing it did not make; remove it, or choose another --pid-file"
    )]
    NotAFile(PathBuf),
    /// Its directory cannot be trusted, or is missing.
    #[error(transparent)]
    Dir(#[from] RuntimeDirError),
    /// A system call failed.
    #[error("--pid-file {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A claimed pid file; removed when dropped, if it is still this one.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    dir: Dir,
    name: String,
    temp: String,
    /// The written file, locked (the lock goes with the file through the
    /// rename).
    file: Flock<File>,
    published: bool,
}

impl PidFile {
    /// Check `path` (refused if a running baton holds it) and write this
    /// process's pid to a temporary file beside it, locked; [`publish`]
    /// renames it into place.
    ///
    /// [`publish`]: PidFile::publish
    pub fn claim(path: &Path) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: path.to_owned(),
            source,
        };
        let (parent, name) = runtime_dir::split(path)?;
        let dir = Dir::open(parent, Rule::Holder, false)?;
        match dir.kind(name).map_err(io_err)? {
            None => {}
            Some(Kind::Other) => {
                if let Some(pid) = held(&dir.entry(name)).map_err(io_err)? {
                    return Err(PidFileError::InUse {
                        path: path.to_owned(),
                        pid,
                    });
                }
            }
            Some(_) => return Err(PidFileError::NotAFile(path.to_owned())),
        }
        let temp = format!(".{name}.{}.tmp", std::process::id());
        // A leftover of a killed baton that had this pid.
        let _ = dir.remove(&temp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.entry(&temp))
            .map_err(io_err)?;
        let mut file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io_err(errno.into()))?;
        let written = writeln!(file, "{}", std::process::id()).and_then(|()| file.sync_all());
        let claimed = PidFile {
            path: path.to_owned(),
            dir,
            name: name.to_owned(),
            temp,
            file,
            published: false,
        };
        written.map_err(io_err)?;
        Ok(claimed)
    }

    /// Rename the file into place: from now on `PATH` names this baton.
    pub fn publish(&mut self) -> Result<(), PidFileError> {
        std::fs::rename(self.dir.entry(&self.temp), self.dir.entry(&self.name)).map_err(
            |source| PidFileError::Io {
                path: self.path.clone(),
                source,
            },
        )?;
        self.published = true;
        Ok(())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `PATH` still names the file this baton wrote.
    fn still_ours(&self) -> bool {
        let Ok(ours) = self.file.metadata() else {
            return false;
        };
        std::fs::symlink_metadata(self.dir.entry(&self.name))
            .is_ok_and(|now| (now.dev(), now.ino()) == (ours.dev(), ours.ino()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = self.dir.remove(&self.temp);
        } else if self.still_ours() {
            let _ = self.dir.remove(&self.name);
        }
    }
}

/// What the file at `entry` says, if a live process holds its lock.
fn held(entry: &Path) -> io::Result<Option<String>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(entry)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    let _ = (&mut file).take(64).read_to_string(&mut text);
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // Free: its baton is gone. The lock ends when the file closes.
        Ok(_) => Ok(None),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(Some(text.trim().to_owned())),
        Err((_, errno)) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_refused_while_held_replaced_when_stale_removed_at_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let mut first = PidFile::claim(&path).unwrap();
        assert!(!path.exists(), "not before it is published");
        first.publish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));

        let error = PidFile::claim(&path).unwrap_err();
        assert!(matches!(error, PidFileError::InUse { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            format!(
                "--pid-file {}: baton {} is running with it: stop that baton, or choose another --pid-file",
                path.display(),
                std::process::id()
            )
        );
        // Left by a baton that was killed: nobody holds it.
        drop(first);
        assert!(!path.exists(), "removed when baton exits");
        std::fs::write(&path, "12345\n").unwrap();
        let mut second = PidFile::claim(&path).unwrap();
        second.publish().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        // Replaced by someone else meanwhile: theirs is left alone.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "other\n").unwrap();
        drop(second);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "other\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn a_directory_or_a_missing_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = PidFile::claim(dir.path()).unwrap_err();
        assert!(error.to_string().contains("pid"), "{error}");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let error = PidFile::claim(&sub).unwrap_err();
        assert!(matches!(error, PidFileError::NotAFile(_)), "{error}");
        let error = PidFile::claim(&dir.path().join("missing/app.pid")).unwrap_err();
        assert!(matches!(error, PidFileError::Dir(_)), "{error}");
    }
}
