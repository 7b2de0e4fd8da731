//! What is ignored (defaults, `--ignore`, `.gitignore`, the build's own
//! output) and what counts as a change (`--ext`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::{DEFAULT_IGNORES, WatchError, WatchSettings, lock};

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
pub(super) struct Filter {
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
    pub(super) fn new(settings: &WatchSettings) -> Result<Self, WatchError> {
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
    pub(super) fn ignored(&self, root: &Root, path: &Path, is_dir: bool) -> bool {
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

    pub(super) fn forget_gitignores(&self) {
        lock(&self.gitignores).clear();
    }

    /// Whether a change of this (not ignored) path counts, by `--ext`.
    pub(super) fn counts(&self, path: &Path, is_dir: bool) -> bool {
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
pub(super) fn absolute(path: &Path) -> PathBuf {
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
pub(super) struct Root {
    /// Canonical.
    pub(super) path: PathBuf,
    /// Where `.gitignore` lookup stops: the repository's top directory if the
    /// root is in one, else the root.
    pub(super) top: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
