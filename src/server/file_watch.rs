//! Reload on file change: the config file, and every file the running config read besides it
//! (certificates, keys, CA bundles). Each file's directory is watched, not the file itself:
//! editors and cert-manager replace a file by renaming one over it, which a watch on the file
//! would miss. A file reached through symlinks is watched at every link on the way and at the
//! file it ends at: a Kubernetes ConfigMap mount (`gw.yaml -> ..data/gw.yaml`,
//! `..data -> ..2026_12_02_v1`) is updated by renaming a new `..data` link over the old one,
//! an event that names neither `gw.yaml` nor the file it reads. Changes must be quiet for a
//! moment before the reload runs, as SIGHUP would. The set of files follows the config and
//! its links: after every reload (signal, admin API or this watch), it is read again.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::Control;

/// How long the files must stay unchanged before a reload: one save is often several writes.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Links followed at most while resolving one file, as the kernel's own limit (`ELOOP`).
const MAX_LINKS: usize = 40;

/// `path`, every symlink met while resolving it, and the file it ends at, each spelled as a
/// watch on its directory reports it. `path`'s own directory is taken as it is; the
/// components after it, and those of every link's target, are followed one at a time.
fn resolution_chain(path: &Path) -> Vec<PathBuf> {
    let (Some(mut base), Some(name)) = (path.parent().map(Path::to_path_buf), path.file_name()) else {
        return vec![path.to_path_buf()];
    };
    let mut chain = Vec::new();
    let mut rest: VecDeque<OsString> = VecDeque::from([name.to_os_string()]);
    let mut links = 0;
    while let Some(part) = rest.pop_front() {
        if part == ".." {
            // No link in `base` past `path`'s directory: its parent is the kernel's `..` too.
            base.pop();
            continue;
        }
        let here = base.join(&part);
        let target = match std::fs::read_link(&here) {
            Ok(target) if links < MAX_LINKS => target,
            _ => {
                base = here;
                continue;
            }
        };
        links += 1;
        chain.push(here);
        if target.has_root() {
            base = PathBuf::new();
        }
        let mut parts = Vec::new();
        for c in target.components() {
            match c {
                Component::Prefix(_) | Component::RootDir => base.push(c),
                Component::CurDir => {}
                Component::ParentDir | Component::Normal(_) => parts.push(c.as_os_str().to_os_string()),
            }
        }
        for p in parts.into_iter().rev() {
            rest.push_front(p);
        }
    }
    chain.push(base);
    chain
}

/// Files whose change reloads, and the directories watched for them.
struct Watched {
    files: Arc<Mutex<HashSet<PathBuf>>>,
    dirs: HashSet<PathBuf>,
}

impl Watched {
    /// Watches `config` and the snapshot's files, with the links to them; directories no
    /// longer needed are dropped.
    fn sync(&mut self, watcher: &mut RecommendedWatcher, config: &Path, control: &Control) {
        let files: HashSet<PathBuf> = std::iter::once(config.to_path_buf())
            .chain(control.gateway.snapshot().watched_files.iter().cloned())
            .filter_map(|f| std::path::absolute(f).ok())
            .flat_map(|f| resolution_chain(&f))
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
    let mut reloads = control.reloads();
    watched.sync(&mut watcher, &config, &control);
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { return },
                changed = reloads.changed() => {
                    if changed.is_err() {
                        return;
                    }
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
            let outcome = control.reload_from_file().await;
            // A swapped link points somewhere new even when the reload failed or changed nothing.
            watched.sync(&mut watcher, &config, &control);
            match outcome {
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

#[cfg(all(test, unix))]
mod tests {
    use super::resolution_chain;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_chain_names_every_link_and_the_file_it_ends_at() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("real/v1")).expect("mkdir");
        std::fs::create_dir(d.join("mount")).expect("mkdir");
        std::fs::write(d.join("real/v1/gw.yaml"), "").expect("write");
        symlink("../real/./v1", d.join("mount/..data")).expect("symlink");
        symlink("..data/gw.yaml", d.join("mount/gw.yaml")).expect("symlink");
        let chain = resolution_chain(&d.join("mount/gw.yaml"));
        assert_eq!(chain, [d.join("mount/gw.yaml"), d.join("mount/..data"), d.join("real/v1/gw.yaml")]);
    }

    #[test]
    fn a_loop_of_links_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        symlink("b", dir.path().join("a")).expect("symlink");
        symlink("a", dir.path().join("b")).expect("symlink");
        let chain = resolution_chain(&dir.path().join("a"));
        assert!(chain.len() <= super::MAX_LINKS + 2, "{} entries", chain.len());
    }
}
