use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn refusal(result: Result<impl std::fmt::Debug, RuntimeDirError>) -> String {
    match result {
        Err(error @ RuntimeDirError::Unsafe { .. }) => error.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn its_own_directory_is_made_0700_with_its_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("missing/baton");
    let dir = Dir::open(&base, Rule::Own, true).unwrap();
    assert_eq!(mode(&base), 0o700);
    assert_eq!(dir.owner(), nix::unistd::geteuid().as_raw());
    // And opened as it is the next time.
    Dir::open(&base, Rule::Own, false).unwrap();
}

#[test]
fn a_symlink_in_its_place_is_refused_and_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let base = tmp.path().join("baton");
    std::os::unix::fs::symlink(&elsewhere, &base).unwrap();
    let error = refusal(Dir::open(&base, Rule::Own, true));
    assert!(error.contains("symlink"), "{error}");
    assert!(error.contains(&base.display().to_string()), "{error}");
    assert!(RuntimeDir::claim(&base, "app").is_err());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn a_file_in_its_place_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("baton");
    std::fs::write(&base, "mine").unwrap();
    let error = refusal(Dir::open(&base, Rule::Own, true));
    assert!(error.contains("not a directory"), "{error}");
    assert_eq!(std::fs::read_to_string(&base).unwrap(), "mine");
}

#[test]
fn a_directory_others_may_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("baton");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
    let error = refusal(Dir::open(&base, Rule::Own, true));
    assert!(error.contains("mode 0777"), "{error}");
    // Readable by others is no danger (RuntimeDirectoryMode=0755).
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    Dir::open(&base, Rule::Own, true).unwrap();
}

#[test]
fn a_holder_of_sockets_may_be_shared_only_when_sticky() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let error = refusal(Dir::open(&shared, Rule::Holder, false));
    assert!(error.contains("not sticky"), "{error}");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    Dir::open(&shared, Rule::Holder, false).unwrap();
}

#[test]
fn another_users_directory_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: giving a directory to another uid needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("baton");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&base, Some(65534), Some(65534)).unwrap();
    let error = refusal(Dir::open(&base, Rule::Own, true));
    assert!(error.contains("owned by uid 65534"), "{error}");
}

#[test]
fn a_claim_removes_what_dead_batons_left_and_keeps_what_live_ones_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("baton");
    let dead = base.join("app.1.d");
    std::fs::create_dir_all(dead.join("inner")).unwrap();
    std::fs::write(dead.join("gen-1.sock"), "").unwrap();
    let live = RuntimeDir::claim(&base, "other").unwrap();
    let live_path = live.path().to_owned();
    assert!(!dead.exists(), "a directory whose lock is free is removed");
    let mine = RuntimeDir::claim(&base, "app").unwrap();
    assert!(live_path.is_dir(), "a directory a live baton holds is kept");
    assert_eq!(mode(mine.path()), 0o700);
    let name = mine
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(name, format!("app.{}.d", std::process::id()));
    let path = mine.path().to_owned();
    drop(mine);
    assert!(!path.exists(), "removed when it drops");
    drop(live);
}

#[test]
fn a_vanished_directory_is_made_again_even_with_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("baton");
    let mut dir = RuntimeDir::claim(&base, "app").unwrap();
    assert!(!dir.repair().unwrap(), "nothing to repair");
    std::fs::remove_dir_all(dir.path()).unwrap();
    assert!(!dir.intact());
    assert!(dir.repair().unwrap());
    assert!(dir.intact());
    std::fs::remove_dir_all(&base).unwrap();
    assert!(dir.repair().unwrap());
    assert!(dir.intact());
    assert_eq!(mode(&base), 0o700);

    // What baton cannot repair without deleting someone's file, it refuses.
    let path = dir.path().to_owned();
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::write(&path, "not baton's").unwrap();
    let error = refusal(dir.repair());
    assert!(error.contains("not a directory"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not baton's");
}

#[test]
fn entries_are_reached_through_the_checked_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Dir::open(tmp.path(), Rule::Holder, false).unwrap();
    assert_eq!(dir.kind("x.sock").unwrap(), None);
    let listener = std::os::unix::net::UnixListener::bind(dir.entry("x.sock")).unwrap();
    assert!(tmp.path().join("x.sock").exists());
    assert_eq!(dir.kind("x.sock").unwrap(), Some(Kind::Socket));
    dir.chmod("x.sock", 0o600).unwrap();
    assert_eq!(mode(&tmp.path().join("x.sock")), 0o600);
    drop(listener);
    dir.remove("x.sock").unwrap();
    assert_eq!(dir.kind("x.sock").unwrap(), None);
}

#[test]
fn for_another_users_workers_both_directories_become_0711_and_stay_so() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("baton");
    let mut dir = RuntimeDir::claim(&base, "app").unwrap();
    assert_eq!((mode(&base), mode(dir.path())), (0o700, 0o700));
    dir.let_others_search().unwrap();
    assert_eq!((mode(&base), mode(dir.path())), (0o711, 0o711));
    // Still baton's own: searchable is not writable.
    Dir::open(dir.path(), Rule::Own, false).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
    assert!(dir.repair().unwrap());
    assert_eq!((mode(&base), mode(dir.path())), (0o711, 0o711));
}
