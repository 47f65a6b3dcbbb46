//! Reload on config-file change: watch the file's directory (editors and Kubernetes ConfigMaps
//! replace a file by renaming one over it, which a watch on the file itself would miss), wait
//! until changes have been quiet for a moment, then reload as SIGHUP would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::Control;

/// How long the file must stay unchanged before a reload: one save is often several writes.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts watching `path`; the watch lives as long as the returned task.
pub fn watch_config(control: Arc<Control>, path: &Path) -> notify::Result<tokio::task::JoinHandle<()>> {
    let file_name = path.file_name().map(|n| n.to_owned());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == file_name.as_deref()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            match control.reload_from_file().await {
                Ok(s) => {
                    tracing::info!(added = ?s.listeners_added, removed = ?s.listeners_removed, "config file changed: reloaded")
                }
                Err(e) => {
                    tracing::error!("config file changed but the reload failed; the running config keeps serving:\n{e}")
                }
            }
        }
    }))
}
