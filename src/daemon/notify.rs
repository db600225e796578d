//! systemd integration: `READY=1`, `STATUS=`, `STOPPING=1` and a watchdog fed by heartbeats.
//!
//! Messages go to `$NOTIFY_SOCKET` through the `sd-notify` crate; without that variable (not
//! started by systemd) every call does nothing. The environment is never modified.
//!
//! # Watchdog
//! With `WatchdogSec=` in the unit, systemd sets `WATCHDOG_USEC`/`WATCHDOG_PID` and
//! [`Notifier::from_env`] starts a thread that sends `WATCHDOG=1` every half interval, **only
//! while every registered [`Heartbeat`] has beaten within the interval**. Loops that must stay
//! alive (the main loop, each inference worker) take a heartbeat with [`Notifier::heartbeat`] and
//! call [`Heartbeat::beat`] (an atomic store) at least every [`Notifier::beat_period`], including
//! while idle. When one goes stale the pings stop, the stale heartbeat is logged once and shown in
//! `STATUS=`, and systemd restarts the service after the interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, select};
use sd_notify::NotifyState;

/// How often heartbeats should beat when there is no watchdog.
const DEFAULT_BEAT_PERIOD: Duration = Duration::from_secs(1);

struct Beat {
    name: String,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last beat.
    last: AtomicU64,
}

/// A liveness signal of one loop. Cheap to clone; [`Heartbeat::beat`] is one atomic store.
#[derive(Clone)]
pub struct Heartbeat {
    beat: Arc<Beat>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("name", &self.beat.name)
            .field("age", &self.age())
            .finish()
    }
}

impl Heartbeat {
    /// Records that the loop is alive now.
    pub fn beat(&self) {
        let now = self.beat.epoch.elapsed().as_millis() as u64;
        self.beat.last.store(now, Ordering::Relaxed);
    }

    /// The heartbeat's name.
    pub fn name(&self) -> &str {
        &self.beat.name
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.beat.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.beat.last.load(Ordering::Relaxed)))
    }
}

struct Shared {
    epoch: Instant,
    heartbeats: Mutex<Vec<Heartbeat>>,
    interval: Option<Duration>,
}

impl Shared {
    fn stale(&self) -> Vec<(String, Duration)> {
        let Some(limit) = self.interval else {
            return Vec::new();
        };
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| (h.name().to_owned(), h.age()))
            .filter(|(_, age)| *age > limit)
            .collect()
    }
}

/// Talks to systemd. Create one per process with [`Notifier::from_env`].
pub struct Notifier {
    shared: Arc<Shared>,
    watchdog: Option<(Sender<()>, JoinHandle<()>)>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("watchdog", &self.shared.interval)
            .finish_non_exhaustive()
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

impl Notifier {
    /// A notifier with the watchdog systemd asked for (`WATCHDOG_USEC` for this process), if any.
    pub fn from_env() -> Notifier {
        let mut usec = 0;
        let interval = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec))
            .filter(|d| !d.is_zero());
        Notifier::new(interval)
    }

    /// A notifier with an explicit watchdog interval (`None`: no watchdog thread). Pings go to
    /// `$NOTIFY_SOCKET` like every other message.
    pub fn new(watchdog: Option<Duration>) -> Notifier {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            heartbeats: Mutex::new(Vec::new()),
            interval: watchdog,
        });
        let watchdog = watchdog.and_then(|interval| {
            let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || {
                    let mut withheld: Vec<String> = Vec::new();
                    loop {
                        let stale = shared.stale();
                        if stale.is_empty() {
                            if !withheld.is_empty() {
                                tracing::info!(heartbeats = ?withheld, "heartbeats fresh again; watchdog pings resume");
                                withheld.clear();
                            }
                            send(&[NotifyState::Watchdog]);
                        } else {
                            let names: Vec<String> = stale.iter().map(|(n, _)| n.clone()).collect();
                            if names != withheld {
                                let list = stale
                                    .iter()
                                    .map(|(name, age)| format!("{name} (silent for {age:.1?})"))
                                    .collect::<Vec<_>>()
                                    .join(", ");
                                tracing::error!(
                                    stale = %list,
                                    "heartbeat stale: withholding WATCHDOG=1, systemd will restart the service"
                                );
                                let status = format!("watchdog withheld: stale heartbeat {list}");
                                send(&[NotifyState::Status(&status)]);
                                withheld = names;
                            }
                        }
                        select! {
                            recv(stop_rx) -> _ => break,
                            default(interval / 2) => {}
                        }
                    }
                });
            match thread {
                Ok(thread) => Some((stop_tx, thread)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the watchdog thread");
                    None
                }
            }
        });
        Notifier { shared, watchdog }
    }

    /// The watchdog interval, when systemd set one.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.shared.interval
    }

    /// How often a heartbeat should beat: a quarter of the watchdog interval (1 s without one).
    /// Loops that block waiting for work should wait at most this long.
    pub fn beat_period(&self) -> Duration {
        self.shared.interval.map_or(DEFAULT_BEAT_PERIOD, |i| i / 4)
    }

    /// Registers a heartbeat called `name` (beaten once now). The watchdog waits for it until
    /// [`Notifier::remove_heartbeat`]; dropping the handle does **not** unregister it, so a thread
    /// that dies stops the pings.
    pub fn heartbeat(&self, name: &str) -> Heartbeat {
        let heartbeat = Heartbeat {
            beat: Arc::new(Beat {
                name: name.to_owned(),
                epoch: self.shared.epoch,
                last: AtomicU64::new(0),
            }),
        };
        heartbeat.beat();
        self.shared
            .heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(heartbeat.clone());
        heartbeat
    }

    /// Stops watching `heartbeat` (its loop ended on purpose).
    pub fn remove_heartbeat(&self, heartbeat: &Heartbeat) {
        self.shared
            .heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|h| !Arc::ptr_eq(&h.beat, &heartbeat.beat));
    }

    /// Heartbeats silent for longer than the watchdog interval, with their silence (empty without
    /// a watchdog). Useful for `/healthz`.
    pub fn stale_heartbeats(&self) -> Vec<(String, Duration)> {
        self.shared.stale()
    }

    /// `READY=1`: start-up finished (model loaded, pipelines started).
    pub fn ready(&self) {
        tracing::debug!("notify READY=1");
        send(&[NotifyState::Ready]);
    }

    /// `STATUS=...`: a one-line status shown by `systemctl status` (newlines become spaces).
    pub fn status(&self, text: &str) {
        let line = text.replace(['\n', '\r'], " ");
        send(&[NotifyState::Status(&line)]);
    }

    /// `STOPPING=1`: shutdown began.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }

    /// Stops the watchdog thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some((stop, thread)) = self.watchdog.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_go_stale_after_the_interval() {
        let notifier = Notifier::new(None);
        let hb = notifier.heartbeat("x");
        assert!(hb.age() < Duration::from_secs(1));
        // Without a watchdog nothing is ever stale.
        assert!(notifier.stale_heartbeats().is_empty());
        assert_eq!(notifier.beat_period(), DEFAULT_BEAT_PERIOD);

        let shared = Shared {
            epoch: Instant::now() - Duration::from_secs(10),
            heartbeats: Mutex::new(Vec::new()),
            interval: Some(Duration::from_secs(2)),
        };
        let old = Heartbeat {
            beat: Arc::new(Beat {
                name: "old".into(),
                epoch: shared.epoch,
                last: AtomicU64::new(0),
            }),
        };
        let fresh = Heartbeat {
            beat: Arc::new(Beat {
                name: "fresh".into(),
                epoch: shared.epoch,
                last: AtomicU64::new(0),
            }),
        };
        fresh.beat();
        shared
            .heartbeats
            .lock()
            .unwrap()
            .extend([old.clone(), fresh]);
        let stale = shared.stale();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].0, "old");
        assert!(stale[0].1 >= Duration::from_secs(10));
        old.beat();
        assert!(shared.stale().is_empty());
    }

    #[test]
    fn removed_heartbeats_are_not_watched() {
        let notifier = Notifier::new(None);
        let a = notifier.heartbeat("a");
        let _b = notifier.heartbeat("b");
        notifier.remove_heartbeat(&a);
        let names: Vec<String> = notifier
            .shared
            .heartbeats
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.name().to_owned())
            .collect();
        assert_eq!(names, ["b"]);
    }
}
