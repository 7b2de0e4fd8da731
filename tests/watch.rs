//! The dev loop: a saved file rebuilds and reloads without failing a
//! request; bursts, ignored files and the build's own output cause no
//! extra builds; a failed build keeps the old code serving.

use std::path::Path;
use std::process::Command;

use baton_e2e::{
    Baton, Traffic, alive, assert_no_failures, baton_bin, eventually, exclusive, field,
    http_request, test_worker_bin,
};
use baton_loadgen::Mode;
use nix::sys::signal::Signal;

/// A project directory: `src/answer.txt` is "the code"; the build copies
/// it to `target/answer.txt` (ignored by default), which the worker
/// serves at `GET /answer`.
fn project(answer: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/answer.txt"), answer).unwrap();
    dir
}

/// The usual build: fails when the answer says "broken", sleeps when it
/// says "slow", else copies the answer into `target/`.
const BUILD: &str = "if grep -q broken src/answer.txt; then echo broken >&2; exit 3; fi; \
     if grep -q slow src/answer.txt; then echo sleeping; sleep 30; fi; \
     mkdir -p target && cp src/answer.txt target/answer.txt";

/// baton on `dir` with the usual build; `debounce` is the quiet period.
fn start(dir: &Path, debounce: &str) -> Baton {
    let mut command = dev_loop(dir, debounce, BUILD);
    command
        .arg("--")
        .arg(test_worker_bin())
        .args(["--answer-file", "target/answer.txt"]);
    Baton::spawn(command)
}

/// `baton run` in `dir`, watching `src` with `build` and the quiet period
/// `debounce`, no least interval; the caller adds `--` and the worker.
fn dev_loop(dir: &Path, debounce: &str, build: &str) -> Command {
    let mut command = Command::new(baton_bin());
    command.current_dir(dir).args([
        "run",
        "--listen",
        "http=127.0.0.1:0",
        "--ready",
        "notify",
        "--watch",
        "src",
        "--debounce",
        debounce,
        "--min-interval",
        "0",
        "--build",
        build,
    ]);
    command
}

/// What `generation`, the newest, serves at `GET /answer`. The one before
/// it accepts on the shared socket until it has taken its stop signal,
/// which on a busy machine can be well after the `ready` line: wait for it
/// to exit first, so that the request can only reach `generation`.
fn answer(baton: &Baton, generation: u64) -> String {
    if generation > 1 {
        baton.wait_for(&["exited", &format!(" generation={} ", generation - 1)]);
    }
    let (status, head, body) = http_request(baton.address("http"), "GET", "/answer");
    assert_eq!(status, 200, "{body}");
    let from = head
        .lines()
        .find_map(|line| line.strip_prefix("x-generation: "));
    assert_eq!(from, Some(generation.to_string().as_str()), "{head}");
    body
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_saved_file_rebuilds_and_the_new_generation_serves_the_new_code() {
    let _serial = exclusive();
    let dir = project("v1");
    let mut baton = start(dir.path(), "500ms");
    baton.wait_ready(1);
    assert_eq!(answer(&baton, 1), "v1");
    write(dir.path(), "src/answer.txt", "v2");
    baton.wait_ready(2);
    assert_eq!(answer(&baton, 2), "v2");
    let changed = baton.wait_for(&["changed: src/answer.txt"]);
    assert!(changed.contains("changes=1"), "{changed}");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn a_burst_of_writes_gives_one_build() {
    let _serial = exclusive();
    let dir = project("v1");
    // A quiet period well above any pause of this writer on a busy
    // machine, so that the burst cannot split: the point is that a burst
    // is one build, not how short the period can be.
    let mut baton = start(dir.path(), "1s");
    baton.wait_ready(1);
    // 200 writes to 50 files within half a second.
    let began = std::time::Instant::now();
    for round in 0..4 {
        for file in 0..50 {
            write(dir.path(), &format!("src/f{file}.txt"), &format!("{round}"));
        }
    }
    let took = began.elapsed();
    baton.wait_ready(2);
    // A positive sentinel: the next write gives exactly the next build.
    write(dir.path(), "src/answer.txt", "v3");
    baton.wait_ready(3);
    assert_eq!(answer(&baton, 3), "v3");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_eq!(
        baton.count(&["build started"]),
        3,
        "the first build, one for the burst, one for the sentinel:\n{}",
        baton.output()
    );
    let burst = baton.wait_for(&["changed:"]);
    assert_eq!(
        field(&burst, "changes"),
        Some("50"),
        "{burst} (the writes took {took:?})"
    );
}

#[test]
fn ignored_files_and_the_builds_own_output_trigger_nothing() {
    let _serial = exclusive();
    let dir = project("v1");
    std::fs::write(dir.path().join(".gitignore"), "generated/\n").unwrap();
    // A repository whose top `.gitignore` applies to `src` (a `src/.git`
    // would make `src` a repository of its own).
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    for ignored in ["src/target", "src/node_modules", "src/generated"] {
        std::fs::create_dir_all(dir.path().join(ignored)).unwrap();
    }
    // The build also writes into the watched tree: the worker's own
    // binary (like `go build -o ./src/app`), which must not trigger it.
    // Replaced by rename, as linkers do (the running binary is busy).
    let build = format!(
        "{BUILD} && cp {} target/app.new && mv target/app.new src/app",
        test_worker_bin().display()
    );
    let mut command = dev_loop(dir.path(), "500ms", &build);
    command.args(["--", "src/app", "--answer-file", "target/answer.txt"]);
    let mut baton = Baton::spawn(command);
    baton.wait_ready(1);
    for (file, text) in [
        ("src/target/x.o", "1"),
        ("src/node_modules/m.js", "1"),
        ("src/generated/g.rs", "1"),
        ("src/.answer.txt.swp", "1"),
        ("src/answer.txt~", "1"),
    ] {
        write(dir.path(), file, text);
    }
    // The sentinel: one watched write, one build, and its batch holds
    // nothing but the sentinel.
    write(dir.path(), "src/answer.txt", "v2");
    baton.wait_ready(2);
    assert_eq!(answer(&baton, 2), "v2");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_eq!(baton.count(&["changed:"]), 1, "{}", baton.output());
    let changed = baton.wait_for(&["changed:"]);
    assert!(
        changed.contains("changed: src/answer.txt changes=1"),
        "{changed}"
    );
    assert_eq!(baton.count(&["build started"]), 2, "{}", baton.output());
}

#[test]
fn a_failed_build_keeps_the_old_code_serving_under_load() {
    let _serial = exclusive();
    let dir = project("v1");
    let mut baton = start(dir.path(), "500ms");
    baton.wait_ready(1);
    let traffic = Traffic::start(baton.address("http"), Mode::KeepAlive, 4);
    traffic.serve(50);
    write(dir.path(), "src/answer.txt", "broken");
    let failed = baton.wait_for(&["build failed"]);
    assert!(failed.contains("exit code 3"), "{failed}");
    assert!(failed.contains("generation 1 keeps serving"), "{failed}");
    baton.wait_for(&["build | broken"]);
    traffic.serve(50);
    assert_eq!(answer(&baton, 1), "v1");
    // Fixed: the next change builds and reloads.
    write(dir.path(), "src/answer.txt", "v2");
    baton.wait_ready(2);
    traffic.serve(50);
    let report = traffic.finish();
    assert_no_failures(&report);
    assert_eq!(answer(&baton, 2), "v2");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}

#[test]
fn a_change_during_a_slow_build_cancels_it() {
    let _serial = exclusive();
    let dir = project("v1");
    let mut baton = start(dir.path(), "500ms");
    baton.wait_ready(1);
    write(dir.path(), "src/answer.txt", "slow");
    let slow = baton.wait_for_nth(2, &["build started"]);
    let slow_pid: i32 = field(&slow, "pid").unwrap().parse().unwrap();
    baton.wait_for(&["build | sleeping"]);
    write(dir.path(), "src/answer.txt", "v3");
    baton.wait_for(&["build cancelled"]);
    baton.wait_ready(2);
    assert_eq!(answer(&baton, 2), "v3");
    assert!(
        eventually(|| !alive(slow_pid)),
        "the cancelled build {slow_pid} is gone"
    );
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_eq!(baton.count(&["build started"]), 3, "{}", baton.output());
}

/// How Kubernetes updates a mounted ConfigMap: `app.yaml -> ..data/app.yaml`,
/// and `..data` is switched atomically to a new directory.
#[test]
fn a_configmap_style_symlink_swap_reloads_once() {
    use std::os::unix::fs::symlink;
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(config.join("..v1")).unwrap();
    std::fs::write(config.join("..v1/app.yaml"), "a: 1").unwrap();
    symlink("..v1", config.join("..data")).unwrap();
    symlink("..data/app.yaml", config.join("app.yaml")).unwrap();
    let swap = |version: &str| {
        std::fs::create_dir_all(config.join(version)).unwrap();
        std::fs::write(config.join(version).join("app.yaml"), version).unwrap();
        symlink(version, config.join("..data_tmp")).unwrap();
        std::fs::rename(config.join("..data_tmp"), config.join("..data")).unwrap();
    };
    let mut command = Command::new(baton_bin());
    command.current_dir(dir.path()).args([
        "run",
        "--listen",
        "http=127.0.0.1:0",
        "--ready",
        "notify",
        "--watch",
        "config/app.yaml",
        "--debounce",
        "500ms",
        "--min-interval",
        "0",
        "--",
    ]);
    command.arg(test_worker_bin());
    let mut baton = Baton::spawn(command);
    baton.wait_ready(1);
    swap("..v2");
    baton.wait_ready(2);
    // The sentinel: the next swap is exactly the next reload.
    swap("..v3");
    baton.wait_ready(3);
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
    assert_eq!(
        baton.count(&["trigger=watch result=ok"]),
        2,
        "{}",
        baton.output()
    );
}

/// Code that does not start yet is the dev loop's daily case: baton keeps
/// trying (backing off) past the start limit, which holds under `--watch`
/// only when given, and the saved fix starts a generation that serves.
#[test]
fn code_that_never_started_waits_for_its_fix_beyond_the_start_limit() {
    let _serial = exclusive();
    let dir = project("crash");
    let worker = format!(
        "grep -q crash src/answer.txt && exit 1; exec {} --answer-file target/answer.txt",
        test_worker_bin().display()
    );
    let mut command = dev_loop(dir.path(), "100ms", BUILD);
    command.args(["--", "sh", "-c", &worker]);
    let mut baton = Baton::spawn(command);
    // Beyond the default limit of 5 failed starts in a row (backing off:
    // the 7th comes about 6 s after the first).
    baton.wait_for_nth(7, &["start failed"]);
    assert_eq!(baton.count(&["giving up"]), 0, "{}", baton.output());
    write(dir.path(), "src/answer.txt", "fixed");
    let line = baton.wait_for(&["ready generation="]);
    let generation: u64 = field(&line, "generation").unwrap().parse().unwrap();
    assert_eq!(answer(&baton, generation), "fixed");
    baton.signal(Signal::SIGTERM);
    assert!(baton.wait_exit().success(), "{}", baton.output());
}
