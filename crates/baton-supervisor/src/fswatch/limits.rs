//! inotify's two per-user limits, and errors that name them and say how
//! to raise them.

use std::fs;
use std::path::Path;

use super::WatchError;

const MAX_USER_WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";
const MAX_USER_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

fn read_limit(file: &str) -> Option<u64> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn show_limit(current: Option<u64>) -> String {
    current.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

/// The message for ENOSPC from `inotify_add_watch`.
pub(super) fn watch_limit_message(path: &Path, current: Option<u64>) -> String {
    format!(
        "cannot watch {}: the inotify watch limit is reached (fs.inotify.max_user_watches = {}, \
         shared by all processes of this user, one watch per directory); raise it with \
         `sudo sysctl fs.inotify.max_user_watches=524288` (persist it in /etc/sysctl.d/), \
         or watch fewer directories (--ignore, .gitignore)",
        path.display(),
        show_limit(current)
    )
}

/// The message for EMFILE from `inotify_init`.
pub(super) fn instance_limit_message(current: Option<u64>) -> String {
    format!(
        "cannot start a file watcher: the inotify instance limit is reached \
         (fs.inotify.max_user_instances = {}) or this process has too many open files; raise it \
         with `sudo sysctl fs.inotify.max_user_instances=1024` (persist it in /etc/sysctl.d/) \
         or raise `ulimit -n`",
        show_limit(current)
    )
}

/// Turns notify's error for adding a watch on `path` into ours, naming the
/// inotify limits when they are the cause.
pub(super) fn map_watch_error(err: notify::Error, path: &Path) -> WatchError {
    // Errors reported by notify's thread carry their own path.
    let path = match err.paths.first() {
        Some(p) if path.as_os_str().is_empty() => p.clone(),
        _ => path.to_owned(),
    };
    let path = path.as_path();
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit {
            path: path.to_owned(),
            current: read_limit(MAX_USER_WATCHES),
        },
        notify::ErrorKind::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            WatchError::WatchLimit {
                path: path.to_owned(),
                current: read_limit(MAX_USER_WATCHES),
            }
        }
        notify::ErrorKind::Io(e) if e.raw_os_error() == Some(libc::EMFILE) => {
            WatchError::InstanceLimit {
                current: read_limit(MAX_USER_INSTANCES),
            }
        }
        _ => WatchError::Notify(err),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn watch_limit_message_names_the_limit_and_the_fix() {
        let e = WatchError::WatchLimit {
            path: PathBuf::from("/src/app"),
            current: Some(8192),
        };
        let msg = e.to_string();
        assert!(msg.contains("/src/app"), "{msg}");
        assert!(msg.contains("fs.inotify.max_user_watches = 8192"), "{msg}");
        assert!(
            msg.contains("sysctl fs.inotify.max_user_watches=524288"),
            "{msg}"
        );
        let e = WatchError::InstanceLimit { current: None };
        let msg = e.to_string();
        assert!(
            msg.contains("fs.inotify.max_user_instances = unknown"),
            "{msg}"
        );
        assert!(
            msg.contains("sysctl fs.inotify.max_user_instances="),
            "{msg}"
        );
    }

    #[test]
    fn notify_limit_errors_are_mapped() {
        let e = map_watch_error(
            notify::Error::new(notify::ErrorKind::MaxFilesWatch),
            Path::new("/x"),
        );
        assert!(matches!(e, WatchError::WatchLimit { ref path, .. } if path == Path::new("/x")));
        let e = map_watch_error(
            notify::Error::io(io::Error::from_raw_os_error(libc::ENOSPC)),
            Path::new("/x"),
        );
        assert!(matches!(e, WatchError::WatchLimit { .. }));
        let e = map_watch_error(
            notify::Error::io(io::Error::from_raw_os_error(libc::EMFILE)),
            Path::new("/x"),
        );
        assert!(matches!(e, WatchError::InstanceLimit { .. }));
        let e = map_watch_error(notify::Error::generic("x"), Path::new("/x"));
        assert!(matches!(e, WatchError::Notify(_)));
    }

    #[test]
    fn the_current_limit_is_read_from_proc() {
        // Present on every Linux with inotify.
        assert!(read_limit(MAX_USER_WATCHES).is_some_and(|v| v > 0));
    }
}
