use std::os::unix::fs::PermissionsExt;

use super::addr::{AF_INET, AF_INET6, AF_UNIX, Addr, matches, parse};
use super::*;

fn v4(ip: [u8; 4], port: u16) -> Addr<'static> {
    Addr::V4 { ip, port }
}

fn v6(ip: [u8; 16], port: u16) -> Addr<'static> {
    Addr::V6 { ip, port }
}

const ANY6: [u8; 16] = [0; 16];
const LOOP6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[test]
fn a_specific_address_matches_only_itself() {
    let held = v4([127, 0, 0, 1], 8080);
    assert!(matches(&v4([127, 0, 0, 1], 8080), &held, false));
    assert!(!matches(&v4([127, 0, 0, 1], 8081), &held, false));
    assert!(!matches(&v4([127, 0, 0, 2], 8080), &held, false));
    assert!(!matches(&v4([0, 0, 0, 0], 8080), &held, false));
    assert!(!matches(&v6(ANY6, 8080), &held, false));
    assert!(matches(&v6(LOOP6, 8080), &v6(LOOP6, 8080), false));
    assert!(!matches(&v6(LOOP6, 8080), &v6(ANY6, 8080), true));
}

#[test]
fn both_wildcards_match_the_all_interfaces_listener() {
    // baton's `:P`: a dual-stack [::]:P, or 0.0.0.0:P without IPv6.
    for bind in [v4([0; 4], 3000), v6(ANY6, 3000)] {
        assert!(matches(&bind, &v6(ANY6, 3000), true), "{bind:?}");
        assert!(matches(&bind, &v4([0; 4], 3000), false), "{bind:?}");
        assert!(!matches(&bind, &v6(ANY6, 3001), true), "{bind:?}");
        assert!(
            !matches(&bind, &v4([127, 0, 0, 1], 3000), false),
            "{bind:?}"
        );
    }
    // An IPv6-only [::]:P takes no IPv4 bind.
    assert!(!matches(&v4([0; 4], 3000), &v6(ANY6, 3000), false));
    assert!(matches(&v6(ANY6, 3000), &v6(ANY6, 3000), false));
}

#[test]
fn port_zero_never_matches() {
    assert!(!matches(&v4([0; 4], 0), &v4([0; 4], 0), false));
    assert!(!matches(&v6(ANY6, 0), &v6(ANY6, 0), true));
}

#[test]
fn a_unix_path_matches_itself() {
    let held = Addr::Unix(b"/run/app.sock");
    assert!(matches(&Addr::Unix(b"/run/app.sock"), &held, false));
    assert!(!matches(&Addr::Unix(b"/run/other.sock"), &held, false));
    assert!(!matches(&v4([0; 4], 80), &held, false));
    assert!(!matches(&Addr::Unix(b""), &Addr::Unix(b""), false));
}

fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut b = AF_INET.to_ne_bytes().to_vec();
    b.extend(port.to_be_bytes());
    b.extend(ip);
    b.extend([0; 8]);
    b
}

#[test]
fn sockaddrs_parse_as_the_kernel_writes_them() {
    assert_eq!(
        parse(&sockaddr_in([127, 0, 0, 1], 8080)),
        Some(v4([127, 0, 0, 1], 8080))
    );
    let mut six = AF_INET6.to_ne_bytes().to_vec();
    six.extend(443u16.to_be_bytes());
    six.extend([0; 4]);
    six.extend(LOOP6);
    six.extend([0; 4]);
    assert_eq!(parse(&six), Some(v6(LOOP6, 443)));
    // Too short for its family.
    assert_eq!(parse(&six[..20]), None);
    assert_eq!(parse(&sockaddr_in([1, 2, 3, 4], 1)[..6]), None);
    let mut unix = AF_UNIX.to_ne_bytes().to_vec();
    unix.extend(b"/run/app.sock\0\0\0");
    assert_eq!(parse(&unix), Some(Addr::Unix(b"/run/app.sock")));
    let mut abstract_name = AF_UNIX.to_ne_bytes().to_vec();
    abstract_name.extend(b"\0name");
    assert_eq!(parse(&abstract_name), Some(Addr::Unix(b"\0name")));
    // Unnamed (autobind), or another family.
    assert_eq!(parse(&AF_UNIX.to_ne_bytes()), None);
    assert_eq!(parse(&[17, 0, 1, 2]), None);
    assert_eq!(parse(&[]), None);
}

#[test]
fn the_warning_names_both_addresses() {
    let hex: String = sockaddr_in([0, 0, 0, 0], 3000)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let held = ["http=127.0.0.1:8080".to_owned()];
    let text = unheld_warning(&format!("listen {hex}"), &held).unwrap();
    assert!(
        text.contains(
            "listens on 0.0.0.0:3000, which baton does not hold (baton holds http=127.0.0.1:8080)"
        ),
        "{text}"
    );
    let text = unheld_warning(&format!("inuse {hex}"), &held).unwrap();
    assert!(
        text.contains("cannot bind 0.0.0.0:3000 (address in use)"),
        "{text}"
    );
    assert_eq!(unheld_warning("listen 0", &held), None);
    assert_eq!(unheld_warning(&format!("other {hex}"), &held), None);
    assert_eq!(display(&Addr::Unix(b"\0name")), "@name");
    assert_eq!(display(&v6(ANY6, 80)), "[::]:80");
}

#[test]
fn the_library_is_written_for_every_user_to_read() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("baton-preload");
    let path = write(&dir).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), LIBRARY);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o644);
    assert_eq!(mode(&dir), 0o755);
    // Again: the same file, no leftovers.
    assert_eq!(write(&dir).unwrap(), path);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert!(LIBRARY.starts_with(b"\x7fELF"));
}

#[test]
fn preload_goes_first_and_keeps_what_was_there() {
    let lib = Path::new("/run/baton-preload/lib.so");
    assert_eq!(ld_preload(lib, None), "/run/baton-preload/lib.so");
    assert_eq!(
        ld_preload(lib, Some(OsStr::new(""))),
        "/run/baton-preload/lib.so"
    );
    assert_eq!(
        ld_preload(lib, Some(OsStr::new("libjemalloc.so.2"))),
        "/run/baton-preload/lib.so:libjemalloc.so.2"
    );
}

#[test]
fn a_dynamic_c_program_and_a_script_get_no_advice() {
    assert_eq!(elf::unreachable(Path::new("/bin/sh")), None);
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "#!/bin/sh\nexec app\n").unwrap();
    assert_eq!(elf::unreachable(script.path()), None);
    assert_eq!(elf::unreachable(Path::new("/nonexistent")), None);
}

#[test]
fn a_drain_page_names_its_sockets_and_starts_with_its_flag_down() {
    let page = drain_page::encode(&[7, 1 << 40]);
    assert!(drain_page::valid(&page));
    assert_eq!(page[drain_page::FLAG], 0);
    assert!(drain_page::names(&page, 7));
    assert!(drain_page::names(&page, 1 << 40));
    assert!(!drain_page::names(&page, 8));
    assert!(!drain_page::names(&page, 0), "unused slots name nothing");
    assert!(!drain_page::valid(&page[..drain_page::LEN - 1]));
    assert!(!drain_page::valid(&[0; drain_page::LEN]));
}

#[test]
fn the_library_needs_nothing_but_libc() {
    // Built with `BIND_NOW`: an undefined symbol libc lacks would stop
    // every worker from starting. `core`'s panic machinery, pulled in by
    // any index or slice copy that might fail, brings such a symbol
    // (`rust_eh_personality`).
    let needle = b"rust_eh_personality";
    assert!(
        !LIBRARY.windows(needle.len()).any(|w| w == needle),
        "the preload library links core's panic path: find the index or copy_from_slice that can fail"
    );
}
