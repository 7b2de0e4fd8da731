//! What the binary's own tests share: running `baton` as a script would,
//! and finding the workspace. (Each test file is a crate of its own and
//! uses a part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `baton ARGS` with these `BATON_*` variables and no other (and no
/// `RUST_LOG`), whatever the environment of the test.
pub fn baton(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BATON_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG").envs(env.iter().copied());
    command.output().expect("run baton")
}
