//! File watching for the dev loop (`baton run --watch`): which paths changed,
//! reported once per burst.
//!
//! How it works, and why (see "Pitfalls" in DESIGN.md):
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
//! dedicated thread; the async side only waits for batches, so the watcher
//! needs tokio's `sync` types but no particular runtime.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::event::{
    AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode,
};
use notify::{RecursiveMode, Watcher as _};

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
    Path {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// An `--ignore` glob does not parse.
    #[error("invalid ignore glob {glob:?}: {source}")]
    Glob {
        /// The glob as given.
        glob: String,
        /// The parse error.
        source: globset::Error,
    },
    /// inotify's per-user watch limit (`fs.inotify.max_user_watches`) is reached.
    #[error("{}", watch_limit_message(path, *current))]
    WatchLimit {
        /// The directory whose watch failed.
        path: PathBuf,
        /// The limit's current value, if readable.
        current: Option<u64>,
    },
    /// inotify's per-user instance limit (`fs.inotify.max_user_instances`) or
    /// the open-file limit is reached.
    #[error("{}", instance_limit_message(*current))]
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

const MAX_USER_WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";
const MAX_USER_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

fn read_limit(file: &str) -> Option<u64> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn show_limit(current: Option<u64>) -> String {
    current.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

/// The message for ENOSPC from `inotify_add_watch`.
fn watch_limit_message(path: &Path, current: Option<u64>) -> String {
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
fn instance_limit_message(current: Option<u64>) -> String {
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
fn map_watch_error(err: notify::Error, path: &Path) -> WatchError {
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

/// What the consumer has not taken yet.
#[derive(Default)]
struct Outbox {
    batch: Option<ChangeBatch>,
    errors: VecDeque<WatchError>,
    closed: bool,
}

/// State shared between the [`Watcher`] handle and its thread.
#[derive(Default)]
struct Shared {
    outbox: Mutex<Outbox>,
    /// Woken with `notify_one`, which keeps a permit when nobody waits, so
    /// a batch published between a check and the wait is not missed.
    wake: tokio::sync::Notify,
    /// The directories watched, published after each change of the set.
    watched: Mutex<Vec<PathBuf>>,
}

/// Locks a mutex even if a thread panicked while holding it: the data are
/// plain collections that stay consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the watcher thread receives.
enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// A running file watcher; dropping it stops watching.
pub struct Watcher {
    shared: Arc<Shared>,
    control: mpsc::Sender<Msg>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Walks the trees, adds the watches and returns once they are all in
    /// place: a change made after this returns is reported.
    ///
    /// Fails if a path does not exist, a glob does not parse, or an inotify
    /// limit is hit (the error says which and how to raise it).
    pub async fn start(settings: WatchSettings) -> Result<Watcher, WatchError> {
        if settings.paths.is_empty() {
            return Err(WatchError::NoPaths);
        }
        let filter = Arc::new(Filter::new(&settings)?);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        let event_tx = tx.clone();
        thread::Builder::new()
            .name("baton-watch".into())
            .spawn(move || {
                // Marks the outbox closed however the thread ends, so that
                // `next_batch` returns `Stopped` instead of waiting forever.
                let _close = CloseOnDrop(thread_shared.clone());
                match Engine::new(settings, filter, event_tx, thread_shared) {
                    Ok(engine) => {
                        if ready_tx.send(Ok(())).is_ok() {
                            engine.run(rx);
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| WatchError::Path {
                path: PathBuf::from("(watch thread)"),
                source: e,
            })?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Watcher {
                shared,
                control: tx,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WatchError::Stopped),
        }
    }

    /// Waits for the next batch of changes.
    ///
    /// Cancel-safe (use it in `tokio::select!`): nothing is lost if the
    /// future is dropped. Batches are not queued: changes made while the
    /// previous batch is still untaken are merged into it, so a slow
    /// consumer sees one batch, not a backlog. An `Err` is either a
    /// non-fatal problem met while running (an inotify limit hit while
    /// adding a new directory: that directory is not watched; the watcher
    /// goes on) or, once it is [`WatchError::Stopped`], the end.
    pub async fn next_batch(&mut self) -> Result<ChangeBatch, WatchError> {
        loop {
            if let Some(r) = self.try_next_batch() {
                return r;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Takes a batch or error that is ready now, without waiting.
    pub fn try_next_batch(&mut self) -> Option<Result<ChangeBatch, WatchError>> {
        let mut out = lock(&self.shared.outbox);
        if let Some(e) = out.errors.pop_front() {
            return Some(Err(e));
        }
        if let Some(b) = out.batch.take() {
            return Some(Ok(b));
        }
        if out.closed {
            return Some(Err(WatchError::Stopped));
        }
        None
    }

    /// The directories currently watched (for logs and tests), sorted.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        lock(&self.shared.watched).clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The thread ends at this message and drops the notify watcher,
        // which closes the inotify descriptor. Not joined: it may be in the
        // middle of a walk, and drop may run on an async worker thread.
        let _ = self.control.send(Msg::Stop);
    }
}

struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        lock(&self.0.outbox).closed = true;
        self.0.wake.notify_one();
    }
}

/// Name or path globs, split by whether they apply to directories only.
struct GlobSets {
    any: GlobSetBuilder,
    dir_only: GlobSetBuilder,
}

struct BuiltGlobs {
    any: GlobSet,
    dir_only: GlobSet,
}

impl BuiltGlobs {
    fn is_match(&self, candidate: &Path, is_dir: bool) -> bool {
        self.any.is_match(candidate) || (is_dir && self.dir_only.is_match(candidate))
    }
}

impl GlobSets {
    fn new() -> Self {
        Self {
            any: GlobSetBuilder::new(),
            dir_only: GlobSetBuilder::new(),
        }
    }

    fn add(&mut self, glob: &str, dir_only: bool) -> Result<(), WatchError> {
        let g = GlobBuilder::new(glob)
            // `*` must not cross `/`, as in gitignore and shells.
            .literal_separator(true)
            .build()
            .map_err(|source| WatchError::Glob {
                glob: glob.to_owned(),
                source,
            })?;
        if dir_only {
            self.dir_only.add(g);
        } else {
            self.any.add(g);
        }
        Ok(())
    }

    fn build(self) -> Result<BuiltGlobs, WatchError> {
        let err = |source| WatchError::Glob {
            glob: "(set)".into(),
            source,
        };
        Ok(BuiltGlobs {
            any: self.any.build().map_err(err)?,
            dir_only: self.dir_only.build().map_err(err)?,
        })
    }
}

/// Decides what is ignored and what counts as a change.
struct Filter {
    also_ignore: Vec<PathBuf>,
    /// Matched against the last component.
    names: BuiltGlobs,
    /// Matched against the path relative to the root and the absolute path.
    paths: BuiltGlobs,
    /// Lowercase, without the dot.
    extensions: Option<Vec<String>>,
    /// `.gitignore` (and `.git/info/exclude`) per directory, loaded lazily.
    gitignores: Mutex<HashMap<PathBuf, Arc<Vec<Gitignore>>>>,
    /// The user's global excludes file (`core.excludesFile`).
    global: Gitignore,
}

impl Filter {
    fn new(settings: &WatchSettings) -> Result<Self, WatchError> {
        let mut names = GlobSets::new();
        let mut paths = GlobSets::new();
        let user = settings.ignore.iter().map(String::as_str);
        for raw in DEFAULT_IGNORES.iter().copied().chain(user) {
            let (mut glob, dir_only) = match raw.strip_suffix('/') {
                Some(g) => (g, true),
                None => (raw, false),
            };
            let mut anchored = false;
            if let Some(g) = glob.strip_prefix("./") {
                glob = g;
                anchored = true;
            }
            if glob.is_empty() {
                continue;
            }
            if !anchored && !glob.contains('/') {
                names.add(glob, dir_only)?;
                continue;
            }
            let glob = glob.trim_start_matches('/').to_owned();
            let glob = if raw.starts_with('/') {
                format!("/{glob}")
            } else {
                glob
            };
            paths.add(&glob, dir_only)?;
            // `dist/**` should also cover `dist` itself, so that the
            // directory is not watched at all.
            if let Some(base) = glob.strip_suffix("/**") {
                paths.add(base, true)?;
            }
        }
        let also_ignore = settings.also_ignore.iter().map(|p| absolute(p)).collect();
        let extensions = settings.extensions.as_ref().map(|exts| {
            exts.iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect()
        });
        // A broken global excludes file must not stop the watcher; what
        // could be parsed is used.
        let (global, _err) = Gitignore::global();
        Ok(Self {
            also_ignore,
            names: names.build()?,
            paths: paths.build()?,
            extensions,
            gitignores: Mutex::new(HashMap::new()),
            global,
        })
    }

    /// Whether `path` (below `root.path`) is left out: not watched, not counted.
    fn ignored(&self, root: &Root, path: &Path, is_dir: bool) -> bool {
        if self
            .also_ignore
            .iter()
            .any(|x| path == x || path.starts_with(x))
        {
            return true;
        }
        let Ok(rel) = path.strip_prefix(&root.path) else {
            return false;
        };
        if rel.as_os_str().is_empty() {
            // The root itself was asked for explicitly.
            return false;
        }
        // Only the last component is checked: every ancestor below the root
        // was admitted when its directory was walked, or it would not be
        // watched and no event would come from it.
        if let Some(name) = path.file_name()
            && self.names.is_match(Path::new(name), is_dir)
        {
            return true;
        }
        if self.paths.is_match(rel, is_dir) || self.paths.is_match(path, is_dir) {
            return true;
        }
        self.gitignored(root, path, rel, is_dir)
    }

    /// Git's rules: the `.gitignore` closest to the path decides first, up to
    /// the repository's top (or the watched root outside a repository).
    fn gitignored(&self, root: &Root, path: &Path, rel: &Path, is_dir: bool) -> bool {
        let mut dir = path.parent();
        while let Some(d) = dir {
            for gi in self.gitignores_of(d).iter() {
                let m = gi.matched(path, is_dir);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    return false;
                }
            }
            if d == root.top {
                break;
            }
            dir = d.parent();
        }
        self.global.matched(rel, is_dir).is_ignore()
    }

    fn gitignores_of(&self, dir: &Path) -> Arc<Vec<Gitignore>> {
        if let Some(g) = lock(&self.gitignores).get(dir) {
            return g.clone();
        }
        let mut list = Vec::new();
        // `.git/info/exclude` has lower precedence than `.gitignore`.
        for file in [dir.join(".gitignore"), dir.join(".git/info/exclude")] {
            if file.is_file() {
                let mut b = GitignoreBuilder::new(dir);
                // A bad line is skipped, as git does.
                let _ = b.add(&file);
                if let Ok(gi) = b.build() {
                    list.push(gi);
                }
            }
        }
        let list = Arc::new(list);
        lock(&self.gitignores).insert(dir.to_owned(), list.clone());
        list
    }

    fn forget_gitignores(&self) {
        lock(&self.gitignores).clear();
    }

    /// Whether a change of this (not ignored) path counts, by `--ext`.
    fn counts(&self, path: &Path, is_dir: bool) -> bool {
        let Some(exts) = &self.extensions else {
            return true;
        };
        if is_dir {
            return false;
        }
        path.extension()
            .and_then(OsStr::to_str)
            .is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
    }
}

/// `path` made absolute, with symlinks resolved where it exists (event paths
/// are built from the canonical directories we watch), lexically otherwise
/// (a build output that does not exist yet).
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(p) = fs::canonicalize(parent) {
            return p.join(name);
        }
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A watched directory tree.
struct Root {
    /// Canonical.
    path: PathBuf,
    /// Where `.gitignore` lookup stops: the repository's top directory if the
    /// root is in one, else the root.
    top: PathBuf,
}

/// What identifies the file a watched path currently leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    resolved: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let meta = fs::metadata(path).ok()?;
        let resolved = fs::canonicalize(path).ok()?;
        Some(FileId {
            resolved,
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

/// A file watched by path.
struct FileTarget {
    /// Absolute, symlinks in the last component not resolved.
    path: PathBuf,
    id: Option<FileId>,
    /// The directories watched for it: its own, and its resolved target's.
    dirs: Vec<PathBuf>,
}

impl FileTarget {
    fn dirs_for(path: &Path, id: Option<&FileId>) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(p) = path.parent() {
            dirs.push(p.to_owned());
        }
        if let Some(p) = id.and_then(|id| id.resolved.parent())
            && !dirs.iter().any(|d| d == p)
        {
            dirs.push(p.to_owned());
        }
        dirs
    }
}

/// The changes collected during the current burst.
#[derive(Default)]
struct Pending {
    paths: Vec<PathBuf>,
    seen: HashSet<PathBuf>,
    rescan: bool,
}

impl Pending {
    fn add(&mut self, p: &Path) {
        if self.seen.insert(p.to_owned()) {
            self.paths.push(p.to_owned());
        }
    }
}

/// The watcher thread's state.
struct Engine {
    watcher: notify::RecommendedWatcher,
    filter: Arc<Filter>,
    debounce: Duration,
    roots: Vec<Root>,
    files: Vec<FileTarget>,
    /// Directories of the trees that are admitted (watched).
    tree_dirs: BTreeSet<PathBuf>,
    /// Directories with an inotify watch: `tree_dirs` and the file targets' dirs.
    watched: BTreeSet<PathBuf>,
    shared: Arc<Shared>,
    pending: Pending,
    /// When the last relevant event came; `None` when nothing is pending.
    last_activity: Option<Instant>,
    /// The watch set changed since it was last published.
    watched_dirty: bool,
    /// A `.gitignore` changed: re-walk the trees before the next batch.
    rescan_needed: bool,
}

impl Engine {
    fn new(
        settings: WatchSettings,
        filter: Arc<Filter>,
        tx: mpsc::Sender<Msg>,
        shared: Arc<Shared>,
    ) -> Result<Self, WatchError> {
        let watcher = notify::recommended_watcher(move |res| {
            // Runs on notify's thread: only hand the event over.
            let _ = tx.send(Msg::Fs(res));
        })
        .map_err(|e| map_watch_error(e, Path::new("")))?;
        let mut engine = Engine {
            watcher,
            filter,
            debounce: settings.debounce,
            roots: Vec::new(),
            files: Vec::new(),
            tree_dirs: BTreeSet::new(),
            watched: BTreeSet::new(),
            shared,
            pending: Pending::default(),
            last_activity: None,
            watched_dirty: false,
            rescan_needed: false,
        };
        for p in &settings.paths {
            let meta = fs::metadata(p).map_err(|source| WatchError::Path {
                path: p.clone(),
                source,
            })?;
            if meta.is_dir() {
                let path = fs::canonicalize(p).map_err(|source| WatchError::Path {
                    path: p.clone(),
                    source,
                })?;
                if engine.roots.iter().any(|r| r.path == path) {
                    continue;
                }
                let top = path
                    .ancestors()
                    .find(|a| a.join(".git").exists())
                    .unwrap_or(&path)
                    .to_owned();
                engine.roots.push(Root { path, top });
            } else {
                // The parent is resolved, the name is not: the name may be a
                // symlink whose switch is the change to notice.
                let path = match (p.parent(), p.file_name()) {
                    (Some(parent), Some(name)) => {
                        let parent = if parent.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            parent
                        };
                        fs::canonicalize(parent)
                            .map_err(|source| WatchError::Path {
                                path: p.clone(),
                                source,
                            })?
                            .join(name)
                    }
                    _ => absolute(p),
                };
                let id = FileId::of(&path);
                let dirs = FileTarget::dirs_for(&path, id.as_ref());
                engine.files.push(FileTarget { path, id, dirs });
            }
        }
        for i in 0..engine.roots.len() {
            let root = engine.roots[i].path.clone();
            engine.add_tree(&root, true, None)?;
        }
        let file_dirs: Vec<PathBuf> = engine.files.iter().flat_map(|f| f.dirs.clone()).collect();
        for d in file_dirs {
            engine.sync_watch(&d).map_err(|e| match e {
                WatchError::Notify(n) => WatchError::Path {
                    path: d.clone(),
                    source: io::Error::other(n),
                },
                e => e,
            })?;
        }
        engine.publish_watched();
        tracing::info!(
            directories = engine.watched.len(),
            roots = engine.roots.len(),
            files = engine.files.len(),
            "watching for changes"
        );
        Ok(engine)
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let msg = match self.last_activity {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(at) => {
                    let wait = (at + self.debounce).saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        Err(mpsc::RecvTimeoutError::Timeout)
                    } else {
                        rx.recv_timeout(wait)
                    }
                }
            };
            match msg {
                Ok(Msg::Fs(Ok(event))) => self.handle_event(event),
                Ok(Msg::Fs(Err(err))) => self.handle_error(err),
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => self.flush(),
            }
        }
    }

    /// The quiet period is over: settle the watch set and hand the batch over.
    fn flush(&mut self) {
        self.last_activity = None;
        if self.rescan_needed {
            self.rescan_needed = false;
            self.rescan();
        }
        if self.watched_dirty {
            self.publish_watched();
        }
        if self.pending.paths.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let batch = ChangeBatch {
            paths: pending.paths,
            rescan: pending.rescan,
        };
        tracing::debug!(changes = batch.len(), "changes: {batch}");
        {
            let mut out = lock(&self.shared.outbox);
            match &mut out.batch {
                Some(b) => b.merge(batch),
                None => out.batch = Some(batch),
            }
        }
        self.shared.wake.notify_one();
    }

    fn publish_watched(&mut self) {
        self.watched_dirty = false;
        *lock(&self.shared.watched) = self.watched.iter().cloned().collect();
    }

    fn emit_error(&mut self, err: WatchError) {
        tracing::warn!("{err}");
        lock(&self.shared.outbox).errors.push_back(err);
        self.shared.wake.notify_one();
    }

    fn activity(&mut self) {
        self.last_activity = Some(Instant::now());
    }

    fn handle_error(&mut self, err: notify::Error) {
        match map_watch_error(err, Path::new("")) {
            e @ (WatchError::WatchLimit { .. } | WatchError::InstanceLimit { .. }) => {
                self.emit_error(e)
            }
            e => tracing::warn!("{e}"),
        }
    }

    fn handle_event(&mut self, event: notify::Event) {
        if event.need_rescan() {
            // The kernel dropped events: what changed is unknown, and new
            // directories may have been missed.
            tracing::warn!("inotify event queue overflowed; rescanning the watched trees");
            self.rescan();
            self.pending.rescan = true;
            let roots: Vec<PathBuf> = self.roots.iter().map(|r| r.path.clone()).collect();
            for r in roots.iter().chain(self.files.iter().map(|f| &f.path)) {
                self.pending.add(r);
            }
            self.activity();
            return;
        }
        let kind = event.kind;
        match kind {
            // Reads (a build opening the sources, our own walks) change nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            // notify also sends the From and To halves separately.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => return,
            _ => {}
        }
        let gone = matches!(
            kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
        );
        for path in &event.paths {
            self.handle_path(path, kind, gone);
        }
    }

    fn handle_path(&mut self, path: &Path, kind: EventKind, gone: bool) {
        // A watched directory removed or moved away: its watches go (the
        // kernel or notify already dropped most of them; a moved directory's
        // watch would report under its old path).
        let was_dir = self.tree_dirs.contains(path);
        if gone && self.has_tree_under(path) {
            self.forget_tree(path);
            if self.roots.iter().any(|r| r.path == path) {
                tracing::warn!(
                    "watched directory {} was removed or moved; it is no longer watched",
                    path.display()
                );
                self.pending.add(path);
                self.activity();
            }
        }
        let parent = path.parent();
        if parent.is_some_and(|d| self.tree_dirs.contains(d)) {
            self.tree_change(path, kind, gone, was_dir);
        }
        self.file_change(path, parent);
    }

    /// An event in a watched tree directory.
    fn tree_change(&mut self, path: &Path, kind: EventKind, gone: bool, was_dir: bool) {
        let Some(root_idx) = self.root_of(path) else {
            return;
        };
        let is_dir = match kind {
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => {
                Some(true)
            }
            EventKind::Create(CreateKind::File) | EventKind::Remove(RemoveKind::File) => {
                Some(false)
            }
            _ if was_dir => Some(true),
            // Moved away and never watched: a file, or an ignored directory.
            _ if gone => None,
            _ => Some(fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())),
        };
        let root = &self.roots[root_idx];
        let ignored = match is_dir {
            Some(d) => self.filter.ignored(root, path, d),
            // `mv target target.old` must not count: when the type is
            // unknown, matching either way ignores it.
            None => self.filter.ignored(root, path, true) || self.filter.ignored(root, path, false),
        };
        if ignored {
            return;
        }
        let is_dir = is_dir.unwrap_or(false);
        if path.file_name() == Some(OsStr::new(".gitignore")) {
            // The rules changed: directories may now be in or out.
            self.filter.forget_gitignores();
            self.rescan_needed = true;
            self.activity();
        }
        if !gone && is_dir && !self.tree_dirs.contains(path) {
            let mut found = Vec::new();
            let root = self.roots[root_idx].path.clone();
            match self.add_tree_in(path, &root, false, Some(&mut found)) {
                Ok(()) => {}
                Err(e) => self.emit_error(e),
            }
            for f in found {
                if self.filter.counts(&f, false) {
                    self.pending.add(&f);
                }
            }
            self.activity();
        }
        if self.filter.counts(path, is_dir) {
            self.pending.add(path);
            self.activity();
        }
    }

    /// Re-checks the watched files that live (or resolve) in `parent`.
    fn file_change(&mut self, path: &Path, parent: Option<&Path>) {
        let mut dirs_changed = false;
        let mut changed = Vec::new();
        for f in &mut self.files {
            let direct = path == f.path || f.id.as_ref().is_some_and(|id| id.resolved == path);
            let in_dir = parent.is_some_and(|d| f.dirs.iter().any(|x| x == d));
            if !direct && !in_dir {
                continue;
            }
            let id = FileId::of(&f.path);
            // An event naming the file itself counts even if the identity
            // looks the same: two writes within one mtime tick keep size and
            // mtime. Events on its neighbours (a ConfigMap's `..data` swap)
            // count only if the file now leads elsewhere or changed.
            if direct || id != f.id {
                changed.push(f.path.clone());
                let dirs = FileTarget::dirs_for(&f.path, id.as_ref());
                if dirs != f.dirs {
                    f.dirs = dirs;
                    dirs_changed = true;
                }
                f.id = id;
            }
        }
        for p in changed {
            self.pending.add(&p);
            self.activity();
        }
        if dirs_changed {
            let candidates: BTreeSet<PathBuf> = self
                .watched
                .iter()
                .filter(|d| !self.tree_dirs.contains(*d))
                .cloned()
                .chain(self.files.iter().flat_map(|f| f.dirs.clone()))
                .collect();
            for d in candidates {
                if let Err(e) = self.sync_watch(&d) {
                    match e {
                        WatchError::WatchLimit { .. } => self.emit_error(e),
                        e => tracing::debug!("{e}"),
                    }
                }
            }
        }
    }

    /// The deepest root containing `path`.
    fn root_of(&self, path: &Path) -> Option<usize> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.path))
            .max_by_key(|(_, r)| r.path.as_os_str().len())
            .map(|(i, _)| i)
    }

    fn has_tree_under(&self, path: &Path) -> bool {
        self.tree_dirs
            .range(path.to_owned()..)
            .next()
            .is_some_and(|d| d.starts_with(path))
    }

    /// Drops `path` and every tree directory below it.
    fn forget_tree(&mut self, path: &Path) {
        let below: Vec<PathBuf> = self
            .tree_dirs
            .range(path.to_owned()..)
            .take_while(|d| d.starts_with(path))
            .cloned()
            .collect();
        for d in below {
            self.tree_dirs.remove(&d);
            let _ = self.sync_watch(&d);
        }
    }

    /// Adds or removes the inotify watch of `dir` to match what is wanted.
    fn sync_watch(&mut self, dir: &Path) -> Result<(), WatchError> {
        let want = self.tree_dirs.contains(dir)
            || self.files.iter().any(|f| f.dirs.iter().any(|d| d == dir));
        let have = self.watched.contains(dir);
        if want && !have {
            self.watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| map_watch_error(e, dir))?;
            self.watched.insert(dir.to_owned());
            self.watched_dirty = true;
        } else if !want && have {
            // Fails if the kernel already dropped it (directory deleted): fine.
            let _ = self.watcher.unwatch(dir);
            self.watched.remove(dir);
            self.watched_dirty = true;
        }
        Ok(())
    }

    fn add_tree(
        &mut self,
        dir: &Path,
        strict: bool,
        found: Option<&mut Vec<PathBuf>>,
    ) -> Result<(), WatchError> {
        let root = dir.to_owned();
        self.add_tree_in(dir, &root, strict, found)
    }

    /// Walks `dir` (inside the tree `root`), watching every admitted
    /// directory; with `found`, collects the admitted files (they may have
    /// been written before the watch existed). With `strict`, any error on
    /// `dir` itself is returned; otherwise only inotify limits are, and
    /// unreadable or vanished directories are skipped.
    fn add_tree_in(
        &mut self,
        dir: &Path,
        root: &Path,
        strict: bool,
        mut found: Option<&mut Vec<PathBuf>>,
    ) -> Result<(), WatchError> {
        let Some(root_idx) = self.roots.iter().position(|r| r.path == root) else {
            return Ok(());
        };
        let filter = self.filter.clone();
        let root_for_walk = Root {
            path: self.roots[root_idx].path.clone(),
            top: self.roots[root_idx].top.clone(),
        };
        let walk = ignore::WalkBuilder::new(dir)
            // Our own filter decides, so that the walk and the events agree
            // (the standard filters would also skip hidden files).
            .standard_filters(false)
            .follow_links(false)
            .filter_entry(move |e| {
                let is_dir = e.file_type().is_some_and(|t| t.is_dir());
                !filter.ignored(&root_for_walk, e.path(), is_dir)
            })
            .build();
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!("skipping while walking {}: {e}", dir.display());
                    continue;
                }
            };
            let path = entry.path();
            if entry.file_type().is_some_and(|t| t.is_dir()) {
                if self.tree_dirs.contains(path) {
                    continue;
                }
                self.tree_dirs.insert(path.to_owned());
                match self.sync_watch(path) {
                    Ok(()) => {}
                    Err(e @ (WatchError::WatchLimit { .. } | WatchError::InstanceLimit { .. })) => {
                        self.tree_dirs.remove(path);
                        return Err(e);
                    }
                    Err(e) if strict && path == dir => {
                        self.tree_dirs.remove(path);
                        return Err(match e {
                            WatchError::Notify(n) => WatchError::Path {
                                path: path.to_owned(),
                                source: io::Error::other(n),
                            },
                            e => e,
                        });
                    }
                    Err(e) => {
                        // Vanished or unreadable meanwhile.
                        tracing::debug!("not watching {}: {e}", path.display());
                        self.tree_dirs.remove(path);
                    }
                }
            } else if let Some(found) = found.as_deref_mut() {
                found.push(path.to_owned());
            }
        }
        Ok(())
    }

    /// Re-walks every tree: adds directories that were missed or are no
    /// longer ignored, drops the ones that are now ignored or gone.
    fn rescan(&mut self) {
        let before = std::mem::take(&mut self.tree_dirs);
        let roots: Vec<PathBuf> = self.roots.iter().map(|r| r.path.clone()).collect();
        // Rebuild the set; `sync_watch` keeps existing watches (the set of
        // watched directories is separate), so only differences touch inotify.
        for root in &roots {
            if let Err(e) = self.add_tree(root, false, None) {
                self.emit_error(e);
            }
        }
        for d in before {
            if !self.tree_dirs.contains(&d) {
                let _ = self.sync_watch(&d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    fn filter(ignore: &[&str], ext: Option<&[&str]>) -> Filter {
        let mut s = WatchSettings::new(["/r"]);
        s.ignore = ignore.iter().map(|s| s.to_string()).collect();
        s.extensions = ext.map(|e| e.iter().map(|s| s.to_string()).collect());
        s.also_ignore = vec![PathBuf::from("/r/bin/app")];
        Filter::new(&s).unwrap()
    }

    #[test]
    fn ignore_rules() {
        let f = filter(&["*.log", "dist/**", "gen/", "/abs/**", "./local"], None);
        let root = Root {
            path: PathBuf::from("/r"),
            top: PathBuf::from("/r"),
        };
        let ig = |p: &str, d: bool| f.ignored(&root, Path::new(p), d);
        assert!(ig("/r/target", true));
        assert!(!ig("/r/target", false), "target/ is for directories");
        assert!(ig("/r/a/node_modules", true));
        assert!(ig("/r/.git", true));
        assert!(ig("/r/src/.main.rs.swp", false));
        assert!(ig("/r/src/main.rs~", false));
        assert!(ig("/r/src/4913", false));
        assert!(ig("/r/src/.#main.rs", false));
        assert!(ig("/r/src/#main.rs#", false));
        assert!(ig("/r/x.log", false));
        assert!(ig("/r/a/b/x.log", false));
        assert!(ig("/r/dist", true));
        assert!(ig("/r/dist/a.js", false));
        assert!(!ig("/r/src/dist.rs", false));
        assert!(ig("/r/gen", true));
        assert!(!ig("/r/gen", false));
        assert!(ig("/r/local", false));
        assert!(!ig("/r/a/local", false), "./local is anchored at the root");
        assert!(ig("/r/bin/app", false));
        assert!(!ig("/r/bin/app.rs", false));
        assert!(!ig("/r/src/main.rs", false));
        assert!(!ig("/r", true), "the root itself is never ignored");
    }

    #[test]
    fn the_handle_can_move_into_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Watcher>();
        send_sync::<WatchError>();
    }

    #[test]
    fn bad_glob_is_an_error() {
        let mut s = WatchSettings::new(["/r"]);
        s.ignore = vec!["a[".into()];
        let e = Filter::new(&s).err().expect("error");
        assert!(e.to_string().contains("a["), "{e}");
    }

    #[test]
    fn extension_filter() {
        let f = filter(&[], Some(&["rs", ".TOML"]));
        assert!(f.counts(Path::new("/r/a.rs"), false));
        assert!(f.counts(Path::new("/r/Cargo.toml"), false));
        assert!(f.counts(Path::new("/r/X.RS"), false));
        assert!(!f.counts(Path::new("/r/a.txt"), false));
        assert!(!f.counts(Path::new("/r/Makefile"), false));
        assert!(!f.counts(Path::new("/r/dir.rs"), true));
        let all = filter(&[], None);
        assert!(all.counts(Path::new("/r/Makefile"), false));
    }

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
