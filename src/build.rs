//! The binaries under test: `baton`, `test-worker` and `listenfd-server`,
//! from the workspace's own target directory; and, on demand, an example
//! of the root package (a recipe written in Rust, `examples/*.rs`).
//!
//! A test, bench or example asks cargo for the binaries once per process,
//! with the profile and in the target directory it was itself built with
//! (`target/debug/deps/config-…` → `cargo build` into `target/`;
//! `target/release/examples/demo` → `cargo build --release`). Cargo then
//! reuses every artifact the outer build made, provided the features of each
//! shared dependency are the same in both builds: that is why the root
//! package depends on everything the binaries depend on (see Cargo.toml),
//! and why the build also selects `baton-e2e`. Under `cargo test
//! --workspace` cargo finds them all up to date.
//!
//! Cargo's progress goes to the test's stderr, so a build that does take
//! time shows what it is doing.

use std::ffi::OsString;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace's binaries the tests run, each the only binary of the
/// package of the same name.
pub(crate) const BINARIES: [&str; 3] = ["baton", "test-worker", "listenfd-server"];

/// Where the binaries are, in the order of [`BINARIES`].
pub(crate) struct Binaries(pub(crate) [PathBuf; BINARIES.len()]);

/// How the running executable was built: its profile, target directory
/// and target triple (when cargo was given `--target`).
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    profile: String,
    target_dir: Option<PathBuf>,
    triple: Option<String>,
}

/// Read the layout from the executable's path: cargo puts tests and
/// benches in `<target>[/<triple>]/<profile dir>/deps/`, examples in
/// `…/examples/`; the target directory is the one holding `CACHEDIR.TAG`.
fn layout(exe: &Path) -> Layout {
    let profile_dir = exe.parent().and_then(Path::parent);
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let profile = match profile_dir.and_then(name).as_deref() {
        Some("debug") | None => "dev".to_owned(),
        Some(dir) => dir.to_owned(),
    };
    let above = profile_dir.and_then(Path::parent);
    let is_target = |p: &Path| p.join("CACHEDIR.TAG").is_file();
    match above {
        Some(dir) if is_target(dir) => Layout {
            profile,
            target_dir: Some(dir.to_owned()),
            triple: None,
        },
        Some(dir) if dir.parent().is_some_and(is_target) => Layout {
            profile,
            target_dir: dir.parent().map(Path::to_owned),
            triple: name(dir),
        },
        _ => Layout {
            profile,
            target_dir: None,
            triple: None,
        },
    }
}

/// Build (or find up to date) the binaries; panics if cargo fails.
pub(crate) fn build() -> Binaries {
    let mut command = cargo_build();
    command.args(["-p", "baton-e2e"]);
    for package in BINARIES {
        command.args(["-p", package]);
    }
    let built = executables(command);
    Binaries(BINARIES.map(|name| {
        built
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, path)| path.clone())
            .unwrap_or_else(|| panic!("cargo named no `{name}` executable"))
    }))
}

/// Build (or find up to date) an example of the root package (`examples/NAME.rs`,
/// such as a recipe the tests run); panics if cargo fails.
pub(crate) fn build_example(name: &str) -> PathBuf {
    let mut command = cargo_build();
    command.args(["-p", "baton-e2e", "--example", name]);
    executables(command)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("cargo named no `{name}` example"))
}

/// `cargo build` with the profile, target directory and target of the
/// running executable, asked to name what it built.
fn cargo_build() -> Command {
    let exe = std::env::current_exe().expect("the path of this executable");
    let layout = layout(&exe);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--message-format=json-render-diagnostics", "--profile"])
        .arg(&layout.profile);
    if let Some(dir) = &layout.target_dir {
        command.arg("--target-dir").arg(dir);
    }
    if let Some(triple) = &layout.triple {
        command.arg("--target").arg(triple);
    }
    command
}

/// Run a `cargo build` and return each executable it names, by target name.
fn executables(mut command: Command) -> Vec<(String, PathBuf)> {
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = child.stdout.take().expect("piped");
    let mut found = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("cargo's output");
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let (Some(executable), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) {
            found.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    let status = child.wait().expect("wait for cargo");
    assert!(status.success(), "{command:?} failed: {status}");
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Each package of the graph with its features, as `cargo tree` sees
    /// it for these arguments.
    fn features(args: &[&str]) -> BTreeSet<String> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let output = Command::new(cargo)
            .args(["tree", "--offline", "--prefix", "none", "-f", "{p} [{f}]"])
            .arg("--manifest-path")
            .arg(&manifest)
            .args(args)
            .output()
            .expect("cargo tree");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| line.trim_end_matches(" (*)").to_owned())
            .filter(|line| !line.is_empty())
            .collect()
    }

    /// The harness's build reuses the artifacts of the build that started
    /// it only if every shared dependency has the same features in both:
    /// a dependency added to a binary (or a test) but not to the root
    /// package shows here, before it costs a second build of half the tree.
    #[test]
    fn the_harness_build_resolves_the_features_of_the_outer_build() {
        let mut args = vec!["-e", "normal,build", "-p", "baton-e2e"];
        for package in BINARIES {
            args.extend(["-p", package]);
        }
        let harness = features(&args);
        // `cargo test --workspace`.
        let workspace = features(&["-e", "normal,dev,build", "--workspace"]);
        assert_eq!(
            harness.symmetric_difference(&workspace).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "add these to the root package's [dependencies], with these features"
        );
        // The demo, the benches, `cargo test --test NAME`.
        let root = features(&["-e", "normal,dev,build", "-p", "baton-e2e"]);
        let only_binaries: Vec<_> = harness
            .symmetric_difference(&root)
            .filter(|line| {
                !BINARIES
                    .iter()
                    .any(|bin| line.starts_with(&format!("{bin} v")))
            })
            .collect();
        assert_eq!(only_binaries, Vec::<&String>::new());
    }

    /// The release profile builds some test-only crates unoptimized
    /// (`[profile.release.package.*]` in Cargo.toml) to shorten the demo's
    /// build. That is only honest while no binary runs them: the benches
    /// and the demo measure the release build of these.
    #[test]
    fn what_the_release_profile_leaves_unoptimized_no_binary_runs() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let text = std::fs::read_to_string(manifest).expect("Cargo.toml");
        let manifest: toml::Table = toml::from_str(&text).expect("Cargo.toml is TOML");
        let overridden: Vec<&String> = manifest["profile"]["release"]
            .get("package")
            .and_then(toml::Value::as_table)
            .map(|packages| packages.keys().collect())
            .unwrap_or_default();
        let mut args = vec!["-e", "normal,build", "-p", "baton-loadgen"];
        for package in BINARIES {
            args.extend(["-p", package]);
        }
        let run = features(&args);
        let run: BTreeSet<&str> = run
            .iter()
            .filter_map(|line| line.split(' ').next())
            .collect();
        let root = features(&["-e", "normal,build", "-p", "baton-e2e"]);
        for name in overridden {
            assert!(
                !run.contains(name.as_str()),
                "`{name}` is built unoptimized in release but a binary depends on it"
            );
            assert!(
                root.iter()
                    .any(|line| line.starts_with(&format!("{name} v"))),
                "`{name}` has a release override but is not in the graph"
            );
        }
    }

    #[test]
    fn the_layout_follows_the_executable() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("CACHEDIR.TAG"), "").unwrap();
        let t = target.path();
        assert_eq!(
            layout(&t.join("debug/deps/config-0123")),
            Layout {
                profile: "dev".into(),
                target_dir: Some(t.to_owned()),
                triple: None
            }
        );
        assert_eq!(
            layout(&t.join("release/examples/demo")),
            Layout {
                profile: "release".into(),
                target_dir: Some(t.to_owned()),
                triple: None
            }
        );
        assert_eq!(
            layout(&t.join("x86_64-unknown-linux-gnu/release/deps/reload-0123")),
            Layout {
                profile: "release".into(),
                target_dir: Some(t.to_owned()),
                triple: Some("x86_64-unknown-linux-gnu".into())
            }
        );
        assert_eq!(layout(Path::new("/nowhere/a/b")).target_dir, None);
    }
}
