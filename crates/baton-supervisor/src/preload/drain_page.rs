//! The page through which baton asks a `--preload` generation to stop
//! taking connections (baton's own drain, for servers that have none).
//! Shared, as source, by the supervisor and the preload library
//! (`preload/shim.rs`, `no_std`): `core` only, no allocation, no panic.
//!
//! baton writes one file per generation before it starts it, and gives
//! its path in [`ENV`]. Each process of the generation maps it read-only
//! and shared, and looks at the flag byte whenever it is about to wait
//! (`epoll_wait`, `poll`, `select`, a blocking `accept`): no signal the
//! server could see or mind. The page also names the sockets baton handed
//! the generation, by inode, so the library knows them whatever descriptor
//! numbers they have in a process.
//!
//! Layout (native byte order): `MAGIC` at 0; the flag at [`FLAG`] (0:
//! serve, 1: stop taking connections); the number of inodes (`u64`) at
//! [`COUNT`]; the inodes (`u64` each) from [`INODES`], at most
//! [`MAX_INODES`].

/// The variable that holds the page's path.
pub const ENV: &str = "BATON_PRELOAD_DRAIN";
/// The first bytes of a page.
pub const MAGIC: [u8; 8] = *b"baton-d1";
/// Where the flag byte is.
pub const FLAG: usize = 8;
/// Where the number of inodes is.
pub const COUNT: usize = 16;
/// Where the inodes start.
pub const INODES: usize = 24;
/// The most sockets a page names.
pub const MAX_INODES: usize = 64;
/// The page's size.
pub const LEN: usize = INODES + 8 * MAX_INODES;

/// A page naming `inodes` (at most [`MAX_INODES`]), its flag down.
pub fn encode(inodes: &[u64]) -> [u8; LEN] {
    // Byte by byte: the library links no slice-copy panic path.
    let put = |page: &mut [u8; LEN], at: usize, bytes: &[u8]| {
        for (slot, &b) in page.iter_mut().skip(at).zip(bytes) {
            *slot = b;
        }
    };
    let mut page = [0u8; LEN];
    put(&mut page, 0, &MAGIC);
    let count = inodes.len().min(MAX_INODES);
    put(&mut page, COUNT, &(count as u64).to_ne_bytes());
    for (i, inode) in inodes.iter().take(count).enumerate() {
        put(&mut page, INODES + 8 * i, &inode.to_ne_bytes());
    }
    page
}

/// Whether `page` is a page at all.
pub fn valid(page: &[u8]) -> bool {
    page.len() >= LEN && page.get(..FLAG) == Some(&MAGIC[..])
}

/// Whether `page` names the socket `inode`.
pub fn names(page: &[u8], inode: u64) -> bool {
    let Some(count) = page.get(COUNT..INODES).and_then(|b| b.try_into().ok()) else {
        return false;
    };
    let count = (u64::from_ne_bytes(count) as usize).min(MAX_INODES);
    page.get(INODES..INODES + 8 * count).is_some_and(|inodes| {
        inodes
            .chunks_exact(8)
            .any(|b| b.try_into().map(u64::from_ne_bytes).ok() == Some(inode))
    })
}
