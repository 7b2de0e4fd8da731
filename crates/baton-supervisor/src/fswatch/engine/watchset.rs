//! The watch set: which directories of the trees are admitted, and the
//! inotify watches that follow them (walks, rescans, removals).

use std::io;
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};

use super::Engine;
use crate::fswatch::WatchError;
use crate::fswatch::filter::Root;
use crate::fswatch::limits::map_watch_error;

impl Engine {
    /// The deepest root containing `path`.
    pub(super) fn root_of(&self, path: &Path) -> Option<usize> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.path))
            .max_by_key(|(_, r)| r.path.as_os_str().len())
            .map(|(i, _)| i)
    }

    pub(super) fn has_tree_under(&self, path: &Path) -> bool {
        self.tree_dirs
            .range(path.to_owned()..)
            .next()
            .is_some_and(|d| d.starts_with(path))
    }

    /// Drops `path` and every tree directory below it.
    pub(super) fn forget_tree(&mut self, path: &Path) {
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
    pub(super) fn sync_watch(&mut self, dir: &Path) -> Result<(), WatchError> {
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

    pub(super) fn add_tree(
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
    pub(super) fn add_tree_in(
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
    pub(super) fn rescan(&mut self) {
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
