//! What makes the daemon reload its configuration or stop: the configuration file changing on
//! disk (watched with `notify`), `SIGHUP`, and `SIGTERM`/`SIGINT`.
//!
//! The file's folder is watched, not the file, so that editors and configuration tools that
//! replace the file atomically (write a temporary file, rename it over) are seen. The main loop
//! debounces file events (see [`DEBOUNCE`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use notify::{EventKind, RecursiveMode, Watcher as _};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::error::{Error, Result};

/// Quiet time after the last change of the file before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Why the main loop should act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// `SIGHUP`: reload now.
    Hangup,
    /// The configuration file changed (reload once it is quiet).
    FileChanged,
    /// `SIGTERM` or `SIGINT`: stop.
    Stop(&'static str),
}

/// The signal thread and the file watcher; dropping it stops both.
pub struct Triggers {
    rx: Receiver<Trigger>,
    _watcher: Option<notify::RecommendedWatcher>,
    signals: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers").finish_non_exhaustive()
    }
}

fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    let path = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir.to_path_buf(), name.to_os_string())),
        _ => Err(Error::invalid(
            "config",
            format!("{} is not a file path", path.display()),
        )),
    }
}

impl Triggers {
    /// Installs the signal handlers and watches `config`. A watcher that cannot start (no
    /// inotify instances left, say) is logged; `SIGHUP` still works.
    pub fn start(config: &Path) -> Result<Triggers> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
            .map_err(|e| Error::invalid("signal handlers", e.to_string()))?;
        let handle = signals.handle();
        let signal_tx = tx.clone();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let trigger = match signal {
                        SIGHUP => Trigger::Hangup,
                        SIGTERM => Trigger::Stop("SIGTERM"),
                        _ => Trigger::Stop("SIGINT"),
                    };
                    if signal_tx.send(trigger).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::invalid("signal thread", e.to_string()))?;
        let watcher = match watch(config, tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "not watching the configuration file; reload with SIGHUP");
                None
            }
        };
        Ok(Triggers {
            rx,
            _watcher: watcher,
            signals: handle,
            thread: Some(thread),
        })
    }

    /// The channel of triggers.
    pub fn receiver(&self) -> &Receiver<Trigger> {
        &self.rx
    }
}

fn watch(config: &Path, tx: Sender<Trigger>) -> Result<notify::RecommendedWatcher> {
    let (dir, name) = split(config)?;
    let notify_err =
        |e: notify::Error| Error::invalid(format!("watch of {}", dir.display()), e.to_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == name))
        {
            let _ = tx.send(Trigger::FileChanged);
        }
    })
    .map_err(notify_err)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(notify_err)?;
    Ok(watcher)
}

impl Drop for Triggers {
    fn drop(&mut self) {
        self.signals.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
