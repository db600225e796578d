//! What is known about each pipeline: its state and since when, restarts, last error, events and
//! frame counters ([`PipelineStatus`], its `/status` JSON), and pipelines per state
//! ([`StateCounts`], the systemd `STATUS=` line).
//!
//! Frame counters add up over restarts, so they never go back: the counters of the elements of
//! earlier attempts are folded into a base when an attempt ends.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gst::prelude::*;

use crate::daemon::metrics::{FrameCounts, PipelineMetrics, PipelineState};

#[derive(Debug)]
struct StateCell {
    state: PipelineState,
    since: Instant,
    since_wall: jiff::Timestamp,
    finished: bool,
}

/// What is known about one pipeline, shared with `/status` and the metrics.
#[derive(Debug)]
pub struct PipelineStatus {
    name: String,
    source: String,
    state: Mutex<StateCell>,
    restarts: AtomicU64,
    events: AtomicU64,
    last_error: Mutex<Option<(jiff::Timestamp, String)>>,
    /// Panics caught in the pipeline's thread, and the last one's message.
    panics: Mutex<(u64, Option<String>)>,
    /// The running `clipfilter`, read for its counters.
    element: Mutex<Option<gst::Element>>,
    /// Counters of the elements of earlier attempts.
    base: Mutex<FrameCounts>,
    metrics: PipelineMetrics,
}

fn element_counts(e: &gst::Element) -> FrameCounts {
    let Some(s) = e
        .find_property("stats")
        .and_then(|_| e.property::<Option<gst::Structure>>("stats"))
    else {
        return FrameCounts::default();
    };
    let get = |f: &str| s.get::<u64>(f).unwrap_or(0);
    FrameCounts {
        seen: get("frames"),
        sampled: get("sampled"),
        inferred: get("inferred"),
        dropped: get("dropped"),
        skipped_by_gate: get("skipped"),
    }
}

fn add(a: FrameCounts, b: FrameCounts) -> FrameCounts {
    FrameCounts {
        seen: a.seen + b.seen,
        sampled: a.sampled + b.sampled,
        inferred: a.inferred + b.inferred,
        dropped: a.dropped + b.dropped,
        skipped_by_gate: a.skipped_by_gate + b.skipped_by_gate,
    }
}

impl PipelineStatus {
    /// A pipeline about to start; `source` is how its source is shown (credentials hidden).
    pub(super) fn new(name: &str, source: String, metrics: PipelineMetrics) -> PipelineStatus {
        PipelineStatus {
            name: name.to_string(),
            source,
            state: Mutex::new(StateCell {
                state: PipelineState::Starting,
                since: Instant::now(),
                since_wall: jiff::Timestamp::now(),
                finished: false,
            }),
            restarts: AtomicU64::new(0),
            events: AtomicU64::new(0),
            last_error: Mutex::new(None),
            panics: Mutex::new((0, None)),
            element: Mutex::new(None),
            base: Mutex::new(FrameCounts::default()),
            metrics,
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> PipelineState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).state
    }

    pub(super) fn set_state(&self, state: PipelineState, finished: bool) {
        let mut cell = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if cell.state != state || cell.finished != finished {
            *cell = StateCell {
                state,
                since: Instant::now(),
                since_wall: jiff::Timestamp::now(),
                finished,
            };
        }
        drop(cell);
        self.metrics.set_state(state);
    }

    /// Restarts after failures so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Counts a restart after a failure (here and in the metrics).
    pub(super) fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.metrics.restarted();
    }

    /// Records why the last attempt failed.
    pub(super) fn set_last_error(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((jiff::Timestamp::now(), message));
    }

    /// Runs `f` (part of the pipeline's thread), catching a panic: it is counted (here and in
    /// the metrics), becomes the last error and makes [`health`] fail; `Err` with its message
    /// then. A panic is a bug, yet it must not leave a dead pipeline that `/status` shows as
    /// starting.
    pub(super) fn guarded<T>(&self, f: impl FnOnce() -> T) -> Result<T, String> {
        let payload = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(value) => return Ok(value),
            Err(payload) => payload,
        };
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        tracing::error!(pipeline = %self.name, panic = %message, "the pipeline's thread panicked");
        {
            let mut panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
            panics.0 += 1;
            panics.1 = Some(message.clone());
        }
        self.metrics.panicked();
        self.set_last_error(format!("panicked: {message}"));
        Err(message)
    }

    /// Counts an event of this pipeline.
    pub(super) fn event_counted(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Frame counters since the daemon started the pipeline, over all restarts.
    pub fn frames(&self) -> FrameCounts {
        let current = self
            .element
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(element_counts)
            .unwrap_or_default();
        add(self.frames_before(), current)
    }

    /// Frame counters of the attempts before the current one.
    pub(super) fn frames_before(&self) -> FrameCounts {
        *self.base.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `clipfilter` element of the attempt running, if any.
    pub(super) fn element(&self) -> Option<gst::Element> {
        self.element
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the counters of `element`, the `clipfilter` of the attempt starting.
    pub(super) fn attach(&self, element: &gst::Element) {
        *self.element.lock().unwrap_or_else(|p| p.into_inner()) = Some(element.clone());
    }

    /// Folds the finished element's counters into the base.
    pub(super) fn detach(&self) {
        let mut element = self.element.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = element.take() {
            let counts = element_counts(&e);
            let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
            *base = add(*base, counts);
        }
    }

    /// The `/status` entry.
    pub fn to_json(&self) -> serde_json::Value {
        let cell = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (state, since, since_wall, finished) =
            (cell.state, cell.since, cell.since_wall, cell.finished);
        drop(cell);
        let frames = self.frames();
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let panics = self.panics.lock().unwrap_or_else(|p| p.into_inner()).0;
        serde_json::json!({
            "name": self.name,
            "source": self.source,
            "state": state.as_str(),
            "finished": finished,
            "since": since_wall.to_string(),
            "seconds_in_state": since.elapsed().as_secs_f64(),
            "restarts": self.restarts(),
            "panics": panics,
            "events": self.events.load(Ordering::Relaxed),
            "frames": {
                "seen": frames.seen,
                "sampled": frames.sampled,
                "inferred": frames.inferred,
                "dropped": frames.dropped,
                "skipped": frames.skipped_by_gate,
            },
            "last_error": last_error.map(|(t, e)| serde_json::json!({"time": t.to_string(), "message": e})),
        })
    }
}

/// `Err` naming each pipeline whose thread panicked (since it was started with its current
/// configuration), for `/healthz`.
pub fn health<'a>(statuses: impl IntoIterator<Item = &'a PipelineStatus>) -> Result<(), String> {
    let panicked: Vec<String> = statuses
        .into_iter()
        .filter_map(|s| {
            let panics = s.panics.lock().unwrap_or_else(|p| p.into_inner());
            let message = panics.1.as_deref()?;
            Some(format!("pipeline {} panicked ({message})", s.name))
        })
        .collect();
    if panicked.is_empty() {
        Ok(())
    } else {
        Err(panicked.join("; "))
    }
}

/// Counts of pipelines per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub starting: usize,
    pub running: usize,
    pub backing_off: usize,
    pub stopped: usize,
}

impl StateCounts {
    /// The counts of the pipelines in `statuses`.
    pub fn of<'a>(statuses: impl IntoIterator<Item = &'a PipelineStatus>) -> StateCounts {
        let mut c = StateCounts::default();
        for status in statuses {
            match status.state() {
                PipelineState::Starting => c.starting += 1,
                PipelineState::Running => c.running += 1,
                PipelineState::BackingOff => c.backing_off += 1,
                PipelineState::Stopped => c.stopped += 1,
            }
        }
        c
    }
}

impl std::fmt::Display for StateCounts {
    /// "3 pipelines running, 1 backing off".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.starting + self.running + self.backing_off + self.stopped;
        if total == 0 {
            return f.write_str("no pipelines");
        }
        write!(
            f,
            "{} pipeline{} running",
            self.running,
            if self.running == 1 { "" } else { "s" }
        )?;
        for (n, what) in [
            (self.starting, "starting"),
            (self.backing_off, "backing off"),
            (self.stopped, "stopped"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::metrics::Metrics;

    #[test]
    fn status_json_follows_the_pipeline() {
        let metrics = Metrics::new();
        let status =
            PipelineStatus::new("cam1", "rtsp://***@cam/s".into(), metrics.pipeline("cam1"));
        let json = status.to_json();
        assert_eq!(json["name"], "cam1");
        assert_eq!(json["source"], "rtsp://***@cam/s");
        assert_eq!(json["state"], "starting");
        assert_eq!(json["finished"], false);
        assert_eq!(json["restarts"], 0);
        assert_eq!(json["events"], 0);
        assert_eq!(json["frames"]["seen"], 0);
        assert!(json["last_error"].is_null());
        assert!(
            json["since"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok()
        );

        status.set_last_error("source: could not connect".into());
        status.set_state(PipelineState::BackingOff, false);
        status.restarted();
        status.event_counted();
        status.event_counted();
        let json = status.to_json();
        assert_eq!(json["state"], "backing_off");
        assert_eq!(json["restarts"], 1);
        assert_eq!(json["events"], 2);
        assert_eq!(json["last_error"]["message"], "source: could not connect");
        let text = metrics.encode();
        assert!(
            text.contains("clipfilter_pipeline_restarts_total{pipeline=\"cam1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("clipfilter_pipeline_state{pipeline=\"cam1\",state=\"backing_off\"} 1\n"),
            "{text}"
        );

        status.set_state(PipelineState::Stopped, true);
        assert_eq!(status.to_json()["finished"], true);
        assert_eq!(status.state(), PipelineState::Stopped);
        let counts = StateCounts::of([&status]);
        assert_eq!(counts.to_string(), "0 pipelines running, 1 stopped");
    }

    #[test]
    fn a_panic_is_caught_and_reported() {
        let metrics = Metrics::new();
        let status = PipelineStatus::new("cam1", "file:///x".into(), metrics.pipeline("cam1"));
        let other = PipelineStatus::new("cam2", "file:///y".into(), metrics.pipeline("cam2"));
        assert_eq!(status.guarded(|| 7), Ok(7));
        assert_eq!(health([&status, &other]), Ok(()));
        assert_eq!(status.to_json()["panics"], 0);

        let caught = status.guarded(|| -> u32 { panic!("out of range: {}", 5000) });
        assert_eq!(caught, Err("out of range: 5000".into()));
        let json = status.to_json();
        assert_eq!(json["panics"], 1);
        assert_eq!(
            json["last_error"]["message"],
            "panicked: out of range: 5000"
        );
        assert_eq!(
            health([&status, &other]),
            Err("pipeline cam1 panicked (out of range: 5000)".into())
        );
        let text = metrics.encode();
        assert!(
            text.contains("clipfilter_pipeline_panics_total{pipeline=\"cam1\"} 1\n")
                && text.contains("clipfilter_pipeline_panics_total{pipeline=\"cam2\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn status_line() {
        let c = StateCounts {
            starting: 0,
            running: 3,
            backing_off: 1,
            stopped: 0,
        };
        assert_eq!(c.to_string(), "3 pipelines running, 1 backing off");
        assert_eq!(StateCounts::default().to_string(), "no pipelines");
    }
}
