//! Watching the configuration path (and other files sluice re-reads, such
//! as TLS certificates) for changes.
//!
//! The watch is on a directory, never on a file: on the config directory
//! itself, or on the parent of a config file. Editors replace files by
//! renaming, and Kubernetes updates a mounted ConfigMap by swapping the
//! `..data` symlink inside the directory; a watch on the file's inode
//! would miss both, a watch on the directory sees both. Bursts of events
//! are coalesced: a change is reported once the path has been quiet for
//! the debounce interval.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// A running watch; dropping it stops watching.
#[derive(Debug)]
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
    changes: mpsc::Receiver<()>,
    debounce: Duration,
}

/// Watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// The directory holding `file` (`.` for a bare file name).
fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl ConfigWatch {
    /// Starts watching the directory that holds `path`'s configuration.
    ///
    /// # Errors
    /// [`WatchError`] when the OS watch cannot be set up.
    pub fn start(path: &Path, debounce: Duration) -> Result<ConfigWatch, WatchError> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            parent(path)
        };
        ConfigWatch::start_dirs(&[dir], debounce)
    }

    /// Starts watching the directories that hold `files` (each once): for
    /// files that are not configuration, such as TLS certificates.
    ///
    /// # Errors
    /// [`WatchError`] when the OS watch cannot be set up.
    pub fn start_files(files: &[&Path], debounce: Duration) -> Result<ConfigWatch, WatchError> {
        let mut dirs: Vec<PathBuf> = files.iter().map(|f| parent(f)).collect();
        dirs.sort();
        dirs.dedup();
        ConfigWatch::start_dirs(&dirs, debounce)
    }

    fn start_dirs(dirs: &[PathBuf], debounce: Duration) -> Result<ConfigWatch, WatchError> {
        let (tx, rx) = mpsc::channel(1);
        let first = dirs.first().cloned().unwrap_or_else(|| PathBuf::from("."));
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(e) = event {
                    // Reading the files (ours included) only touches access
                    // times: not a change.
                    let metadata_only = matches!(
                        e.kind,
                        notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                    );
                    if !e.kind.is_access() && !metadata_only {
                        // A full channel already holds a pending change.
                        let _ = tx.try_send(());
                    }
                }
            })
            .map_err(|source| WatchError {
                path: first,
                source,
            })?;
        for dir in dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(ConfigWatch {
            _watcher: watcher,
            changes: rx,
            debounce,
        })
    }

    /// Waits for the next change, after the debounce quiet period.
    /// Returns `None` if the watch has stopped.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.recv().await?;
        loop {
            match tokio::time::timeout(self.debounce, self.changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}
