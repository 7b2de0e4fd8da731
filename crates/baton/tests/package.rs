//! The Debian package: `packaging/build-deb.sh` builds it with dpkg-deb
//! from this build's binary; the test lists what it holds, checks a few
//! files inside, and checks that `[package.metadata.deb]` (cargo-deb's
//! view of the same package) names the same files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::workspace;

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout).expect("UTF-8")
}

/// The files (not directories) `dpkg-deb --contents` lists, without `./`.
fn contents(deb: &Path) -> BTreeSet<String> {
    stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|line| !line.starts_with('d'))
        .filter_map(|line| line.split_whitespace().last())
        .map(|path| path.trim_start_matches("./").to_owned())
        .collect()
}

/// `[package.metadata.deb]` of crates/baton/Cargo.toml.
fn deb_metadata() -> toml::Table {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("crates/baton/Cargo.toml");
    let mut manifest: toml::Table = manifest.parse().expect("valid TOML");
    let toml::Value::Table(mut package) = manifest.remove("package").unwrap() else {
        panic!("[package]")
    };
    let toml::Value::Table(mut metadata) = package.remove("metadata").unwrap() else {
        panic!("[package.metadata]")
    };
    match metadata.remove("deb") {
        Some(toml::Value::Table(deb)) => deb,
        _ => panic!("[package.metadata.deb]"),
    }
}

/// Where cargo-deb would install each asset of `[package.metadata.deb]`,
/// with `target/` read as `target_dir` and `*` expanded in file names.
fn cargo_deb_destinations(target_dir: &Path) -> BTreeSet<String> {
    let deb = deb_metadata();
    let assets = deb["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    let mut destinations = BTreeSet::new();
    for asset in assets {
        let source = asset[0].as_str().expect("a source");
        let dest = asset[1].as_str().expect("a destination");
        let source = match source.strip_prefix("target/") {
            Some(rest) => target_dir.join(rest),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join(source),
        };
        let name = source.file_name().unwrap().to_string_lossy().into_owned();
        let files: Vec<PathBuf> = match name.split_once('*') {
            Some((prefix, suffix)) => std::fs::read_dir(source.parent().unwrap())
                .expect("the asset's directory")
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with(prefix) && n.ends_with(suffix)
                })
                .collect(),
            None => vec![source],
        };
        assert!(!files.is_empty(), "no file for asset {asset:?}");
        for file in files {
            assert!(file.is_file(), "asset {asset:?}: no {}", file.display());
            let dest = match dest.strip_suffix('/') {
                Some(dir) => format!("{dir}/{}", file.file_name().unwrap().to_string_lossy()),
                None => dest.to_owned(),
            };
            destinations.insert(dest.trim_start_matches('/').to_owned());
        }
    }
    destinations
}

#[test]
fn the_package_holds_the_binary_the_pages_the_completions_and_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let out = dir.path().join("out");
    // The binary where a release build leaves it, as the script and
    // cargo-deb expect it by default.
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_baton"), target.join("release/baton")).unwrap();
    let printed = stdout(
        Command::new(workspace().join("packaging/build-deb.sh"))
            .env("CARGO_TARGET_DIR", &target)
            // A debug binary is large: gzip would take most of the test.
            .env("DEB_COMPRESSION", "none")
            .arg(target.join("release/baton"))
            .arg(&out),
    );
    let deb = PathBuf::from(printed.trim());
    assert_eq!(deb.parent(), Some(out.as_path()), "{printed}");

    let files = contents(&deb);
    eprintln!(
        "{}:\n{}",
        deb.display(),
        Vec::from_iter(files.clone()).join("\n")
    );
    for file in [
        "usr/bin/baton",
        "usr/share/man/man1/baton.1.gz",
        "usr/share/man/man1/baton-run.1.gz",
        "usr/share/man/man1/baton-ctl.1.gz",
        "usr/share/man/man1/baton-check.1.gz",
        "usr/share/bash-completion/completions/baton",
        "usr/share/zsh/vendor-completions/_baton",
        "usr/share/fish/vendor_completions.d/baton.fish",
        "lib/systemd/system/baton@.service",
        "usr/share/doc/baton/examples/systemd/baton.service",
        "usr/share/doc/baton/examples/systemd/baton-socket.service",
        "usr/share/doc/baton/examples/systemd/baton-socket.socket",
        "usr/share/doc/baton/copyright",
        "usr/share/doc/baton/LICENSE-MIT",
        "usr/share/doc/baton/LICENSE-APACHE",
    ] {
        assert!(files.contains(file), "no {file} in the package");
    }
    // cargo-deb writes the copyright file from its license-file (the same
    // file, used as it is); every other file is an asset, and each asset is
    // in the package.
    let mut expected = cargo_deb_destinations(&target);
    expected.insert("usr/share/doc/baton/copyright".to_owned());
    assert_eq!(
        deb_metadata()["license-file"][0].as_str(),
        Some("../../packaging/copyright")
    );
    assert_eq!(
        files, expected,
        "packaging/build-deb.sh and [package.metadata.deb] differ"
    );

    let field = |name: &str| stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "baton");
    assert_eq!(field("Version").trim(), env!("CARGO_PKG_VERSION"));
    // The control fields cargo-deb would write from the same metadata.
    let deb_metadata = deb_metadata();
    for (name, key) in [
        ("Maintainer", "maintainer"),
        ("Depends", "depends"),
        ("Section", "section"),
        ("Priority", "priority"),
    ] {
        assert_eq!(
            field(name).trim(),
            deb_metadata[key].as_str().unwrap(),
            "{name}"
        );
    }
    let description = field("Description");
    let (synopsis, extended) = description.split_once('\n').unwrap();
    assert_eq!(synopsis, env!("CARGO_PKG_DESCRIPTION"));
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        words(extended),
        words(deb_metadata["extended-description"].as_str().unwrap())
    );

    // Inside: the units point at the packaged binary, the pages are roff.
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let template = std::fs::read_to_string(root.join("lib/systemd/system/baton@.service")).unwrap();
    assert!(
        template.contains("ExecStart=/usr/bin/baton run"),
        "{template}"
    );
    assert!(!template.contains("/usr/local/bin/baton"), "{template}");
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/doc/baton/copyright")).unwrap(),
        std::fs::read_to_string(workspace().join("packaging/copyright")).unwrap()
    );
    let page = stdout(Command::new("zcat").arg(root.join("usr/share/man/man1/baton-run.1.gz")));
    assert!(page.contains(".TH baton-run 1"), "{page}");
    assert!(page.contains("drain\\-timeout"), "{page}");
    let version = stdout(Command::new(root.join("usr/bin/baton")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("baton {}", env!("CARGO_PKG_VERSION"))
    );
}
