//! `--preload`: the library that makes an unchanged server's `bind()` take
//! the socket baton holds (`preload/shim.rs`, built by `build.rs`).
//!
//! baton writes the embedded library once, at start, to a directory beside
//! its runtime directory that every user may read (`<base>-preload/`,
//! 0755; the file 0644, named after its content, written whole and then
//! renamed), so that a worker running as another user loads it too; and
//! starts each worker with it first in `LD_PRELOAD`. The library tells
//! baton, through the generation's notify socket, about a socket that
//! listens on an address baton does not hold; [`unheld_warning`] says it
//! in words.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::listeners::Listener;
use crate::runtime_dir::{self, Dir, Rule, RuntimeDirError};

pub mod addr;
pub mod drain_page;
pub mod elf;

/// The library, as built for this target.
pub const LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libbaton_preload.so"));

/// The key of the library's reports on the notify socket.
pub const REPORT_KEY: &str = "BATON_PRELOAD_UNHELD";

/// Why the library cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    /// Its directory is not one baton can use.
    #[error("--preload: {0}")]
    Dir(#[from] RuntimeDirError),
    /// Writing the file failed.
    #[error("--preload: cannot write the preload library in {dir}: {source}")]
    Write {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `LD_PRELOAD` splits paths at spaces and colons.
    #[error(
        "--preload: the library's path {0} holds a space or a colon, which LD_PRELOAD cannot carry: set XDG_RUNTIME_DIR to another directory"
    )]
    Path(PathBuf),
}

/// The directory of the library: beside [`runtime_dir::base`], readable
/// by every user (baton's own runtime directory is not).
pub fn directory() -> PathBuf {
    let base = runtime_dir::base();
    let mut name = base.file_name().unwrap_or_default().to_owned();
    name.push("-preload");
    base.with_file_name(name)
}

/// The library's path on disk, written at the first call.
pub fn library() -> Result<&'static Path, &'static PreloadError> {
    static WRITTEN: OnceLock<Result<PathBuf, PreloadError>> = OnceLock::new();
    WRITTEN
        .get_or_init(|| write(&directory()))
        .as_ref()
        .map(PathBuf::as_path)
}

/// Write [`LIBRARY`] into `dir` (made 0755 if missing) as
/// `libbaton-preload-HASH.so`, mode 0644; return its path.
pub fn write(dir: &Path) -> Result<PathBuf, PreloadError> {
    let failed = |source: std::io::Error| PreloadError::Write {
        dir: dir.to_owned(),
        source,
    };
    let opened = Dir::open(dir, Rule::Own, true)?;
    // Made 0700 (and checked: baton's, not writable by others); workers of
    // another uid must reach the file.
    nix::sys::stat::fchmod(opened.as_fd(), Mode::from_bits_truncate(0o755))
        .map_err(|e| failed(e.into()))?;
    let name = format!("libbaton-preload-{:016x}.so", fnv1a(LIBRARY));
    let path = dir.join(&name);
    if path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b' ' | b':'))
    {
        return Err(PreloadError::Path(path));
    }
    // A whole file or none: written under a name of this process, renamed.
    let temporary = format!(".{name}.{}", std::process::id());
    let flags =
        OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(
        &opened,
        temporary.as_str(),
        flags,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| failed(e.into()))?;
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o644)).map_err(|e| failed(e.into()))?;
    std::fs::File::from(fd).write_all(LIBRARY).map_err(failed)?;
    nix::fcntl::renameat(&opened, temporary.as_str(), &opened, name.as_str())
        .map_err(|e| failed(e.into()))?;
    Ok(path)
}

/// FNV-1a, 64 bits: a name that changes with the library's content, so
/// that two batons of different versions never swap each other's file.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `LD_PRELOAD` for a worker: the library first, then what the
/// environment had (a malloc, say).
pub fn ld_preload(library: &Path, existing: Option<&OsStr>) -> OsString {
    let mut value = library.as_os_str().to_owned();
    if let Some(existing) = existing.filter(|e| !e.is_empty()) {
        value.push(":");
        value.push(existing);
    }
    value
}

/// An address as baton writes it: `127.0.0.1:8080`, `[::]:8080`, a path,
/// `@name` for an abstract unix socket.
pub fn display(address: &addr::Addr<'_>) -> String {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    match *address {
        addr::Addr::V4 { ip, port } => SocketAddr::from((Ipv4Addr::from(ip), port)).to_string(),
        addr::Addr::V6 { ip, port } => SocketAddr::from((Ipv6Addr::from(ip), port)).to_string(),
        addr::Addr::Unix([0, name @ ..]) => format!("@{}", String::from_utf8_lossy(name)),
        addr::Addr::Unix(path) => Path::new(OsStr::from_bytes(path)).display().to_string(),
    }
}

/// The warning for a report of the library (`listen HEX` or `inuse HEX`,
/// the value of [`REPORT_KEY`]), naming the address and the ones baton
/// holds (`name=address`); `None` for a value that is no such report.
pub fn unheld_warning(value: &str, held: &[String]) -> Option<String> {
    let (what, hex) = value.trim().split_once(' ')?;
    let bytes = decode_hex(hex)?;
    let address = display(&addr::parse(&bytes)?);
    let held = if held.is_empty() {
        "nothing".to_owned()
    } else {
        held.join(", ")
    };
    let done = match what {
        "listen" => format!("listens on {address}"),
        "inuse" => format!("cannot bind {address} (address in use)"),
        _ => return None,
    };
    Some(format!(
        "the worker {done}, which baton does not hold (baton holds {held}): its own socket, not baton's, so reloads would refuse connections; give baton that address with --listen, or the server baton's"
    ))
}

/// [`unheld_warning`] for a notification's report, if it has one, naming
/// the listeners as `name=address`.
pub fn warning(report: Option<&str>, listeners: &[Listener]) -> Option<String> {
    let report = report?;
    let held: Vec<String> = (listeners.iter())
        .map(|l| format!("{}={}", l.name(), l.local_address()))
        .collect();
    unheld_warning(report, &held)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * addr::MAX_LEN {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
