//! Builds the preload library (`preload/shim.rs`, `--preload`) with the
//! same rustc, for the same target, as a `no_std` cdylib: cargo cannot
//! build another crate's cdylib for `cargo install`, and a build script
//! needs no C compiler. `src/preload.rs` embeds the result.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=preload");
    println!("cargo::rerun-if-changed=src/preload/addr.rs");
    println!("cargo::rerun-if-changed=src/preload/drain_page.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    // A static (musl) baton still runs glibc workers on a glibc system:
    // the library goes into the workers, so it is built for them.
    let target = match target.strip_suffix("-musl") {
        Some(arch) => format!("{arch}-gnu"),
        None => target,
    };
    let library = out.join("libbaton_preload.so");
    let mut command = Command::new(rustc);
    command
        .args(["--crate-type", "cdylib", "--crate-name", "baton_preload"])
        .args(["--edition", "2024", "--target", &target])
        // Small and panic-free: no unwinding into C, no debug info, no
        // checks that would bring a panic path.
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=s",
            "-C",
            "debuginfo=0",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "strip=symbols", "-C", "overflow-checks=off"])
        .args(["-C", "debug-assertions=off"])
        .arg("-o")
        .arg(&library)
        .arg("preload/shim.rs");
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        command.arg("-C").arg({
            let mut flag = std::ffi::OsString::from("linker=");
            flag.push(linker);
            flag
        });
    }
    let status = command.status().expect("run rustc for the preload library");
    assert!(status.success(), "building preload/shim.rs failed");
}
