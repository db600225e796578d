//! What the element holds between `start()` and `stop()`, and the work done on it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::messages::{LabelsReloaded, MatchMessage, Position, Reason, ScoresMessage};
use super::properties::{AUTO_SCENE_GATE, Rules};
use super::sampler::Sampler;
use super::stats::Counters;
use clipfilter::engine::Engine;
use clipfilter::error::{Error, Result};
use clipfilter::gate::{GateConfig, SceneGate, Verdict as GateVerdict};
use clipfilter::labels::{Action, CompiledLabels, LabelSet};
use clipfilter::matcher::{Change, Matcher, Transition};
use clipfilter::preprocess::{PixelFormat, Preprocessor, YuvColor};
use clipfilter::watch::FileWatcher;
use clipfilter::worker::{Output, Stream};
use clipfilter::zeroshot::Scores;

/// An outage posts a warning on its first dropped sample and every this many after.
const UNAVAILABLE_WARN_EVERY: u64 = 100;

/// The negotiated video format.
pub(super) struct Video {
    pub(super) info: gst_video::VideoInfo,
    pub(super) format: PixelFormat,
    pub(super) color: YuvColor,
    pub(super) caps: gst::Caps,
}

/// A sampled frame waiting for its verdict.
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) position: Position,
    pub(super) snapshot: Option<gst::Sample>,
}

/// A reloaded labels file, compiled on the watcher's thread.
pub(super) struct Reload {
    pub(super) set: LabelSet,
    pub(super) labels: CompiledLabels,
}

/// Something to post once the state lock is released.
pub(super) enum Post {
    Element(gst::Structure),
    Warning(String),
}

/// Everything the element builds in `start()` (and drops in `stop()`), used by the streaming
/// thread under one lock.
pub(super) struct State {
    pub(super) engine: Arc<Engine>,
    pub(super) stream: Stream,
    pub(super) pre: Preprocessor,
    pub(super) set: LabelSet,
    pub(super) labels: CompiledLabels,
    pub(super) matcher: Matcher,
    pub(super) scores: Scores,
    /// Last (cosine, probability) of each label, for the ends that no sample decides.
    pub(super) last: Vec<(f32, f32)>,
    pub(super) video: Option<Video>,
    pub(super) segment: gst::FormattedSegment<gst::ClockTime>,
    pub(super) rules: Rules,
    pub(super) generation: u64,
    pub(super) sampler: Sampler,
    pub(super) gate: SceneGate,
    /// Whether upstream is live, asked on the first sample when the gate is automatic.
    pub(super) gate_live: Option<bool>,
    /// The frame a gate-skipped sample would start a match with.
    pub(super) gate_snapshot: Option<gst::Sample>,
    pub(super) pending: VecDeque<Pending>,
    /// Verdicts for sequence numbers below this are from before a flush.
    pub(super) discard_below: u64,
    pub(super) next_seq: u64,
    pub(super) frame: u64,
    /// End of the last buffer seen.
    pub(super) last_position: Position,
    pub(super) action: Action,
    pub(super) passthrough: bool,
    pub(super) labels_path: Option<PathBuf>,
    pub(super) reloads: Receiver<Reload>,
    /// Stops (and joins) the watcher thread when the state is dropped.
    pub(super) _watcher: Option<FileWatcher>,
}

impl State {
    pub(super) fn needs_writable(labels: &CompiledLabels) -> bool {
        labels
            .labels
            .iter()
            .any(|l| matches!(l.action, Action::Blank | Action::Pixelate))
    }

    /// Where `buf` starts.
    pub(super) fn position(&self, buf: &gst::BufferRef, frame: u64) -> Position {
        self.position_at(buf.pts(), frame)
    }

    /// Where `buf` ends (its start plus its duration).
    pub(super) fn end_position(&self, buf: &gst::BufferRef, frame: u64) -> Position {
        let end = buf
            .pts()
            .map(|t| t + buf.duration().unwrap_or(gst::ClockTime::ZERO));
        self.position_at(end, frame)
    }

    fn position_at(&self, pts: Option<gst::ClockTime>, frame: u64) -> Position {
        Position {
            pts,
            running_time: pts.and_then(|t| self.segment.to_running_time(t)),
            stream_time: pts.and_then(|t| self.segment.to_stream_time(t)),
            frame,
        }
    }

    /// Frames per interval, for frames without timestamps.
    pub(super) fn untimed_every(&self) -> u64 {
        let Some(v) = &self.video else { return 1 };
        let fps = v.info.fps();
        if fps.numer() <= 0 || fps.denom() <= 0 {
            return 1;
        }
        let per_ns = fps.numer() as f64 / fps.denom() as f64 / 1e9;
        ((self.rules.interval as f64 * per_ns).round() as u64).max(1)
    }

    pub(super) fn end_messages(
        &mut self,
        changes: Vec<Change>,
        reason: Reason,
        posts: &mut Vec<Post>,
    ) {
        let position = self.last_position.clone();
        for c in changes {
            let (cosine, probability) = c
                .index
                .and_then(|i| self.last.get(i).copied())
                .unwrap_or((0.0, 0.0));
            posts.push(Post::Element(
                MatchMessage {
                    transition: Transition::End,
                    label: c.label,
                    score: f64::from(cosine),
                    probability: f64::from(probability),
                    position: position.clone(),
                    reason,
                    snapshot: None,
                }
                .to_structure(),
            ));
        }
        self.action = self.matcher.action(&self.labels);
    }

    /// Forgets verdicts in flight and ends open episodes.
    pub(super) fn reset_stream(&mut self, reason: Reason, posts: &mut Vec<Post>) {
        self.discard_below = self.next_seq;
        self.pending.clear();
        self.sampler.reset();
        self.gate.reset();
        let ended = self.matcher.end_all();
        self.end_messages(ended, reason, posts);
    }

    /// Uses a reloaded label set; labels that keep their name keep their state.
    pub(super) fn apply_reload(&mut self, reload: Reload, posts: &mut Vec<Post>) {
        // Scores of removed labels, for their end messages.
        let old: Vec<(String, (f32, f32))> = self
            .labels
            .labels
            .iter()
            .map(|l| l.name.clone())
            .zip(self.last.iter().copied())
            .collect();
        let ended = self.matcher.rebind(&reload.labels);
        let position = self.last_position.clone();
        for c in ended {
            let (cosine, probability) = old
                .iter()
                .find(|(n, _)| *n == c.label)
                .map_or((0.0, 0.0), |(_, s)| *s);
            posts.push(Post::Element(
                MatchMessage {
                    transition: Transition::End,
                    label: c.label,
                    score: f64::from(cosine),
                    probability: f64::from(probability),
                    position: position.clone(),
                    reason: Reason::Reload,
                    snapshot: None,
                }
                .to_structure(),
            ));
        }
        self.last = reload
            .labels
            .labels
            .iter()
            .map(|l| {
                old.iter()
                    .find(|(n, _)| *n == l.name)
                    .map_or((0.0, 0.0), |(_, s)| *s)
            })
            .collect();
        self.set = reload.set;
        self.labels = reload.labels;
        // The next sample is inferred and scored against the new labels, whatever the gate says.
        self.scores = Scores::default();
        self.gate.reset();
        self.action = self.matcher.action(&self.labels);
        if let Some(path) = &self.labels_path {
            let labels = self.labels.labels.iter().map(|l| l.name.clone()).collect();
            posts.push(Post::Element(
                LabelsReloaded {
                    path: path.clone(),
                    labels,
                }
                .to_structure(),
            ));
        }
    }

    /// Takes one verdict: scores it, updates the episodes and queues the messages. Returns the
    /// inference error, if inference failed.
    pub(super) fn take_output(
        &mut self,
        out: Output,
        counters: &Counters,
        posts: &mut Vec<Post>,
    ) -> Option<String> {
        let Output {
            seq,
            embedding,
            latency,
            pixels,
            ..
        } = out;
        self.stream.recycle(pixels);
        if seq < self.discard_below {
            return None;
        }
        while self.pending.front().is_some_and(|p| p.seq < seq) {
            self.pending.pop_front();
        }
        let pending = self
            .pending
            .front()
            .is_some_and(|p| p.seq == seq)
            .then(|| self.pending.pop_front())
            .flatten()?;
        let embedding = match embedding {
            Ok(e) => e,
            Err(f) if f.unavailable => {
                // Dropped, not failed: the worker logs the outage once, and the last verdict
                // (and action) stands until an endpoint is back.
                let n = counters.unavailable.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(UNAVAILABLE_WARN_EVERY) {
                    posts.push(Post::Warning(format!(
                        "inference unavailable, samples dropped ({n} so far): {f}"
                    )));
                }
                return None;
            }
            Err(f) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return Some(f.message);
            }
        };
        counters.inferred.fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        counters.latency_last_us.store(us, Ordering::Relaxed);
        counters.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        if let Err(e) = self.labels.score_into(&embedding, &mut self.scores) {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return Some(e.to_string());
        }
        self.apply_scores(&pending.position, pending.snapshot.as_ref(), latency, posts);
        None
    }

    /// Feeds `self.scores` (the verdict for the sample at `position`) to the matcher and posts
    /// what changed.
    fn apply_scores(
        &mut self,
        position: &Position,
        snapshot: Option<&gst::Sample>,
        latency: Duration,
        posts: &mut Vec<Post>,
    ) {
        self.last.clear();
        self.last.extend(
            self.scores
                .cosine
                .iter()
                .copied()
                .zip(self.scores.probability.iter().copied()),
        );
        for c in self.matcher.update(&self.labels, &self.scores) {
            let (cosine, probability) = c
                .index
                .and_then(|i| self.last.get(i).copied())
                .unwrap_or((0.0, 0.0));
            posts.push(Post::Element(
                MatchMessage {
                    transition: c.transition,
                    label: c.label,
                    score: f64::from(cosine),
                    probability: f64::from(probability),
                    position: position.clone(),
                    reason: Reason::Sample,
                    snapshot: snapshot.cloned(),
                }
                .to_structure(),
            ));
        }
        if self.rules.post_scores {
            let doubles = |v: &[f32]| v.iter().map(|x| f64::from(*x)).collect();
            posts.push(Post::Element(
                ScoresMessage {
                    position: position.clone(),
                    labels: self.labels.labels.iter().map(|l| l.name.clone()).collect(),
                    scores: doubles(&self.scores.cosine),
                    probabilities: doubles(&self.scores.probability),
                    latency,
                }
                .to_structure(),
            ));
        }
        self.action = self.matcher.action(&self.labels);
    }

    /// A sample the scene-change gate skipped: the last verdict stands for it (so hysteresis
    /// counts it like a repeated frame), unless a verdict is still on its way.
    pub(super) fn repeat_last(&mut self, position: Position, posts: &mut Vec<Post>) {
        if !self.pending.is_empty() || self.scores.cosine.len() != self.labels.labels.len() {
            return;
        }
        let snapshot = self.gate_snapshot.take();
        self.apply_scores(&position, snapshot.as_ref(), Duration::ZERO, posts);
    }

    /// Converts the sampled frame to the model's input and queues it for inference; `None`
    /// when the scene-change gate found it unchanged.
    pub(super) fn submit(
        &mut self,
        buf: &gst::BufferRef,
        position: Position,
        counters: &Counters,
    ) -> Result<Option<u64>> {
        let video = self
            .video
            .as_ref()
            .ok_or_else(|| Error::invalid("caps", "a buffer arrived before the caps"))?;
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &video.info)
            .map_err(|e| Error::invalid("frame", format!("cannot map the buffer: {e}")))?;
        let frame_ref = crate::video_frame::frame_ref(&frame, video.format, video.color)?;
        let snapshot = || {
            gst::Sample::builder()
                .buffer(&buf.to_owned())
                .caps(&video.caps)
                .segment(&self.segment)
                .build()
        };
        let threshold = match (self.rules.scene_gate, self.gate_live) {
            (t, _) if t >= 0.0 => t,
            (_, Some(true)) => AUTO_SCENE_GATE,
            _ => 0.0,
        };
        if threshold > 0.0 {
            self.gate.set_config(GateConfig {
                threshold: threshold as f32,
                ..GateConfig::default()
            });
            let time = Duration::from_nanos(
                position
                    .stream_time
                    .or(position.running_time)
                    .map_or(0, |t| t.nseconds()),
            );
            if let GateVerdict::Skip(_) = self.gate.check(&frame_ref, time) {
                counters.sampled.fetch_add(1, Ordering::Relaxed);
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                self.gate_snapshot = self.rules.snapshot.then(snapshot);
                return Ok(None);
            }
        }
        let mut pixels = self.stream.buffer();
        if let Err(e) = self.pre.run(&frame_ref, &mut pixels) {
            self.stream.recycle(pixels);
            return Err(e);
        }
        let snapshot = self.rules.snapshot.then(snapshot);
        drop(frame);
        let submitted = self.stream.submit(pixels)?;
        counters.sampled.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = submitted.replaced {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.pending.retain(|p| p.seq != old);
        }
        self.next_seq = submitted.seq + 1;
        self.pending.push_back(Pending {
            seq: submitted.seq,
            position,
            snapshot,
        });
        Ok(Some(submitted.seq))
    }
}
