//! What the element holds between `start()` and `stop()`, and the work done on it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::ClipFilterActionScope;
use super::messages::{LabelsReloaded, MatchMessage, Position, Reason, ScoresMessage};
use super::properties::{AUTO_SCENE_GATE, Rules};
use super::sampler::Sampler;
use super::stats::Counters;
use clipfilter::crops::{CropKind, CropPlan, CropScores, CropSpec, Placement, score_crops};
use clipfilter::engine::Engine;
use clipfilter::error::{Error, Result};
use clipfilter::gate::{GateConfig, SceneGate, Verdict as GateVerdict};
use clipfilter::labels::{Action, CompiledLabels, LabelSet};
use clipfilter::matcher::{Change, Matcher, Transition};
use clipfilter::preprocess::{PixelBox, PixelFormat, Preprocessor, YuvColor};
use clipfilter::watch::FileWatcher;
use clipfilter::worker::{Output, Stream};

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
    /// The crops (indices into the plan) inferred for it.
    pub(super) crops: Vec<usize>,
    /// The plan they belong to.
    pub(super) plan: u64,
}

/// A reloaded labels file, compiled on the watcher's thread, with the crops it makes.
pub(super) struct Reload {
    pub(super) set: LabelSet,
    pub(super) labels: CompiledLabels,
    pub(super) spec: CropSpec,
}

/// The crops of the current frame size and what is known of each.
pub(super) struct Crops {
    /// What to look at: the properties' and the label set's regions together.
    pub(super) spec: CropSpec,
    /// Built for the negotiated size (`None` before caps).
    pub(super) plan: Option<CropPlan>,
    /// Bumped with every new plan: verdicts for an older one are dropped.
    pub(super) generation: u64,
    /// One scene-change gate per crop.
    pub(super) gates: Vec<SceneGate>,
    /// The last embedding of each crop (`plan.len()` x dim) and whether it is there.
    pub(super) embeddings: Vec<f32>,
    pub(super) known: Vec<bool>,
    /// Indices of the crops inferred for the sample being submitted (reused).
    pub(super) chosen: Vec<usize>,
}

impl Crops {
    pub(super) fn new(spec: CropSpec) -> Self {
        Crops {
            spec,
            plan: None,
            generation: 0,
            gates: Vec::new(),
            embeddings: Vec::new(),
            known: Vec::new(),
            chosen: Vec::new(),
        }
    }

    /// Plans the crops of `width` x `height` frames afresh (new size or new spec).
    pub(super) fn replan(
        &mut self,
        pre: &Preprocessor,
        dim: usize,
        size: Option<(u32, u32)>,
    ) -> Result<()> {
        let plan = match size {
            Some((w, h)) => Some(CropPlan::new(&self.spec, pre, w, h)?),
            None => None,
        };
        let n = plan.as_ref().map_or(0, CropPlan::len);
        self.plan = plan;
        self.generation += 1;
        self.gates = vec![SceneGate::new(GateConfig::default()); n];
        self.embeddings = vec![0.0; n * dim];
        self.known = vec![false; n];
        Ok(())
    }

    /// Forgets every gate's reference frame (flush, reload, caps).
    pub(super) fn reset_gates(&mut self) {
        self.gates.iter_mut().for_each(SceneGate::reset);
    }
}

/// How often the `min_zscore` baselines are written (a `kill -9` loses at most this much).
const BASELINE_SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// Where the matcher's `min_zscore` baselines are saved (`baseline-file`), and when they
    /// last were.
    pub(super) baselines: Option<(std::path::PathBuf, std::time::Instant)>,
    /// Whether the labels whose baselines are still filling were named in a warning.
    pub(super) warming_told: bool,
    pub(super) crops: Crops,
    /// The last sample's scores over its crops.
    pub(super) scores: CropScores,
    /// Last (cosine, probability) of each label, for the ends that no sample decides.
    pub(super) last: Vec<(f32, f32)>,
    /// Last winning crop of each label (messages, and what `action-scope=region` paints).
    pub(super) places: Vec<Option<Placement>>,
    pub(super) video: Option<Video>,
    pub(super) segment: gst::FormattedSegment<gst::ClockTime>,
    pub(super) rules: Rules,
    pub(super) generation: u64,
    pub(super) sampler: Sampler,
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
            let place = c.index.and_then(|i| self.places.get(i).cloned().flatten());
            posts.push(Post::Element(
                MatchMessage {
                    transition: Transition::End,
                    label: c.label,
                    score: f64::from(cosine),
                    probability: f64::from(probability),
                    position: position.clone(),
                    reason,
                    place,
                    snapshot: None,
                }
                .to_structure(),
            ));
        }
        self.action = self.matcher.action(&self.labels);
    }

    /// The negotiated frame size.
    pub(super) fn size(&self) -> Option<(u32, u32)> {
        self.video
            .as_ref()
            .map(|v| (v.info.width(), v.info.height()))
    }

    /// Plans the crops afresh for the negotiated size and `self.crops.spec`.
    pub(super) fn replan(&mut self) -> Result<()> {
        let size = self.size();
        self.crops.replan(&self.pre, self.engine.dim(), size)
    }

    /// What blank or pixelate paint on a `width` x `height` frame now: the whole frame, or with
    /// `action-scope=region` the box of each painting label's winning crop (strongest last).
    pub(super) fn paint_areas(&self, width: u32, height: u32, out: &mut Vec<(Action, PixelBox)>) {
        out.clear();
        let whole = PixelBox::new(0, 0, width, height);
        match self.rules.action_scope {
            ClipFilterActionScope::Frame => {
                if matches!(self.action, Action::Blank | Action::Pixelate) {
                    out.push((self.action, whole));
                }
            }
            ClipFilterActionScope::Region => {
                for (i, label) in self.labels.labels.iter().enumerate() {
                    if !self.matcher.is_active(i)
                        || !matches!(label.action, Action::Blank | Action::Pixelate)
                    {
                        continue;
                    }
                    let area = self
                        .places
                        .get(i)
                        .and_then(Option::as_ref)
                        .map_or(whole, |p| p.rect.to_pixels(width, height));
                    out.push((label.action, area));
                }
                // Pixelate first, so that a blank box over it stays blank.
                out.sort_by_key(|(a, _)| matches!(a, Action::Blank));
            }
        }
    }

    /// Forgets verdicts in flight and ends open episodes.
    pub(super) fn reset_stream(&mut self, reason: Reason, posts: &mut Vec<Post>) {
        self.discard_below = self.next_seq;
        self.pending.clear();
        self.sampler.reset();
        self.crops.reset_gates();
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
        let old_places: Vec<(String, Option<Placement>)> = self
            .labels
            .labels
            .iter()
            .map(|l| l.name.clone())
            .zip(self.places.iter().cloned())
            .collect();
        let ended = self.matcher.rebind(&reload.labels);
        self.warming_told = false;
        let position = self.last_position.clone();
        for c in ended {
            let (cosine, probability) = old
                .iter()
                .find(|(n, _)| *n == c.label)
                .map_or((0.0, 0.0), |(_, s)| *s);
            let place = old_places
                .iter()
                .find(|(n, _)| *n == c.label)
                .and_then(|(_, p)| p.clone());
            posts.push(Post::Element(
                MatchMessage {
                    transition: Transition::End,
                    label: c.label,
                    score: f64::from(cosine),
                    probability: f64::from(probability),
                    position: position.clone(),
                    reason: Reason::Reload,
                    place,
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
        self.places = reload
            .labels
            .labels
            .iter()
            .map(|l| {
                old_places
                    .iter()
                    .find(|(n, _)| *n == l.name)
                    .and_then(|(_, p)| p.clone())
            })
            .collect();
        self.set = reload.set;
        self.labels = reload.labels;
        // The next sample is inferred and scored against the new labels, whatever the gate says.
        self.scores = CropScores::default();
        if reload.spec != self.crops.spec {
            self.crops.spec = reload.spec;
            if let Err(e) = self.replan() {
                posts.push(Post::Warning(format!(
                    "the reloaded regions cannot be used: {e}"
                )));
            }
        }
        self.crops.reset_gates();
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
            embeddings,
            images,
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
        let embeddings = match embeddings {
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
        counters
            .crops_inferred
            .fetch_add(images as u64, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        counters.latency_last_us.store(us, Ordering::Relaxed);
        counters.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        if pending.plan != self.crops.generation {
            // Crops of a plan that a new frame size or new regions replaced.
            return None;
        }
        let dim = self.engine.dim();
        if embeddings.len() != pending.crops.len() * dim {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return Some(format!(
                "{} floats of embeddings for {} crops",
                embeddings.len(),
                pending.crops.len()
            ));
        }
        for (&i, e) in pending.crops.iter().zip(embeddings.chunks_exact(dim)) {
            self.crops.embeddings[i * dim..(i + 1) * dim].copy_from_slice(e);
            self.crops.known[i] = true;
        }
        let plan = self.crops.plan.as_ref()?;
        if !self.crops.known.iter().all(|k| *k) {
            return None;
        }
        if let Err(e) = score_crops(
            &self.labels,
            &plan.crops,
            &self.crops.embeddings,
            &mut self.scores,
        ) {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return Some(e.to_string());
        }
        let places: Vec<Option<Placement>> = self
            .scores
            .winner
            .iter()
            .map(|w| w.and_then(|k| plan.crops.get(k)).map(|c| c.placement()))
            .collect();
        let inferred = pending.crops.len() as u32;
        // The embedding a sample history keeps: the whole frame's (else the first crop's).
        let embedding = if self.rules.post_embedding {
            let whole = plan
                .crops
                .iter()
                .position(|c| c.id.kind == CropKind::Frame)
                .unwrap_or(0);
            self.crops
                .embeddings
                .get(whole * dim..(whole + 1) * dim)
                .map(<[f32]>::to_vec)
        } else {
            None
        };
        self.apply_scores(
            &pending.position,
            pending.snapshot.as_ref(),
            Inference {
                latency,
                crops: inferred,
                places: Some(places),
                embedding,
            },
            posts,
        );
        None
    }

    /// Writes the matcher's baselines to `baseline-file` (when set and a label has one).
    pub(super) fn save_baselines(&mut self, posts: &mut Vec<Post>) {
        let Some((path, at)) = &mut self.baselines else {
            return;
        };
        *at = std::time::Instant::now();
        let baselines = self.matcher.baselines();
        if baselines.is_empty() {
            return;
        }
        if let Err(e) = clipfilter::matcher::save_baselines(path, &baselines) {
            posts.push(Post::Warning(format!(
                "saving the min_zscore baselines: {e}"
            )));
        }
    }

    /// Feeds `self.scores` (the verdict for the sample at `position`) to the matcher and posts
    /// what changed; `inference` says what was inferred for it.
    fn apply_scores(
        &mut self,
        position: &Position,
        frame: Option<&gst::Sample>,
        inference: Inference,
        posts: &mut Vec<Post>,
    ) {
        let Inference {
            latency,
            crops: inferred,
            places,
            embedding,
        } = inference;
        let snapshot = frame.filter(|_| self.rules.snapshot);
        let scores = &self.scores.scores;
        self.last.clear();
        self.last.extend(
            scores
                .cosine
                .iter()
                .copied()
                .zip(scores.probability.iter().copied()),
        );
        let changes = self.matcher.update(&self.labels, scores);
        if !self.warming_told {
            self.warming_told = true;
            let warming = self.matcher.warming(&self.labels);
            if !warming.is_empty() {
                posts.push(Post::Warning(format!(
                    "min_zscore: no match until the baseline is full: {}",
                    warming
                        .iter()
                        .map(|w| format!("`{}` has {} of {} samples", w.label, w.samples, w.needed))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if self
            .baselines
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= BASELINE_SAVE_EVERY)
        {
            self.save_baselines(posts);
        }
        let scores = &self.scores.scores;
        for c in changes {
            let (cosine, probability) = c
                .index
                .and_then(|i| self.last.get(i).copied())
                .unwrap_or((0.0, 0.0));
            // A start names the crop that made it; an end, where the label was matching.
            let place = c.index.and_then(|i| match (c.transition, &places) {
                (Transition::Start, Some(new)) => new.get(i).cloned().flatten(),
                _ => self.places.get(i).cloned().flatten(),
            });
            posts.push(Post::Element(
                MatchMessage {
                    transition: c.transition,
                    label: c.label,
                    score: f64::from(cosine),
                    probability: f64::from(probability),
                    position: position.clone(),
                    reason: Reason::Sample,
                    place,
                    snapshot: snapshot.cloned(),
                }
                .to_structure(),
            ));
        }
        if let Some(new) = places {
            self.places = new;
        }
        if self.rules.post_scores {
            let doubles = |v: &[f32]| v.iter().map(|x| f64::from(*x)).collect();
            posts.push(Post::Element(
                ScoresMessage {
                    position: position.clone(),
                    labels: self.labels.labels.iter().map(|l| l.name.clone()).collect(),
                    scores: doubles(&scores.cosine),
                    probabilities: doubles(&scores.probability),
                    places: self.places.clone(),
                    inferred,
                    latency,
                    labels_version: self.labels.version.clone(),
                    embedding,
                    image: frame
                        .filter(|_| self.rules.post_frame && inferred > 0)
                        .cloned(),
                }
                .to_structure(),
            ));
        }
        self.action = self.matcher.action(&self.labels);
    }

    /// A sample the scene-change gate skipped: the last verdict stands for it (so hysteresis
    /// counts it like a repeated frame), unless a verdict is still on its way.
    pub(super) fn repeat_last(&mut self, position: Position, posts: &mut Vec<Post>) {
        if !self.pending.is_empty() || self.scores.scores.cosine.len() != self.labels.labels.len() {
            return;
        }
        let snapshot = self.gate_snapshot.take();
        self.apply_scores(&position, snapshot.as_ref(), Inference::repeated(), posts);
    }

    /// Converts the sampled frame's crops to the model's input and queues them for inference
    /// as one job; `None` when the scene-change gates found every crop unchanged.
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
        let plan = self
            .crops
            .plan
            .as_ref()
            .ok_or_else(|| Error::invalid("caps", "no crops planned for the caps"))?;
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
        let chosen = &mut self.crops.chosen;
        chosen.clear();
        if threshold > 0.0 {
            let time = Duration::from_nanos(
                position
                    .stream_time
                    .or(position.running_time)
                    .map_or(0, |t| t.nseconds()),
            );
            let config = GateConfig {
                threshold: threshold as f32,
                ..GateConfig::default()
            };
            for (i, (crop, gate)) in plan.crops.iter().zip(&mut self.crops.gates).enumerate() {
                gate.set_config(config);
                if let GateVerdict::Infer(_) = gate.check_area(&frame_ref, crop.pixels, time) {
                    chosen.push(i);
                }
            }
            if chosen.is_empty() {
                counters.sampled.fetch_add(1, Ordering::Relaxed);
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                self.gate_snapshot = self.rules.snapshot.then(snapshot);
                return Ok(None);
            }
            // Crops with no embedding yet go along with any that changed.
            let known = &self.crops.known;
            let before = chosen.len();
            for i in (0..plan.len()).filter(|i| !known[*i]) {
                if !chosen[..before].contains(&i) {
                    chosen.push(i);
                }
            }
            chosen.sort_unstable();
        } else {
            chosen.extend(0..plan.len());
        }
        let mut pixels = self.stream.buffer_for(chosen.len());
        if let Err(e) = plan.preprocess(&mut self.pre, &frame_ref, chosen, &mut pixels) {
            self.stream.recycle(pixels);
            return Err(e);
        }
        let snapshot = (self.rules.snapshot || self.rules.post_frame).then(snapshot);
        drop(frame);
        let submitted = self.stream.submit(pixels)?;
        counters.sampled.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = submitted.replaced {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(k) = self.pending.iter().position(|p| p.seq == old) {
                let dropped = self.pending.remove(k).map(|p| p.crops).unwrap_or_default();
                // Their gates took the dropped frame as reference: look again next time.
                for i in dropped
                    .into_iter()
                    .filter(|i| !self.crops.chosen.contains(i))
                {
                    if let Some(g) = self.crops.gates.get_mut(i) {
                        g.reset();
                    }
                }
            }
        }
        self.next_seq = submitted.seq + 1;
        self.pending.push_back(Pending {
            seq: submitted.seq,
            position,
            snapshot,
            crops: self.crops.chosen.clone(),
            plan: self.crops.generation,
        });
        Ok(Some(submitted.seq))
    }
}

/// What was inferred for a verdict.
struct Inference {
    latency: Duration,
    /// Crops inferred for it (0: a repeated verdict).
    crops: u32,
    /// Where each label's best crop was (`None`: unchanged).
    places: Option<Vec<Option<Placement>>>,
    /// The frame's embedding, when inferred and posted.
    embedding: Option<Vec<f32>>,
}

impl Inference {
    /// A repeated verdict: nothing inferred.
    fn repeated() -> Self {
        Inference {
            latency: Duration::ZERO,
            crops: 0,
            places: None,
            embedding: None,
        }
    }
}
