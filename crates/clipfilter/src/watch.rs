//! Watching a file for changes: label sets (the element reloads them) and the daemon's
//! configuration. One watcher for both. A label set also names other files its scores come
//! from (probes, example pictures): [`FileWatcher::start_following`] watches those too, and the
//! set of them follows each reload.
//!
//! The folder is watched, not the file: editors and config tools replace files atomically
//! (write a temporary file, rename it over the old one), which a watch on the file itself would
//! lose. Events are filtered by file name and debounced, so that a burst of writes gives one
//! reload once the file has been quiet for a moment.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::error::{Error, Result};

/// Something else a watched file depends on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watch {
    /// One file (a probe).
    File(PathBuf),
    /// Any file in a folder (pictures matched by a pattern: one added counts too).
    Folder(PathBuf),
}

/// The folders watched and, in each, the names that count (`None`: every name).
#[derive(Default)]
struct Targets {
    names: Vec<(PathBuf, Option<OsString>)>,
}

impl Targets {
    fn new(main: (PathBuf, OsString), extra: &[Watch]) -> Targets {
        let mut names = vec![(main.0, Some(main.1))];
        for w in extra {
            let entry = match w {
                Watch::File(p) => {
                    let Ok(p) = std::path::absolute(p) else {
                        continue;
                    };
                    match split(&p) {
                        Ok((dir, name)) => (dir, Some(name)),
                        Err(_) => continue,
                    }
                }
                Watch::Folder(d) => match std::path::absolute(d) {
                    Ok(d) => (d, None),
                    Err(_) => continue,
                },
            };
            if !names.contains(&entry) {
                names.push(entry);
            }
        }
        Targets { names }
    }

    fn folders(&self) -> BTreeSet<PathBuf> {
        self.names.iter().map(|(d, _)| d.clone()).collect()
    }

    fn concerns(&self, event: &notify::Event) -> bool {
        !matches!(event.kind, EventKind::Access(_))
            && event.paths.iter().any(|p| {
                let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                    return false;
                };
                self.names
                    .iter()
                    .any(|(d, n)| d == dir && n.as_ref().is_none_or(|n| n == name))
            })
    }
}

/// A thread that calls a function when a file has changed. Dropping it stops and joins it.
pub struct FileWatcher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FileWatcher {
    /// Watches `path`; `on_change` runs on the watcher's thread, `debounce` after the last of a
    /// burst of changes.
    pub fn start(
        path: &Path,
        debounce: Duration,
        mut on_change: impl FnMut() + Send + 'static,
    ) -> Result<Self> {
        Self::start_following(path, Vec::new(), debounce, move || {
            on_change();
            None
        })
    }

    /// Watches `path` and what it depends on (`extra`); `on_change` runs after a change of any
    /// of them and may return what the file depends on now (`None`: unchanged). A folder that
    /// cannot be watched is logged, not an error (the file itself must be watchable).
    pub fn start_following(
        path: &Path,
        extra: Vec<Watch>,
        debounce: Duration,
        mut on_change: impl FnMut() -> Option<Vec<Watch>> + Send + 'static,
    ) -> Result<Self> {
        let path = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
        let (dir, name) = split(&path)?;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let mut watcher = notify::recommended_watcher(move |res| {
            let _ = events_tx.send(res);
        })
        .map_err(|e| notify_error(&dir, e))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| notify_error(&dir, e))?;
        let main = (dir.clone(), name);
        let mut targets = Targets::new(main.clone(), &[]);
        follow(&mut watcher, &mut targets, &main, &extra);
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("clipfilter-watch".into())
            .spawn(move || {
                run(
                    &mut watcher,
                    &mut targets,
                    &main,
                    debounce,
                    &events,
                    &stop,
                    &mut on_change,
                );
            })
            .map_err(|e| Error::io(&path, e))?;
        Ok(FileWatcher {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        let Some(t) = self.thread.take() else { return };
        // `on_change` may hold the last reference to the element that owns this watcher; then
        // the watcher is dropped on its own thread, which ends by itself once it returns.
        if t.thread().id() == std::thread::current().id() {
            return;
        }
        if t.join().is_err() {
            tracing::error!("the file watcher thread panicked");
        }
    }
}

fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir.to_path_buf(), name.to_os_string())),
        _ => Err(Error::invalid(
            "watched file",
            format!("{} is not a file path", path.display()),
        )),
    }
}

fn notify_error(dir: &Path, e: notify::Error) -> Error {
    match e.kind {
        notify::ErrorKind::Io(io) => Error::io(dir, io),
        kind => Error::io(
            dir,
            std::io::Error::other(format!("cannot watch: {kind:?}")),
        ),
    }
}

/// Makes `targets` the main file and `extra`, watching folders that are new and unwatching
/// those no longer needed.
fn follow(
    watcher: &mut notify::RecommendedWatcher,
    targets: &mut Targets,
    main: &(PathBuf, OsString),
    extra: &[Watch],
) {
    let next = Targets::new(main.clone(), extra);
    let (old, new) = (targets.folders(), next.folders());
    for d in old.difference(&new) {
        let _ = watcher.unwatch(d);
    }
    for d in new.difference(&old) {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %d.display(), error = %e, "not watching a folder the file depends on");
        }
    }
    *targets = next;
}

fn run(
    watcher: &mut notify::RecommendedWatcher,
    targets: &mut Targets,
    main: &(PathBuf, OsString),
    debounce: Duration,
    events: &Receiver<notify::Result<notify::Event>>,
    stop: &Receiver<()>,
    on_change: &mut impl FnMut() -> Option<Vec<Watch>>,
) {
    let mut due: Option<Instant> = None;
    loop {
        let timeout = due.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        select! {
            recv(stop) -> _ => return,
            recv(events) -> ev => match ev {
                Ok(Ok(event)) if targets.concerns(&event) => {
                    due = Some(Instant::now() + debounce);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "file watcher"),
                Err(_) => return,
            },
            default(timeout) => {
                if due.take().is_some()
                    && let Some(extra) = on_change()
                {
                    follow(watcher, targets, main, &extra);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_replacement_is_seen_once_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.toml");
        std::fs::write(&path, "a").unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let _w = FileWatcher::start(&path, Duration::from_millis(100), move || {
            let _ = tx.send(());
        })
        .unwrap();
        // Another file in the folder: no call.
        std::fs::write(dir.path().join("other.toml"), "x").unwrap();
        // An editor's atomic save: several events, one call.
        let tmp = dir.path().join(".labels.toml.swp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the change is reported");
        assert!(rx.recv_timeout(Duration::from_millis(400)).is_err());
        std::fs::write(&path, "c").unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a plain write is reported");
    }

    #[test]
    fn dependencies_are_watched_and_follow_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.toml");
        let pics = dir.path().join("pics");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&pics).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(&path, "a").unwrap();
        let probe = dir.path().join("probe.json");
        let (tx, rx) = crossbeam_channel::unbounded();
        let next = vec![Watch::Folder(other.clone())];
        let _w = FileWatcher::start_following(
            &path,
            vec![Watch::File(probe.clone()), Watch::Folder(pics.clone())],
            Duration::from_millis(100),
            move || {
                let _ = tx.send(());
                Some(next.clone())
            },
        )
        .unwrap();
        std::fs::write(dir.path().join("unrelated.json"), "x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(400)).is_err());
        std::fs::write(&probe, "p").unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the probe's change is reported");
        // Now the file depends on `other` only.
        std::fs::write(pics.join("new.png"), "x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(400)).is_err());
        std::fs::write(other.join("added.png"), "x").unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a picture added to a watched folder is reported");
    }
}
