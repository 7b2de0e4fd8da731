//! File watching for the dev loop (`baton run --watch`, docs/dev-loop.md):
//! which paths changed, reported once per burst.
//!
//! The choices below each avoid a way file watchers commonly go wrong:
//!
//! - inotify watches directories. notify's recursive mode cannot leave out
//!   ignored subtrees (it would put a watch on every directory of `target/`
//!   and `node_modules/`), so the tree is walked with the `ignore` crate and
//!   every admitted directory gets its own non-recursive watch. New
//!   directories are walked and watched as they appear (and what is already
//!   in them counts as changed, since it may have been written before the
//!   watch existed); watches of removed or moved-away directories are
//!   dropped.
//! - A watched *file* is watched through its parent directory (and the
//!   directory of its resolved target) and re-checked by path on every event
//!   there: editors and Kubernetes ConfigMaps replace files by rename or by
//!   an atomic symlink swap, and a watch on the file itself would follow the
//!   old inode.
//! - The debounce is a quiet period: a batch is emitted once no relevant
//!   event came for `debounce`, however long the burst lasted (an age-based
//!   debouncer splits a long `git checkout` into several batches).
//! - Hitting an inotify limit is an error that names the limit and how to
//!   raise it, never a silently smaller watch set.
//!
//! All the blocking work (walking, adding watches, stat) runs on one
//! dedicated thread (`engine`, its watch set in `engine/watchset`); the
//! async side, [`Watcher`], only waits for batches, so it needs tokio's
//! `sync` types but no particular runtime. `filter` decides what is ignored
//! and what counts, `limits` names inotify's limits when one is hit.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

mod engine;
mod filter;
mod limits;
mod watcher;

pub use self::watcher::Watcher;

/// The default quiet period: a batch is emitted once no relevant event came for this long.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);

/// Patterns ignored in every watched tree, in addition to `.gitignore` and `--ignore`.
///
/// A trailing `/` means "directories only". They are matched against the
/// name of each path below a watched root, never against the root itself or
/// what lies above it (so `--watch target/config` still works).
pub const DEFAULT_IGNORES: &[&str] = &[
    // Version control, build output and dependency trees: huge, and written
    // by the build itself (a watch there would make a build trigger itself).
    ".git/",
    ".hg/",
    ".svn/",
    ".jj/",
    "target/",
    "node_modules/",
    // Python writes bytecode next to the sources when the worker imports
    // them: without this every start of a Python worker would trigger a reload.
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    // IDE state, rewritten on focus changes.
    ".idea/",
    // Editor swap, backup, lock and temporary files of the "save dance".
    "*.swp",
    "*.swo",
    "*.swn",
    "*.swx",
    "*~",
    ".#*",
    "#*#",
    "4913",
    "*.tmp",
    "*.kate-swp",
    ".goutputstream-*",
    "*___jb_tmp___",
    "*___jb_old___",
    ".DS_Store",
];

/// What to watch and what to leave out.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Directories (watched recursively) and files (watched through their directory).
    pub paths: Vec<PathBuf>,
    /// Extra ignore globs (`--ignore`). A glob without `/` matches the name
    /// of any file or directory in a watched tree (`*.log`, `dist`); a trailing
    /// `/` restricts it to directories; a glob with a `/` matches the path
    /// relative to the watched root (`dist/**`, `./gen`) or the absolute path.
    pub ignore: Vec<String>,
    /// If set, only files with one of these extensions (`rs`, `.toml`;
    /// case-insensitive) count as changes. Explicitly watched files always count.
    pub extensions: Option<Vec<String>>,
    /// The quiet period (default [`DEFAULT_DEBOUNCE`]).
    pub debounce: Duration,
    /// Paths never counted or watched into, such as the worker's own binary
    /// and the build's output; a directory here covers everything below it.
    pub also_ignore: Vec<PathBuf>,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            ignore: Vec::new(),
            extensions: None,
            debounce: DEFAULT_DEBOUNCE,
            also_ignore: Vec::new(),
        }
    }
}

impl WatchSettings {
    /// Settings watching `paths`, with the defaults for everything else.
    pub fn new<P: Into<PathBuf>>(paths: impl IntoIterator<Item = P>) -> Self {
        Self {
            paths: paths.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// What changed during one burst of events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeBatch {
    /// The changed paths (absolute; a watched file under the name it was
    /// given), deduplicated, in the order they first changed.
    pub paths: Vec<PathBuf>,
    /// The kernel's event queue overflowed: the trees were rescanned and
    /// `paths` holds the watched roots instead of what exactly changed.
    pub rescan: bool,
}

impl ChangeBatch {
    /// How many distinct paths changed.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether no path is recorded (never true for an emitted batch).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// A one-line summary for logs: the first `max` paths (relative to the
    /// current directory when under it) and how many more.
    pub fn summary(&self, max: usize) -> String {
        let cwd = std::env::current_dir().ok();
        let shown: Vec<String> = self
            .paths
            .iter()
            .take(max)
            .map(|p| {
                let rel = cwd.as_deref().and_then(|c| p.strip_prefix(c).ok());
                match rel {
                    Some(r) if !r.as_os_str().is_empty() => r.display().to_string(),
                    _ => p.display().to_string(),
                }
            })
            .collect();
        let mut s = shown.join(", ");
        if self.paths.len() > shown.len() {
            s.push_str(&format!(" and {} more", self.paths.len() - shown.len()));
        }
        if self.rescan {
            s.push_str(" (event queue overflowed, rescanned)");
        }
        s
    }

    /// Adds `other`'s paths that are not in `self` yet (a batch the consumer
    /// has not taken yet absorbs the next one).
    fn merge(&mut self, other: ChangeBatch) {
        let mut seen: HashSet<PathBuf> = self.paths.iter().cloned().collect();
        for p in other.paths {
            if seen.insert(p.clone()) {
                self.paths.push(p);
            }
        }
        self.rescan |= other.rescan;
    }
}

impl fmt::Display for ChangeBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary(3))
    }
}

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `--watch` was given no path.
    #[error("nothing to watch: no path given")]
    NoPaths,
    /// A path to watch does not exist or cannot be read.
    #[error("cannot watch {}: {source}", path.display())]
    Path { path: PathBuf, source: io::Error },
    /// An `--ignore` glob does not parse.
    #[error("invalid ignore glob {glob:?}: {source}")]
    Glob {
        glob: String,
        source: globset::Error,
    },
    /// inotify's per-user watch limit (`fs.inotify.max_user_watches`) is reached.
    #[error("{}", limits::watch_limit_message(path, *current))]
    WatchLimit {
        /// The directory whose watch failed.
        path: PathBuf,
        /// The limit's current value, if readable.
        current: Option<u64>,
    },
    /// inotify's per-user instance limit (`fs.inotify.max_user_instances`) or
    /// the open-file limit is reached.
    #[error("{}", limits::instance_limit_message(*current))]
    InstanceLimit {
        /// The limit's current value, if readable.
        current: Option<u64>,
    },
    /// Any other error of the notification backend.
    #[error("file watcher: {0}")]
    Notify(#[from] notify::Error),
    /// The watcher's thread is gone (it stopped after a fatal error or panicked).
    #[error("the file watcher stopped")]
    Stopped,
}

/// Locks a mutex even if a thread panicked while holding it: the data are
/// plain collections that stay consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_summary() {
        let b = ChangeBatch {
            paths: (0..5).map(|i| PathBuf::from(format!("/x/f{i}"))).collect(),
            rescan: false,
        };
        assert_eq!(b.summary(2), "/x/f0, /x/f1 and 3 more");
        let mut a = ChangeBatch {
            paths: vec![PathBuf::from("/x/f4"), PathBuf::from("/y")],
            rescan: false,
        };
        a.merge(b);
        assert_eq!(a.len(), 6);
    }
}
