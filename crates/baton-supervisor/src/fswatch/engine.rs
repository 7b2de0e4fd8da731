//! The engine: on its own thread, turns inotify events into batches of
//! changed paths, once per quiet period, and keeps the watch set in step
//! with the trees ([`watchset`]).

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use notify::event::{
    AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode,
};

use super::filter::{Filter, Root, absolute};
use super::limits::map_watch_error;
use super::watcher::{Msg, Shared};
use super::{ChangeBatch, WatchError, WatchSettings, lock};

mod watchset;

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
pub(super) struct Engine {
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
    pub(super) fn new(
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

    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
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
}
