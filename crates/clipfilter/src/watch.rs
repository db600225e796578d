//! Watching a file for changes: label sets (the element reloads them) and the daemon's
//! configuration. One watcher for both.
//!
//! The folder is watched, not the file: editors and config tools replace files atomically
//! (write a temporary file, rename it over the old one), which a watch on the file itself would
//! lose. Events are filtered by file name and debounced, so that a burst of writes gives one
//! reload once the file has been quiet for a moment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::error::{Error, Result};

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
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("clipfilter-watch".into())
            .spawn(move || {
                // The watcher lives (and its events arrive) as long as this thread runs.
                let _watcher = watcher;
                run(&name, debounce, &events, &stop, &mut on_change);
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

fn concerns(event: &notify::Event, name: &OsString) -> bool {
    !matches!(event.kind, EventKind::Access(_))
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == name))
}

fn run(
    name: &OsString,
    debounce: Duration,
    events: &Receiver<notify::Result<notify::Event>>,
    stop: &Receiver<()>,
    on_change: &mut impl FnMut(),
) {
    let mut due: Option<Instant> = None;
    loop {
        let timeout = due.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        select! {
            recv(stop) -> _ => return,
            recv(events) -> ev => match ev {
                Ok(Ok(event)) if concerns(&event, name) => {
                    due = Some(Instant::now() + debounce);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "file watcher"),
                Err(_) => return,
            },
            default(timeout) => {
                if due.take().is_some() {
                    on_change();
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
}
