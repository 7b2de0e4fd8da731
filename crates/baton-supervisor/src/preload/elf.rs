//! What an executable's ELF headers say about `--preload`: a statically
//! linked program (no `PT_INTERP`) loads no preload library, and a Go
//! program (a `.note.go.buildid` section) makes its sockets without libc
//! even when it is linked dynamically.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Why the preload library cannot reach a program's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// A Go program (its own syscalls, no libc `bind`).
    Go,
    /// Statically linked: nothing is preloaded.
    Static,
}

const PT_INTERP: u64 = 3;
const GO_BUILD_ID: &[u8] = b".note.go.buildid\0";
/// More headers than any real program has: a bound on what is read.
const MAX_HEADERS: u64 = 4096;

/// Read `path`'s headers: `None` when the library can work (a dynamically
/// linked program that is not Go), or when it is no 64-bit little-endian
/// ELF file (a script: what it runs is not known here).
pub fn unreachable(path: &Path) -> Option<Unreachable> {
    let file = File::open(path).ok()?;
    let read = |offset: u64, len: u64| -> Option<Vec<u8>> {
        let mut buf = vec![0; usize::try_from(len).ok()?];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    let header = read(0, 64)?;
    if header.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        le(&header, 0x20, 8)?,
        le(&header, 0x36, 2)?,
        le(&header, 0x38, 2)?,
    );
    if phentsize < 4 || phnum > MAX_HEADERS {
        return None;
    }
    let programs = read(phoff, phentsize * phnum)?;
    let dynamic = (0..phnum).any(|i| entry(&programs, i, phentsize, 0, 4) == Some(PT_INTERP));
    if is_go(&header, &read) == Some(true) {
        return Some(Unreachable::Go);
    }
    (!dynamic).then_some(Unreachable::Static)
}

/// Whether the section headers name `.note.go.buildid`.
fn is_go(header: &[u8], read: &dyn Fn(u64, u64) -> Option<Vec<u8>>) -> Option<bool> {
    let (shoff, shentsize, shnum, shstrndx) = (
        le(header, 0x28, 8)?,
        le(header, 0x3a, 2)?,
        le(header, 0x3c, 2)?,
        le(header, 0x3e, 2)?,
    );
    if shoff == 0 || shentsize < 0x28 || shnum > MAX_HEADERS || shstrndx >= shnum {
        return Some(false);
    }
    let sections = read(shoff, shentsize * shnum)?;
    let names_at = entry(&sections, shstrndx, shentsize, 0x18, 8)?;
    let names_len = entry(&sections, shstrndx, shentsize, 0x20, 8)?;
    let names = read(names_at, names_len.min(1 << 20))?;
    Some((0..shnum).any(|i| {
        entry(&sections, i, shentsize, 0, 4)
            .and_then(|at| names.get(usize::try_from(at).ok()?..))
            .is_some_and(|name| name.starts_with(GO_BUILD_ID))
    }))
}

/// A field of the `index`th fixed-size entry of a table.
fn entry(table: &[u8], index: u64, size: u64, at: usize, len: usize) -> Option<u64> {
    le(
        table,
        usize::try_from(index * size).ok()?.checked_add(at)?,
        len,
    )
}

/// A little-endian unsigned field of `len` bytes.
fn le(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    let field = bytes.get(at..at.checked_add(len)?)?;
    Some(field.iter().rev().fold(0, |n, &b| (n << 8) | u64::from(b)))
}

/// The one line baton logs at start for such a program.
pub fn advice(program: &Path, why: Unreachable) -> String {
    let what = match why {
        Unreachable::Go => "is a Go program: Go makes its sockets without libc",
        Unreachable::Static => "is statically linked: nothing can be preloaded into it",
    };
    format!(
        "{} {what}, so --preload cannot hand it baton's sockets: have it take them from LISTEN_FDS (fds 3, 4, …; in Go, net.FileListener(os.NewFile(3, \"\"))) and run it with --ready auto",
        program.display()
    )
}
