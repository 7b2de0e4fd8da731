//! The file watcher against real inotify in temp directories.
//!
//! Every wait for an event has a generous deadline; the only fixed waits are
//! the "no second batch within 1 s" quiet-period assertions.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_supervisor::fswatch::{ChangeBatch, WatchError, WatchSettings, Watcher};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_secs(1);

/// A temp directory by its canonical path (event paths are canonical).
fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fs::canonicalize(dir.path()).expect("canonicalize");
    (dir, path)
}

fn write(path: &Path, content: &str) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    fs::write(path, content).expect("write");
}

async fn start(settings: WatchSettings) -> Watcher {
    timeout(DEADLINE, Watcher::start(settings))
        .await
        .expect("start timed out")
        .expect("start failed")
}

async fn next(w: &mut Watcher) -> ChangeBatch {
    timeout(DEADLINE, w.next_batch())
        .await
        .expect("no batch within the deadline")
        .expect("watch error")
}

async fn assert_quiet(w: &mut Watcher) {
    if let Ok(r) = timeout(QUIET, w.next_batch()).await {
        panic!("expected no further batch, got {r:?}");
    }
}

#[tokio::test]
async fn editing_a_watched_file_gives_one_batch() {
    let (_t, root) = tempdir();
    let main = root.join("src/main.rs");
    write(&main, "fn main() {}");
    let mut w = start(WatchSettings::new([&root])).await;
    write(&main, "fn main() { println!(); }");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![main]);
    assert!(!b.rescan);
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn a_burst_longer_than_the_debounce_gives_one_batch() {
    let (_t, root) = tempdir();
    let files: Vec<PathBuf> = (0..50)
        .map(|i| root.join(format!("d{}/f{i}.rs", i % 5)))
        .collect();
    for f in &files {
        write(f, "0");
    }
    let settings = WatchSettings::new([&root]);
    assert_eq!(settings.debounce, Duration::from_millis(300));
    let mut w = start(settings).await;
    // 200 writes spread over ~0.5 s: longer than the 300 ms debounce, so an
    // age-based debouncer would split it; a quiet period must not.
    let began = Instant::now();
    for n in 0..200 {
        write(&files[n % files.len()], &n.to_string());
        tokio::time::sleep(Duration::from_micros(2500)).await;
    }
    let spent = began.elapsed();
    assert!(spent >= Duration::from_millis(450), "burst took {spent:?}");
    let b = next(&mut w).await;
    assert_eq!(b.len(), 50, "{b:?}");
    for f in &files {
        assert!(b.paths.contains(f), "{} missing", f.display());
    }
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn ignored_trees_are_not_watched_and_give_no_batch() {
    let (_t, root) = tempdir();
    write(&root.join(".gitignore"), "build/\n*.gen\n");
    for d in [
        "target/debug",
        ".git/objects",
        "node_modules/pkg",
        "build/out",
        "src",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let sentinel = root.join("src/main.rs");
    write(&sentinel, "0");
    let mut w = start(WatchSettings::new([&root])).await;

    let watched = w.watched_dirs();
    assert!(watched.contains(&root) && watched.contains(&root.join("src")));
    for d in ["target", ".git", "node_modules", "build"] {
        assert!(
            !watched.iter().any(|w| w.starts_with(root.join(d))),
            "{d} is watched: {watched:?}"
        );
    }

    write(&root.join("target/debug/app"), "bin");
    write(&root.join("target/new/x"), "x");
    write(&root.join(".git/index"), "x");
    write(&root.join("node_modules/pkg/index.js"), "x");
    write(&root.join("build/out/a.o"), "x");
    write(&root.join("src/x.gen"), "x");
    write(&root.join("src/.main.rs.swp"), "x");
    write(&root.join("src/4913"), "x");
    write(&root.join("src/main.rs~"), "x");
    write(&root.join("src/#main.rs#"), "x");
    // The positive sentinel: one watched write after the ignored ones.
    write(&sentinel, "1");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![sentinel]);
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn user_ignores_and_also_ignore() {
    let (_t, root) = tempdir();
    fs::create_dir_all(root.join("dist")).unwrap();
    let sentinel = root.join("main.go");
    write(&sentinel, "0");
    let mut settings = WatchSettings::new([&root]);
    settings.ignore = vec!["dist/**".into(), "*.log".into()];
    // `go build -o ./app` writes the worker's binary into the watched tree.
    settings.also_ignore = vec![root.join("app")];
    let mut w = start(settings).await;
    assert!(!w.watched_dirs().contains(&root.join("dist")));
    write(&root.join("app"), "binary");
    write(&root.join("dist/bundle.js"), "x");
    write(&root.join("server.log"), "x");
    write(&sentinel, "1");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![sentinel]);
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn extension_filter() {
    let (_t, root) = tempdir();
    let mut settings = WatchSettings::new([&root]);
    settings.extensions = Some(vec!["rs".into(), "toml".into()]);
    let mut w = start(settings).await;
    write(&root.join("notes.txt"), "x");
    write(&root.join("Makefile"), "x");
    fs::create_dir(root.join("sub")).unwrap();
    let rs = root.join("sub/lib.rs");
    write(&rs, "x");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![rs]);
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn new_directories_are_watched_and_removed_ones_dropped() {
    let (_t, root) = tempdir();
    let mut w = start(WatchSettings::new([&root])).await;

    // Written right after the mkdir: before or after the watch is added,
    // the file must be reported.
    let deep = root.join("a/b/c/f.rs");
    write(&deep, "x");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let b = next(&mut w).await;
        if b.paths.contains(&deep) {
            break;
        }
        assert!(Instant::now() < deadline, "f.rs never reported");
    }
    let watched = w.watched_dirs();
    assert!(watched.contains(&root.join("a/b/c")), "{watched:?}");

    let later = root.join("a/b/c/g.rs");
    write(&later, "x");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![later]);

    fs::remove_dir_all(root.join("a")).unwrap();
    let b = next(&mut w).await;
    assert!(b.paths.contains(&root.join("a")), "{b:?}");
    let watched = w.watched_dirs();
    assert!(
        !watched.iter().any(|d| d.starts_with(root.join("a"))),
        "{watched:?}"
    );

    // A directory moved in from outside is walked too.
    let (_o, outside) = tempdir();
    write(&outside.join("m/n.rs"), "x");
    fs::rename(outside.join("m"), root.join("m")).unwrap();
    let b = next(&mut w).await;
    assert!(b.paths.contains(&root.join("m/n.rs")), "{b:?}");
    assert!(w.watched_dirs().contains(&root.join("m")));
    let n2 = root.join("m/n2.rs");
    write(&n2, "x");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![n2]);
}

#[tokio::test]
async fn editor_rename_replace_gives_one_batch() {
    let (_t, root) = tempdir();
    let main = root.join("main.rs");
    write(&main, "0");
    let mut w = start(WatchSettings::new([&root])).await;
    // vim's save dance: probe file, backup by rename, write anew, drop backup.
    write(&root.join("4913"), "");
    fs::remove_file(root.join("4913")).unwrap();
    fs::rename(&main, root.join("main.rs~")).unwrap();
    write(&main, "1");
    fs::remove_file(root.join("main.rs~")).unwrap();
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![main.clone()]);
    assert_quiet(&mut w).await;
    // The atomic save of most other editors: temp file renamed over it.
    write(&root.join("main.rs.tmp"), "2");
    fs::rename(root.join("main.rs.tmp"), &main).unwrap();
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![main]);
    assert_quiet(&mut w).await;
}

#[tokio::test]
async fn a_watched_file_replaced_by_rename_gives_one_batch() {
    let (_t, dir) = tempdir();
    let conf = dir.join("app.yaml");
    write(&conf, "a: 1");
    let mut w = start(WatchSettings::new([&conf])).await;
    // Neighbours of a watched file do not count.
    write(&dir.join("other.yaml"), "x");
    write(&dir.join(".app.yaml.new"), "a: 2");
    fs::rename(dir.join(".app.yaml.new"), &conf).unwrap();
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![conf.clone()]);
    assert_quiet(&mut w).await;
    // And a second replacement is seen too (the watch did not follow the old inode).
    write(&dir.join(".app.yaml.new"), "a: 3");
    fs::rename(dir.join(".app.yaml.new"), &conf).unwrap();
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![conf]);
    assert_quiet(&mut w).await;
}

/// Lays out a ConfigMap volume the way the kubelet does (AtomicWriter).
fn configmap_version(dir: &Path, version: &str, content: &str) {
    let ts = dir.join(format!("..2026_11_25_{version}"));
    write(&ts.join("app.yaml"), content);
    // `..data_tmp` -> new timestamped dir, renamed over `..data` atomically.
    symlink(ts.file_name().unwrap(), dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

#[tokio::test]
async fn a_configmap_symlink_swap_gives_one_batch() {
    let (_t, dir) = tempdir();
    configmap_version(&dir, "v1", "a: 1");
    symlink("..data/app.yaml", dir.join("app.yaml")).unwrap();
    let conf = dir.join("app.yaml");
    assert_eq!(fs::read_to_string(&conf).unwrap(), "a: 1");
    let mut w = start(WatchSettings::new([&conf])).await;

    for (old, new, content) in [("v1", "v2", "a: 2"), ("v2", "v3", "a: 3")] {
        configmap_version(&dir, new, content);
        fs::remove_dir_all(dir.join(format!("..2026_11_25_{old}"))).unwrap();
        assert_eq!(fs::read_to_string(&conf).unwrap(), content);
        let b = next(&mut w).await;
        assert_eq!(b.paths, vec![conf.clone()], "swap to {new}");
        assert_quiet(&mut w).await;
        // The watch moved on to the directory the file now resolves to.
        let watched = w.watched_dirs();
        assert!(
            watched.contains(&dir.join(format!("..2026_11_25_{new}"))),
            "{watched:?}"
        );
        assert!(
            !watched.contains(&dir.join(format!("..2026_11_25_{old}"))),
            "{watched:?}"
        );
    }
}

#[tokio::test]
async fn a_missing_path_is_an_error() {
    let (_t, root) = tempdir();
    let err = Watcher::start(WatchSettings::new([root.join("nope")]))
        .await
        .expect_err("must fail");
    assert!(matches!(err, WatchError::Path { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = Watcher::start(WatchSettings::default())
        .await
        .expect_err("must fail");
    assert!(matches!(err, WatchError::NoPaths));
}

#[tokio::test]
async fn a_gitignore_change_updates_the_watched_set() {
    let (_t, root) = tempdir();
    write(&root.join(".gitignore"), "gen/\n");
    fs::create_dir_all(root.join("gen")).unwrap();
    let mut w = start(WatchSettings::new([&root])).await;
    assert!(!w.watched_dirs().contains(&root.join("gen")));
    write(&root.join(".gitignore"), "");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![root.join(".gitignore")]);
    assert!(w.watched_dirs().contains(&root.join("gen")));
    let f = root.join("gen/x.rs");
    write(&f, "x");
    let b = next(&mut w).await;
    assert_eq!(b.paths, vec![f]);
}
