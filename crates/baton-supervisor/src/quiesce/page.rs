//! The file behind a generation's drain page
//! ([`drain_page`](crate::preload::drain_page) has its layout): written
//! before the generation starts, its flag raised to quiesce it, removed
//! when the generation is forgotten.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::preload::drain_page;
use crate::runtime_dir::Dir;

/// One generation's page, in baton's runtime directory.
#[derive(Debug)]
pub struct DrainPage {
    file: File,
    name: String,
    path: PathBuf,
    dir: PathBuf,
}

impl DrainPage {
    /// Write the page of `generation` in `dir`, naming the sockets
    /// `inodes`, readable by the workers (and their `--user`: the
    /// directory lets others pass, not list).
    pub fn create(dir: &Dir, generation: u64, inodes: &[u64]) -> io::Result<DrainPage> {
        let name = format!("gen-{generation}.drain");
        match dir.remove(&name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(dir, name.as_str(), flags, Mode::from_bits_truncate(0o644))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o644))?;
        let file = File::from(fd);
        file.write_all_at(&drain_page::encode(inodes), 0)?;
        Ok(DrainPage {
            file,
            path: dir.path().join(&name),
            name,
            dir: dir.path().to_owned(),
        })
    }

    /// Where it is, for [`drain_page::ENV`].
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Raise the flag: every process of the generation stops taking
    /// connections the next time it is about to wait.
    pub fn raise(&self) -> io::Result<()> {
        self.file.write_all_at(&[1], drain_page::FLAG as u64)
    }
}

impl Drop for DrainPage {
    fn drop(&mut self) {
        // By path: the directory may have been made again since; a page
        // that vanished with it is gone already.
        let _ = std::fs::remove_file(self.dir.join(&self.name));
    }
}
