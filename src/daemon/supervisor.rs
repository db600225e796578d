//! Supervision of the pipelines: one thread per pipeline, restarts with backoff, events out.
//!
//! Each pipeline runs on its own thread, which builds the GStreamer pipeline, watches its bus
//! (through a sync handler feeding a channel) and decides what happens next:
//!
//! - an error, an end of stream from a live source, or no frames for `restart.stall_timeout`:
//!   the pipeline is torn down and started again after an exponential backoff with jitter
//!   (`restart.initial`, doubling up to `restart.max`; reset after a healthy run);
//! - a looping file reaches its end: a segment seek starts it again without a restart (when the
//!   demuxer cannot, a flushing seek; when that fails too, a restart that is not a failure);
//! - a file that does not loop ends: the pipeline is `stopped` (finished) until reconfigured.
//!
//! Failures stay inside their thread: the other pipelines and the daemon carry on.
//!
//! `clipfilter-match` messages become [`Event`]s (with a JPEG snapshot for starts) handed to
//! [`Delivery`]; `clipfilter-scores` feed the per-label score histograms. Each pipeline's state,
//! restarts, last error and frame counters are in a [`PipelineStatus`] that `/status` and the
//! metrics read. Frame counters add up over restarts, so they never go back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use gst::prelude::*;

use crate::daemon::backoff::Backoff;
use crate::daemon::config::{PipelineConfig, RestartPolicy};
use crate::daemon::delivery::Delivery;
use crate::daemon::event::Event;
use crate::daemon::metrics::{FrameCounts, LabelMetrics, Metrics, PipelineMetrics, PipelineState};
use crate::daemon::pipeline::{self, ElementModel};
use crate::daemon::secret::redact;
use crate::daemon::snapshot::SnapshotStore;
use crate::error::{Error, Result};
use clipfilter::matcher::Transition;
use gstclipfilter::clipfilter::messages::{MatchMessage, Message};

/// After this long running with frames flowing, the next failure starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a stopping pipeline with its own sink waits for the end of stream to reach it (so
/// that a file it writes is finished).
const EOS_WAIT: Duration = Duration::from_secs(5);
/// How often a pipeline thread looks at its frame counter.
const TICK: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Where events go.

/// The event delivery in use; replaced when a reload changes the outputs.
#[derive(Debug, Default)]
pub struct EventSink {
    delivery: RwLock<Option<Delivery>>,
    submitted: AtomicU64,
}

impl EventSink {
    /// A sink around a started delivery.
    pub fn new(delivery: Delivery) -> EventSink {
        EventSink {
            delivery: RwLock::new(Some(delivery)),
            submitted: AtomicU64::new(0),
        }
    }

    /// Writes `event` durably for `outputs` (see [`Delivery::submit`]).
    pub fn submit(&self, event: &Event, outputs: &[String]) -> Result<()> {
        let guard = self.delivery.read().unwrap_or_else(|p| p.into_inner());
        let delivery = guard
            .as_ref()
            .ok_or_else(|| Error::worker("event delivery is not running"))?;
        delivery.submit(event, outputs)?;
        self.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Events submitted since the start.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Events waiting per output.
    pub fn pending_counts(&self) -> BTreeMap<String, u64> {
        let guard = self.delivery.read().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(Delivery::pending_counts)
            .unwrap_or_default()
    }

    /// Stops the delivery in use and starts another with `start` (pipelines wait meanwhile).
    /// When `start` fails, nothing delivers until the next successful replacement.
    pub fn replace(&self, start: impl FnOnce() -> Result<Delivery>) -> Result<()> {
        let mut guard = self.delivery.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = guard.take() {
            old.shutdown();
        }
        *guard = Some(start()?);
        Ok(())
    }

    /// Stops the delivery (pending events stay in the outbox).
    pub fn shutdown(&self) {
        let mut guard = self.delivery.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = guard.take() {
            old.shutdown();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status.

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
    fn new(name: &str, source: String, metrics: PipelineMetrics) -> PipelineStatus {
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

    fn set_state(&self, state: PipelineState, finished: bool) {
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

    /// Frame counters since the daemon started the pipeline, over all restarts.
    pub fn frames(&self) -> FrameCounts {
        let current = self
            .element
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(element_counts)
            .unwrap_or_default();
        add(
            *self.base.lock().unwrap_or_else(|p| p.into_inner()),
            current,
        )
    }

    fn attach(&self, element: &gst::Element) {
        *self.element.lock().unwrap_or_else(|p| p.into_inner()) = Some(element.clone());
    }

    /// Folds the finished element's counters into the base.
    fn detach(&self) {
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
        serde_json::json!({
            "name": self.name,
            "source": self.source,
            "state": state.as_str(),
            "finished": finished,
            "since": since_wall.to_string(),
            "seconds_in_state": since.elapsed().as_secs_f64(),
            "restarts": self.restarts(),
            "events": self.events.load(Ordering::Relaxed),
            "frames": {
                "seen": frames.seen,
                "sampled": frames.sampled,
                "inferred": frames.inferred,
                "dropped": frames.dropped,
            },
            "last_error": last_error.map(|(t, e)| serde_json::json!({"time": t.to_string(), "message": e})),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One pipeline's thread.

/// What every pipeline thread shares.
#[derive(Debug)]
pub struct Shared {
    pub events: Arc<EventSink>,
    pub snapshots: RwLock<Option<Arc<SnapshotStore>>>,
    pub metrics: Arc<Metrics>,
    pub restart: RwLock<RestartPolicy>,
}

enum Control {
    Stop,
    Outputs(Vec<String>),
}

/// How one attempt to run the pipeline ended.
enum Outcome {
    /// Told to stop.
    Stop,
    /// A file that does not loop reached its end.
    Finished,
    /// Start again at once, not a failure (a looping file that cannot seek).
    Again,
    /// A failure: restart after the backoff. `healthy`: it ran well for a while first.
    Failed { message: String, healthy: bool },
}

struct Runner {
    config: PipelineConfig,
    model: ElementModel,
    outputs: Vec<String>,
    shared: Arc<Shared>,
    status: Arc<PipelineStatus>,
    control: Receiver<Control>,
    labels: HashMap<String, LabelMetrics>,
    /// Words to hide in messages (a source password).
    secrets: Vec<String>,
}

impl Runner {
    fn run(mut self) {
        let _span = tracing::info_span!("pipeline", name = %self.config.name).entered();
        tracing::info!(source = %self.config.source.display(), "pipeline starting");
        let mut backoff = {
            let policy = *self
                .shared
                .restart
                .read()
                .unwrap_or_else(|p| p.into_inner());
            Backoff::new(policy.initial, policy.max)
        };
        loop {
            self.status.set_state(PipelineState::Starting, false);
            match self.attempt() {
                Outcome::Stop => break,
                Outcome::Finished => {
                    tracing::info!("the file ended: pipeline finished");
                    self.status.set_state(PipelineState::Stopped, true);
                    // Wait until removed, changed or shut down.
                    loop {
                        match self.control.recv() {
                            Ok(Control::Outputs(o)) => self.outputs = o,
                            Ok(Control::Stop) | Err(_) => return,
                        }
                    }
                }
                Outcome::Again => continue,
                Outcome::Failed { message, healthy } => {
                    if healthy {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    *self
                        .status
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) =
                        Some((jiff::Timestamp::now(), message.clone()));
                    self.status.set_state(PipelineState::BackingOff, false);
                    tracing::error!(
                        error = %message,
                        retry_in = ?delay,
                        attempt = backoff.attempts(),
                        "pipeline failed; restarting after a pause"
                    );
                    let deadline = Instant::now() + delay;
                    loop {
                        match self.control.recv_deadline(deadline) {
                            Ok(Control::Outputs(o)) => self.outputs = o,
                            Ok(Control::Stop) => {
                                self.status.set_state(PipelineState::Stopped, false);
                                return;
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                                self.status.set_state(PipelineState::Stopped, false);
                                return;
                            }
                        }
                    }
                    self.status.restarts.fetch_add(1, Ordering::Relaxed);
                    self.status.metrics.restarted();
                }
            }
        }
        self.status.set_state(PipelineState::Stopped, false);
        tracing::info!("pipeline stopped");
    }

    fn attempt(&mut self) -> Outcome {
        let built = match pipeline::build(&self.config, &self.model) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Failed {
                    message: redact(&e.to_string(), &self.secrets),
                    healthy: false,
                };
            }
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let Some(bus) = built.pipeline.bus() else {
            return Outcome::Failed {
                message: "the pipeline has no bus".into(),
                healthy: false,
            };
        };
        bus.set_sync_handler(move |_, msg| {
            let _ = tx.send(msg.clone());
            gst::BusSyncReply::Drop
        });
        self.status.attach(&built.filter);
        let outcome = self.play(&built, &rx);
        if matches!(outcome, Outcome::Stop) && built.custom_sink {
            // Let the sink finish what it writes.
            built.pipeline.send_event(gst::event::Eos::new());
            let deadline = Instant::now() + EOS_WAIT;
            while let Ok(msg) = rx.recv_deadline(deadline) {
                match msg.view() {
                    gst::MessageView::Eos(_) | gst::MessageView::Error(_) => break,
                    _ => self.handle_event_message(&msg),
                }
            }
        }
        if let Err(e) = built.pipeline.set_state(gst::State::Null) {
            tracing::warn!(error = %e, "pipeline did not stop cleanly");
        }
        // Ends of matches posted while stopping are events too.
        while let Ok(msg) = rx.try_recv() {
            self.handle_event_message(&msg);
        }
        bus.unset_sync_handler();
        self.status.detach();
        outcome
    }

    fn play(&mut self, built: &pipeline::Built, rx: &Receiver<gst::Message>) -> Outcome {
        let pipeline = &built.pipeline;
        let started = Instant::now();
        let live = match pipeline.set_state(gst::State::Playing) {
            Ok(gst::StateChangeSuccess::NoPreroll) => true,
            Ok(_) => false,
            Err(_) => {
                // The element that failed posted why.
                let deadline = Instant::now() + Duration::from_secs(1);
                while let Ok(msg) = rx.recv_deadline(deadline) {
                    if let gst::MessageView::Error(e) = msg.view() {
                        return self.failed(&msg, e, false);
                    }
                }
                return Outcome::Failed {
                    message: "the pipeline could not start".into(),
                    healthy: false,
                };
            }
        };
        let looping = self.config.source.options.looping;
        let mut segment_seek_done = false;
        let mut running_since: Option<Instant> = None;
        let mut last_frames = 0u64;
        let mut last_progress = Instant::now();
        let mut buffering = false;
        loop {
            select! {
                recv(self.control) -> c => match c {
                    Ok(Control::Outputs(o)) => self.outputs = o,
                    Ok(Control::Stop) | Err(_) => return Outcome::Stop,
                },
                recv(rx) -> msg => {
                    let Ok(msg) = msg else { return Outcome::Stop };
                    let healthy = running_since.is_some_and(|t| t.elapsed() >= HEALTHY_RUN);
                    match msg.view() {
                        gst::MessageView::Error(e) => return self.failed(&msg, e, healthy),
                        gst::MessageView::Eos(_) => {
                            if looping {
                                tracing::debug!("end of file: looping with a flushing seek");
                                if seek_start(pipeline, true) {
                                    continue;
                                }
                                tracing::info!("the file cannot seek: restarting it to loop");
                                return Outcome::Again;
                            }
                            if self.config.source.eos_is_failure() {
                                return Outcome::Failed {
                                    message: "the stream ended (end of stream from a live source)".into(),
                                    healthy,
                                };
                            }
                            return Outcome::Finished;
                        }
                        gst::MessageView::SegmentDone(_) => {
                            if !seek_start(pipeline, false) && !seek_start(pipeline, true) {
                                return Outcome::Again;
                            }
                        }
                        gst::MessageView::AsyncDone(_) => {
                            if looping && !segment_seek_done && msg.src() == Some(pipeline.upcast_ref()) {
                                segment_seek_done = true;
                                if !seek_start(pipeline, true) {
                                    tracing::debug!("segment seek refused: looping on end of stream");
                                }
                            }
                        }
                        gst::MessageView::StateChanged(s) => {
                            if msg.src() == Some(pipeline.upcast_ref())
                                && s.current() == gst::State::Playing
                                && running_since.is_none()
                            {
                                running_since = Some(Instant::now());
                                self.status.set_state(PipelineState::Running, false);
                                tracing::info!(after = ?started.elapsed(), "pipeline running");
                            }
                        }
                        gst::MessageView::Buffering(b) if !live => {
                            let percent = b.percent();
                            if percent < 100 && !buffering {
                                buffering = true;
                                let _ = pipeline.set_state(gst::State::Paused);
                            } else if percent >= 100 && buffering {
                                buffering = false;
                                let _ = pipeline.set_state(gst::State::Playing);
                            }
                        }
                        gst::MessageView::Latency(_) => {
                            let _ = pipeline.recalculate_latency();
                        }
                        gst::MessageView::ClockLost(_) => {
                            let _ = pipeline.set_state(gst::State::Paused);
                            let _ = pipeline.set_state(gst::State::Playing);
                        }
                        gst::MessageView::Warning(w) => {
                            let text = self.describe(&msg, &w.error().to_string(), w.debug().as_deref());
                            tracing::warn!("{text}");
                        }
                        _ => self.handle_event_message(&msg),
                    }
                },
                default(TICK) => {}
            }
            // Stall watch: frames must keep arriving (unless the file ended, or buffering).
            let frames = self.status.frames().seen;
            if frames != last_frames || buffering {
                last_frames = frames;
                last_progress = Instant::now();
            }
            let stall = self
                .shared
                .restart
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .stall_timeout;
            if let Some(stall) = stall
                && last_progress.elapsed() > stall
            {
                let healthy = running_since.is_some_and(|t| t.elapsed() >= HEALTHY_RUN + stall);
                return Outcome::Failed {
                    message: format!(
                        "no frames for {:.0?} ({})",
                        stall,
                        if running_since.is_some() {
                            "the source stalled"
                        } else {
                            "the source did not start"
                        }
                    ),
                    healthy,
                };
            }
        }
    }

    fn failed(&self, msg: &gst::Message, e: &gst::message::Error, healthy: bool) -> Outcome {
        let message = self.describe(msg, &e.error().to_string(), e.debug().as_deref());
        Outcome::Failed { message, healthy }
    }

    /// One line for an error or warning from the bus: who, what, and why (credentials hidden).
    fn describe(&self, msg: &gst::Message, text: &str, debug: Option<&str>) -> String {
        let from = match msg.src().map(|s| s.name().to_string()) {
            // The element reading the URI: name what it reads instead.
            Some(name) if name == "source" => self.config.source.display(),
            Some(name) => name,
            None => String::new(),
        };
        let text = redact(text, &self.secrets);
        let details = debug.map(|d| redact(d, &self.secrets)).unwrap_or_default();
        tracing::debug!(from = %from, details = %details, "{text}");
        // GStreamer's debug text is "file(line): function (): element path:\nwhat happened".
        let what = details
            .split_once('\n')
            .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        if what.is_empty() {
            format!("{from}: {text}")
        } else {
            format!("{from}: {text} {what}")
        }
    }

    /// Element messages of clipfilter: matches become events, scores feed the histograms.
    fn handle_event_message(&mut self, msg: &gst::Message) {
        match Message::parse(msg) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "unreadable clipfilter message"),
            Some(Ok(Message::Match(m))) => self.on_match(m),
            Some(Ok(Message::Scores(scores))) => {
                for (label, score) in scores.labels.iter().zip(&scores.scores) {
                    let metrics = self
                        .labels
                        .entry(label.clone())
                        .or_insert_with(|| self.shared.metrics.label(&self.config.name, label));
                    metrics.observe_score(*score as f32);
                }
            }
            Some(Ok(Message::LabelsReloaded(r))) => {
                tracing::info!(labels = %r.path.display(), "label set reloaded");
            }
        }
    }

    fn on_match(&mut self, m: MatchMessage) {
        let base = self
            .status
            .base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen;
        let frame = base + m.position.frame;
        let label = m.label;
        let state = m.transition;
        let (score, probability) = (m.score as f32, m.probability as f32);
        let mut event = Event::new(&self.config.name, &label, state, score, probability, frame);
        let seconds = |t: Option<gst::ClockTime>| t.map(|t| t.nseconds() as f64 / 1e9);
        event.pts = seconds(m.position.pts);
        event.running_time = seconds(m.position.running_time);
        event.stream_time = seconds(m.position.stream_time);
        if state == Transition::Start {
            self.labels
                .entry(label.clone())
                .or_insert_with(|| self.shared.metrics.label(&self.config.name, &label))
                .matched();
            if let Some(sample) = &m.snapshot {
                let store = self
                    .shared
                    .snapshots
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(store) = store {
                    match store.save(event.id, &self.config.name, sample) {
                        Ok(path) => event.snapshot = Some(path),
                        Err(e) => tracing::warn!(error = %e, "snapshot not saved"),
                    }
                }
            }
        }
        let reason = m.reason.name();
        tracing::info!(
            label = %label, state = %state, score, probability, frame, reason,
            event_id = %event.id, "match {state}"
        );
        self.status.events.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.shared.events.submit(&event, &self.outputs) {
            tracing::error!(error = %e, event_id = %event.id, "event not queued for delivery");
        }
    }
}

/// Seeks to the start: a flushing segment seek (the first, or after an end of stream), or a
/// non-flushing one (after a segment ended) for a gapless loop. False when refused.
fn seek_start(pipeline: &gst::Pipeline, flush: bool) -> bool {
    let mut flags = gst::SeekFlags::SEGMENT;
    if flush {
        flags |= gst::SeekFlags::FLUSH;
    }
    pipeline
        .seek(
            1.0,
            flags,
            gst::SeekType::Set,
            gst::ClockTime::ZERO,
            gst::SeekType::None,
            gst::ClockTime::NONE,
        )
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// The set of pipelines.

struct Handle {
    config: PipelineConfig,
    model: ElementModel,
    status: Arc<PipelineStatus>,
    control: Sender<Control>,
    thread: JoinHandle<()>,
}

/// What a call to [`Supervisor::apply`] did, by pipeline name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    /// Only the outputs changed: updated in place.
    pub updated: Vec<String>,
    pub untouched: Vec<String>,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "added: {}; removed: {}; restarted: {}; outputs updated: {}; untouched: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.restarted),
            list(&self.updated),
            list(&self.untouched)
        )
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

/// The running pipelines.
pub struct Supervisor {
    shared: Arc<Shared>,
    handles: BTreeMap<String, Handle>,
    list: Arc<RwLock<Vec<Arc<PipelineStatus>>>>,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("pipelines", &self.handles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor with no pipelines yet.
    pub fn new(shared: Arc<Shared>) -> Supervisor {
        Supervisor {
            shared,
            handles: BTreeMap::new(),
            list: Arc::new(RwLock::new(Vec::new())),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What the pipeline threads share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The statuses of the pipelines, in name order (shared with `/status` and the metrics).
    pub fn statuses(&self) -> Arc<RwLock<Vec<Arc<PipelineStatus>>>> {
        self.list.clone()
    }

    /// Pipelines per state.
    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for h in self.handles.values() {
            match h.status.state() {
                PipelineState::Starting => c.starting += 1,
                PipelineState::Running => c.running += 1,
                PipelineState::BackingOff => c.backing_off += 1,
                PipelineState::Stopped => c.stopped += 1,
            }
        }
        c
    }

    /// Makes the running set match `configs`: new names start, missing names stop, changed
    /// pipelines (or all, with a new `model`) restart, pipelines whose outputs alone changed are
    /// updated in place, the others are not touched.
    pub fn apply(&mut self, configs: &[PipelineConfig], model: &ElementModel) -> Changes {
        let mut changes = Changes::default();
        let mut stop: Vec<String> = Vec::new();
        for name in self.handles.keys() {
            if !configs.iter().any(|c| &c.name == name) {
                changes.removed.push(name.clone());
                stop.push(name.clone());
            }
        }
        let mut start: Vec<&PipelineConfig> = Vec::new();
        for config in configs {
            match self.handles.get(&config.name) {
                None => {
                    changes.added.push(config.name.clone());
                    start.push(config);
                }
                Some(h) => {
                    let same_but_outputs = PipelineConfig {
                        outputs: h.config.outputs.clone(),
                        ..config.clone()
                    } == h.config;
                    if !same_but_outputs || &h.model != model {
                        changes.restarted.push(config.name.clone());
                        stop.push(config.name.clone());
                        start.push(config);
                    } else if h.config.outputs != config.outputs {
                        changes.updated.push(config.name.clone());
                    } else {
                        changes.untouched.push(config.name.clone());
                    }
                }
            }
        }
        self.stop(&stop);
        for name in &changes.updated {
            if let (Some(h), Some(c)) = (
                self.handles.get_mut(name),
                configs.iter().find(|c| &c.name == name),
            ) {
                h.config.outputs = c.outputs.clone();
                let _ = h.control.send(Control::Outputs(c.outputs.clone()));
            }
        }
        for config in start {
            match self.spawn(config, model) {
                Ok(h) => {
                    self.handles.insert(config.name.clone(), h);
                }
                Err(e) => {
                    tracing::error!(pipeline = %config.name, error = %e, "cannot start the pipeline thread")
                }
            }
        }
        self.publish();
        changes
    }

    fn spawn(&self, config: &PipelineConfig, model: &ElementModel) -> Result<Handle> {
        let metrics = self.shared.metrics.pipeline(&config.name);
        let status = Arc::new(PipelineStatus::new(
            &config.name,
            config.source.display(),
            metrics,
        ));
        let reader = Arc::downgrade(&status);
        self.shared.metrics.set_frame_source(&config.name, move || {
            reader.upgrade().map(|s| s.frames()).unwrap_or_default()
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let secrets = config
            .source
            .options
            .password
            .iter()
            .map(|p| p.expose().to_string())
            .collect();
        let runner = Runner {
            config: config.clone(),
            model: model.clone(),
            outputs: config.outputs.clone(),
            shared: self.shared.clone(),
            status: status.clone(),
            control: rx,
            labels: HashMap::new(),
            secrets,
        };
        let thread = std::thread::Builder::new()
            .name(format!("pipe-{}", config.name))
            .spawn(move || runner.run())
            .map_err(|e| Error::worker(format!("cannot start a thread: {e}")))?;
        Ok(Handle {
            config: config.clone(),
            model: model.clone(),
            status,
            control: tx,
            thread,
        })
    }

    /// Stops the named pipelines (all at once) and waits for their threads.
    fn stop(&mut self, names: &[String]) {
        let handles: Vec<Handle> = names
            .iter()
            .filter_map(|n| self.handles.remove(n))
            .collect();
        for h in &handles {
            let _ = h.control.send(Control::Stop);
        }
        for h in handles {
            if h.thread.join().is_err() {
                tracing::error!(pipeline = %h.config.name, "pipeline thread panicked");
            }
            if !self.stopping.load(Ordering::Relaxed) {
                self.shared.metrics.remove_pipeline(&h.config.name);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let list = self.handles.values().map(|h| h.status.clone()).collect();
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = list;
    }

    /// Stops every pipeline.
    pub fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let names: Vec<String> = self.handles.keys().cloned().collect();
        self.stop(&names);
    }

    /// Whether any pipeline thread ended on its own (a panic): the supervisor is then unhealthy.
    pub fn dead_threads(&self) -> Vec<String> {
        self.handles
            .iter()
            .filter(|(_, h)| h.thread.is_finished())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
