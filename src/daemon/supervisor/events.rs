//! From the element's messages to daemon events: `clipfilter-match` messages become [`Event`]s
//! (with a JPEG snapshot for starts) handed to the pipeline's outputs through
//! [`crate::daemon::delivery::EventOutputs`]; `clipfilter-scores` feed the per-label score
//! histograms.

use std::collections::HashMap;
use std::sync::Arc;

use crate::daemon::console::live::LiveTap;
use crate::daemon::event::Event;
use crate::daemon::history::PipelineTap;
use crate::daemon::metrics::LabelMetrics;
use crate::daemon::supervisor::Shared;
use crate::daemon::supervisor::status::PipelineStatus;
use clipfilter::matcher::Transition;
use gstclipfilter::clipfilter::messages::{MatchMessage, Message};

/// Reports what one pipeline's `clipfilter` element says: its matches as events, its scores as
/// histograms, its label reloads in the log.
pub(super) struct Reporter {
    pipeline: String,
    /// Names of the outputs the events go to.
    outputs: Vec<String>,
    shared: Arc<Shared>,
    status: Arc<PipelineStatus>,
    labels: HashMap<String, LabelMetrics>,
    /// What this pipeline records in the sample history, when on.
    history: Option<PipelineTap>,
    /// What the console shows live.
    live: LiveTap,
}

impl Reporter {
    /// Reports for `pipeline` to `outputs`, counting its events in `status`.
    pub(super) fn new(
        pipeline: &str,
        outputs: Vec<String>,
        shared: Arc<Shared>,
        status: Arc<PipelineStatus>,
    ) -> Reporter {
        let history = shared.history.as_ref().map(|h| h.tap(pipeline));
        Reporter {
            history,
            live: shared.live.tap(pipeline),
            pipeline: pipeline.to_owned(),
            outputs,
            shared,
            status,
            labels: HashMap::new(),
        }
    }

    /// From now on, events go to `outputs` (a reload changed them).
    pub(super) fn set_outputs(&mut self, outputs: Vec<String>) {
        self.outputs = outputs;
    }

    /// A stream starts on `element` (a pipeline start, or after an end of stream): the history
    /// records a new stream, and the element is told to post what the history keeps.
    pub(super) fn stream_started(&mut self, element: Option<&gst::Element>) {
        if let Some(tap) = &mut self.history {
            if let Some(element) = element {
                PipelineTap::configure(element);
            }
            tap.stream_started();
        }
    }

    /// The stream ended (end of stream, stop, failure).
    pub(super) fn stream_ended(&mut self) {
        self.live.stream_ended();
        if let Some(tap) = &mut self.history {
            tap.stream_ended();
        }
    }

    /// Element messages of clipfilter: matches become events, scores feed the histograms.
    /// Other messages are left alone.
    pub(super) fn handle(&mut self, msg: &gst::Message) {
        match Message::parse(msg) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "unreadable clipfilter message"),
            Some(Ok(Message::Match(m))) => self.on_match(m),
            Some(Ok(Message::Scores(scores))) => {
                for (label, score) in scores.labels.iter().zip(&scores.scores) {
                    self.label(label).observe_score(*score as f32);
                }
                let element = self.status.element();
                self.live.scores(&scores, element.as_ref());
                if let Some(tap) = &mut self.history {
                    let frame = self.status.frames_before().seen + scores.position.frame;
                    tap.scores(&scores, frame, element.as_ref());
                }
            }
            Some(Ok(Message::LabelsReloaded(r))) => {
                tracing::info!(labels = %r.path.display(), "label set reloaded");
            }
        }
    }

    fn label(&mut self, label: &str) -> &LabelMetrics {
        self.labels
            .entry(label.to_owned())
            .or_insert_with(|| self.shared.metrics.label(&self.pipeline, label))
    }

    fn on_match(&mut self, m: MatchMessage) {
        let frame = self.status.frames_before().seen + m.position.frame;
        let label = m.label.clone();
        let state = m.transition;
        let (score, probability) = (m.score as f32, m.probability as f32);
        let mut event = Event::new(&self.pipeline, &label, state, score, probability, frame);
        let seconds = |t: Option<gst::ClockTime>| t.map(|t| t.nseconds() as f64 / 1e9);
        event.pts = seconds(m.position.pts);
        event.running_time = seconds(m.position.running_time);
        event.stream_time = seconds(m.position.stream_time);
        event.place = m.place.clone();
        if state == Transition::Start {
            self.label(&label).matched();
            if let Some(sample) = &m.snapshot {
                let store = self
                    .shared
                    .snapshots
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(store) = store {
                    match store.save(
                        event.id,
                        &self.pipeline,
                        sample,
                        event.place.as_ref().map(|p| p.rect),
                    ) {
                        Ok(path) => event.snapshot = path,
                        Err(e) => tracing::warn!(error = %e, "snapshot not saved"),
                    }
                }
            }
        }
        let reason = m.reason.name();
        let crop = event
            .place
            .as_ref()
            .map(|p| p.id.name.as_str())
            .unwrap_or("");
        tracing::info!(
            label = %label, state = %state, score, probability, frame, reason, crop,
            event_id = %event.id, "match {state}"
        );
        self.status.event_counted();
        self.live.event(&event);
        if let Some(tap) = &mut self.history {
            tap.event(&event, &m);
        }
        match self.shared.events.submit(&event, &self.outputs) {
            Ok(()) => {}
            // The outbox logs when the disk fills and when it has room again, not per event.
            Err(e) if e.is_disk_full() => {
                tracing::debug!(event_id = %event.id, "event refused (no space on the state disk)");
            }
            Err(e) => {
                tracing::error!(error = %e, event_id = %event.id, "event not queued for delivery");
            }
        }
    }
}
