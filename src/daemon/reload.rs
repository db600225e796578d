//! What makes the daemon reload its configuration or stop: the configuration file changing on
//! disk (the engine's [`FileWatcher`], which the element uses for label files too), `SIGHUP`,
//! and `SIGTERM`/`SIGINT`.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use clipfilter::watch::FileWatcher;
use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use clipfilter::error::{Error, Result};

/// Quiet time after the last change of the file before it is read again.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Why the main loop should act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// `SIGHUP`: reload now.
    Hangup,
    /// The configuration file changed (and has been quiet for [`DEBOUNCE`]).
    FileChanged,
    /// `SIGTERM` or `SIGINT`: stop.
    Stop(&'static str),
}

/// The signal thread and the file watcher; dropping it stops both.
pub struct Triggers {
    rx: Receiver<Trigger>,
    _watcher: Option<FileWatcher>,
    signals: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers").finish_non_exhaustive()
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
        let watcher = FileWatcher::start(config, DEBOUNCE, move || {
            let _ = tx.send(Trigger::FileChanged);
        });
        let watcher = match watcher {
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

impl Drop for Triggers {
    fn drop(&mut self) {
        self.signals.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
