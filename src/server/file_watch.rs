//! Reload on file change: the config file, and every file the running config read besides it
//! (certificates, keys, CA bundles). Each file's directory is watched, not the file itself:
//! editors, cert-manager and Kubernetes ConfigMaps replace a file by renaming one over it,
//! which a watch on the file would miss. Changes must be quiet for a moment before the
//! reload runs, as SIGHUP would. The set of files follows the config: after any successful
//! reload (signal, admin API or this watch), it is read again from the new snapshot.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::Control;

/// How long the files must stay unchanged before a reload: one save is often several writes.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Files whose change reloads, and the directories watched for them.
struct Watched {
    files: Arc<Mutex<HashSet<PathBuf>>>,
    dirs: HashSet<PathBuf>,
}

impl Watched {
    /// Watches `config` and the snapshot's files; directories no longer needed are dropped.
    fn sync(&mut self, watcher: &mut RecommendedWatcher, config: &Path, control: &Control) {
        let files: HashSet<PathBuf> = std::iter::once(config.to_path_buf())
            .chain(control.gateway.snapshot().watched_files.iter().cloned())
            .filter_map(|f| std::path::absolute(f).ok())
            .collect();
        let dirs: HashSet<PathBuf> = files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for file changes");
            }
        }
        self.dirs = dirs;
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }
}

/// Starts watching `path` and the files its config reads; the watch lives as long as the
/// returned task.
pub fn watch_config(control: Arc<Control>, path: &Path) -> notify::Result<tokio::task::JoinHandle<()>> {
    let config = std::path::absolute(path).map_err(notify::Error::io)?;
    let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let files = seen.lock().unwrap_or_else(|e| e.into_inner());
        if event.paths.iter().any(|p| files.contains(p)) {
            let _ = tx.send(());
        }
    })?;
    let mut watched = Watched { files, dirs: HashSet::new() };
    watched.sync(&mut watcher, &config, &control);
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { return },
                () = control.reloaded.notified() => {
                    watched.sync(&mut watcher, &config, &control);
                    continue;
                }
            }
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            match control.reload_from_file().await {
                Ok(s) => {
                    tracing::info!(added = ?s.listeners_added, removed = ?s.listeners_removed, "a watched file changed: reloaded")
                }
                Err(e) => {
                    tracing::error!(
                        "a watched file changed but the reload failed; the running config keeps serving:\n{e}"
                    )
                }
            }
        }
    }))
}
