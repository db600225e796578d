//! The `clipfilter` element's implementation (see the parent module for what it does).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

use clipfilter::crops::CropScores;
use clipfilter::engine::Engine;
use clipfilter::error::{Error, Result};
use clipfilter::labels::{Action, LabelSet};
use clipfilter::limits;
use clipfilter::matcher::Matcher;
use clipfilter::preprocess::{PixelBox, PixelFormat};
use clipfilter::watch::FileWatcher;
use clipfilter::worker::StreamOptions;

use super::ClipFilterMode;
use super::actions::{self, PlaneMut};
use super::messages::{Position, Reason};
use super::properties::{self as props, Settings};
use super::sampler::Sampler;
use super::state::{Crops, Post, Reload, State, Video};
use super::stats::Counters;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "clipfilter",
        gst::DebugColorFlags::empty(),
        Some("CLIP zero-shot matching of video frames"),
    )
});

/// Quiet time after the last change of a labels file before it is reloaded.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
/// How often a waiting streaming thread looks for a flush.
const WAIT_SLICE: Duration = Duration::from_millis(20);
/// Inference failures in async mode are posted as warnings this often (and the first one).
const WARN_EVERY: u64 = 100;

/// What the streaming thread decided for one buffer.
struct Verdict {
    action: Action,
    /// Format details, when the action paints the frame.
    paint: Option<(gst_video::VideoInfo, PixelFormat, bool)>,
    /// What to paint: (blank or pixelate, box), in painting order.
    areas: Vec<(Action, PixelBox)>,
}

/// Why `analyse` stopped a buffer.
enum Failure {
    Flushing,
    /// Already reported to the application.
    Error,
}

#[derive(Default)]
pub struct ClipFilter {
    settings: Mutex<Settings>,
    /// Bumped when a setting the streaming thread copies changes.
    generation: AtomicU64,
    state: Mutex<Option<State>>,
    counters: Counters,
    /// Set between FLUSH_START and FLUSH_STOP, and when stopping: waits give up.
    flushing: AtomicBool,
    /// The `label-set` property: JSON of the compiled label set in use (kept outside the state
    /// so that reading it never waits for the streaming thread).
    label_set: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (plain fields); go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClipFilter {
    fn settings_error(&self, e: &Error) -> gst::ErrorMessage {
        gst::error!(CAT, imp = self, "{e}");
        gst::error_msg!(gst::LibraryError::Settings, ("{}", e))
    }

    fn post_all(&self, posts: Vec<Post>) {
        let obj = self.obj();
        for p in posts {
            match p {
                Post::Element(s) => {
                    let msg = gst::message::Element::builder(s).src(&*obj).build();
                    // A failed post is not fatal: there may be no bus yet.
                    if obj.post_message(msg).is_err() {
                        gst::debug!(CAT, imp = self, "no bus to post the message on");
                    }
                }
                Post::Warning(text) => {
                    gst::warning!(CAT, imp = self, "{text}");
                    gst::element_imp_warning!(self, gst::LibraryError::Failed, ("{}", text));
                }
            }
        }
    }

    /// Settings changes and reloaded labels, picked up on the streaming thread.
    fn refresh(&self, state: &mut State, posts: &mut Vec<Post>) {
        let generation = self.generation.load(Ordering::Acquire);
        let mut relabel = false;
        if generation != state.generation {
            state.generation = generation;
            let settings = lock(&self.settings).clone();
            state.rules = settings.rules();
            match settings
                .label_defaults()
                .and_then(|d| state.labels.apply_defaults(&state.set, &d))
            {
                Ok(()) => relabel = true,
                Err(e) => posts.push(Post::Warning(format!(
                    "new label defaults not applied, the previous ones stay: {e}"
                ))),
            }
            match settings.crop_spec_for(&state.set) {
                Ok(spec) if spec != state.crops.spec => {
                    let old = std::mem::replace(&mut state.crops.spec, spec);
                    if let Err(e) = state.replan() {
                        posts.push(Post::Warning(format!(
                            "new crops not used, the previous ones stay: {e}"
                        )));
                        state.crops.spec = old;
                        let _ = state.replan();
                    }
                }
                Ok(_) => {}
                Err(e) => posts.push(Post::Warning(format!(
                    "new fit, tiles or regions not used, the previous ones stay: {e}"
                ))),
            }
        }
        let mut newest = None;
        while let Ok(r) = state.reloads.try_recv() {
            newest = Some(r);
        }
        if let Some(reload) = newest {
            state.apply_reload(reload, posts);
            relabel = true;
        }
        if relabel {
            self.publish_label_set(state);
            state.action = state.matcher.action(&state.labels);
            let passthrough = !State::needs_writable(&state.labels);
            if passthrough != state.passthrough {
                state.passthrough = passthrough;
                self.obj().set_passthrough(passthrough);
            }
        }
    }

    /// Updates the `label-set` property from the labels in use.
    fn publish_label_set(&self, state: &State) {
        *lock(&self.label_set) = serde_json::to_string(&state.labels.info()).ok();
    }

    /// Everything but painting: sampling, inference, verdicts. Posts its messages itself.
    fn analyse(&self, buf: &gst::BufferRef) -> Result<Verdict, Failure> {
        let mut posts = Vec::new();
        let result = {
            let mut guard = lock(&self.state);
            match guard.as_mut() {
                Some(state) => self.analyse_locked(state, buf, &mut posts),
                None => Err(Failure::Flushing),
            }
        };
        self.post_all(posts);
        result
    }

    fn analyse_locked(
        &self,
        state: &mut State,
        buf: &gst::BufferRef,
        posts: &mut Vec<Post>,
    ) -> Result<Verdict, Failure> {
        self.refresh(state, posts);
        let frame = state.frame;
        state.frame += 1;
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        state.last_position = state.end_position(buf, frame);

        // Verdicts that arrived since the previous buffer apply from this one on.
        while let Some(out) = state.stream.try_result() {
            if let Some(e) = state.take_output(out, &self.counters, posts) {
                self.inference_failed(state.rules.mode, &e, posts)?;
            }
        }

        let position = state.position(buf, frame);
        let t = position
            .stream_time
            .or(position.running_time)
            .map(gst::ClockTime::nseconds);
        let every = state.untimed_every();
        if state.sampler.due(t, state.rules.interval, every) {
            if state.gate_live.is_none() && state.rules.scene_gate < 0.0 {
                state.gate_live = Some(self.upstream_is_live());
            }
            let seq = match state.submit(buf, position.clone(), &self.counters) {
                Ok(seq) => seq,
                Err(e) => {
                    gst::error!(CAT, imp = self, "cannot submit the frame: {e}");
                    gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", e));
                    return Err(Failure::Error);
                }
            };
            match seq {
                Some(seq) if state.rules.mode == ClipFilterMode::Sync => {
                    self.wait_for(state, seq, posts)?
                }
                Some(_) => {}
                // The scene has not changed: the last verdict stands for this sample too.
                None => state.repeat_last(position, posts),
            }
        }

        let mut areas = Vec::new();
        let paint = match (state.action, &state.video) {
            (Action::Blank | Action::Pixelate, Some(v)) => {
                state.paint_areas(v.info.width(), v.info.height(), &mut areas);
                Some((v.info.clone(), v.format, v.color.full_range))
            }
            _ => None,
        };
        Ok(Verdict {
            action: state.action,
            paint,
            areas,
        })
    }

    /// Whether the source upstream is live (a camera), from a latency query.
    fn upstream_is_live(&self) -> bool {
        let mut q = gst::query::Latency::new();
        let live = self.obj().sink_pad().peer_query(&mut q) && q.result().0;
        gst::debug!(
            CAT,
            imp = self,
            "upstream is {}live",
            if live { "" } else { "not " }
        );
        live
    }

    fn inference_failed(
        &self,
        mode: ClipFilterMode,
        message: &str,
        posts: &mut Vec<Post>,
    ) -> Result<(), Failure> {
        if mode == ClipFilterMode::Sync {
            gst::error!(CAT, imp = self, "inference failed: {message}");
            gst::element_imp_error!(
                self,
                gst::LibraryError::Failed,
                ("inference failed: {}", message)
            );
            return Err(Failure::Error);
        }
        let n = self.counters.errors.load(Ordering::Relaxed);
        if n <= 1 || n.is_multiple_of(WARN_EVERY) {
            posts.push(Post::Warning(format!(
                "inference failed ({n} times so far): {message}"
            )));
        }
        Ok(())
    }

    /// Sync mode: waits for the verdict of `seq`, giving up on a flush or after the timeout.
    fn wait_for(&self, state: &mut State, seq: u64, posts: &mut Vec<Post>) -> Result<(), Failure> {
        let deadline = Instant::now() + state.rules.sync_timeout;
        loop {
            if !state.pending.iter().any(|p| p.seq == seq) {
                return Ok(());
            }
            if self.flushing.load(Ordering::Acquire) {
                return Err(Failure::Flushing);
            }
            let now = Instant::now();
            if now >= deadline {
                let message = format!(
                    "no verdict from the inference worker within sync-timeout ({:?})",
                    state.rules.sync_timeout
                );
                gst::error!(CAT, imp = self, "{message}");
                gst::element_imp_error!(self, gst::LibraryError::Failed, ("{}", message));
                return Err(Failure::Error);
            }
            if let Some(out) = state.stream.wait_result(WAIT_SLICE.min(deadline - now))
                && let Some(e) = state.take_output(out, &self.counters, posts)
            {
                self.inference_failed(ClipFilterMode::Sync, &e, posts)?;
            }
        }
    }

    /// EOS: takes the verdicts still in flight (bounded wait), then ends every episode.
    fn finish(&self, state: &mut State, posts: &mut Vec<Post>) {
        let deadline = Instant::now() + state.rules.sync_timeout;
        while !state.pending.is_empty() && !self.flushing.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= deadline {
                gst::warning!(
                    CAT,
                    imp = self,
                    "{} verdicts still missing at EOS",
                    state.pending.len()
                );
                break;
            }
            if let Some(out) = state.stream.wait_result(WAIT_SLICE.min(deadline - now))
                && let Some(e) = state.take_output(out, &self.counters, posts)
            {
                let _ = self.inference_failed(ClipFilterMode::Async, &e, posts);
            }
        }
        state.pending.clear();
        let ended = state.matcher.end_all();
        state.end_messages(ended, Reason::Eos, posts);
        // A file that ended is a good moment: the process may be killed before stop().
        state.save_baselines(posts);
    }

    fn paint(
        &self,
        buf: &mut gst::BufferRef,
        areas: &[(Action, PixelBox)],
        (info, format, full_range): (gst_video::VideoInfo, PixelFormat, bool),
    ) -> Result<(), gst::FlowError> {
        let mut frame =
            gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Failed,
                    ("cannot map the frame for writing: {}", e)
                );
                gst::FlowError::Error
            })?;
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let geometry = actions::plane_geometry(format, w, h);
        let mut sums = Vec::new();
        for &(action, area) in areas {
            let block = actions::block_size(area.width as usize, area.height as usize);
            for (i, (pw, ph, ps)) in geometry.iter().copied().enumerate() {
                let stride = frame.plane_stride()[i] as usize;
                let data = frame
                    .plane_data_mut(i as u32)
                    .map_err(|_| gst::FlowError::Error)?;
                let subsampled = pw < w;
                let Some(mut plane) = PlaneMut::area(data, stride, pw, ph, ps, area, subsampled)
                else {
                    continue;
                };
                match action {
                    Action::Blank => actions::blank_plane(format, full_range, i, &mut plane),
                    Action::Pixelate => {
                        actions::pixelate_plane(&mut plane, block, subsampled, &mut sums)
                    }
                    Action::None | Action::Drop => {}
                }
            }
        }
        Ok(())
    }

    fn flow(failure: Failure) -> gst::FlowError {
        match failure {
            Failure::Flushing => gst::FlowError::Flushing,
            Failure::Error => gst::FlowError::Error,
        }
    }

    /// Builds the state: label set, engine (shared), compiled labels, watcher.
    fn build_state(&self) -> Result<State> {
        let settings = lock(&self.settings).clone();
        let generation = self.generation.load(Ordering::Acquire);
        let config = settings.engine_config()?;
        let defaults = settings.label_defaults()?;
        let set = settings.label_set()?;
        set.check_default_threshold(defaults.threshold)?;
        let engine = Engine::shared(&config)?;
        let labels = engine.compile_labels(&set, &defaults)?;
        let spec = settings.crop_spec_for(&set)?;
        let pre = engine.preprocessor()?;
        let stream = engine.stream(StreamOptions::live());
        let (reload_tx, reloads) = crossbeam_channel::unbounded();
        let watcher = match &settings.labels {
            Some(path) => Some(self.watch_labels(path, &set, &engine, reload_tx)?),
            None => None,
        };
        *lock(&self.counters.providers) = Some(engine.providers());
        let mut matcher = Matcher::new(&labels);
        if let Some(path) = &settings.baseline_file {
            match clipfilter::matcher::load_baselines(path) {
                Ok(saved) => {
                    let n = matcher.restore(&labels, saved);
                    gst::info!(
                        CAT,
                        imp = self,
                        "{n} baselines restored from {}",
                        path.display()
                    );
                }
                // A damaged file costs a new baseline, not the stream.
                Err(e) => gst::warning!(CAT, imp = self, "{e}: starting new baselines"),
            }
        }
        Ok(State {
            baselines: settings
                .baseline_file
                .clone()
                .map(|path| (path, std::time::Instant::now())),
            warming_told: false,
            matcher,
            last: vec![(0.0, 0.0); labels.labels.len()],
            places: vec![None; labels.labels.len()],
            crops: Crops::new(spec),
            passthrough: !State::needs_writable(&labels),
            engine,
            stream,
            pre,
            set,
            labels,
            scores: CropScores::default(),
            video: None,
            segment: gst::FormattedSegment::new(),
            rules: settings.rules(),
            generation,
            sampler: Sampler::default(),
            gate_live: None,
            gate_snapshot: None,
            pending: VecDeque::new(),
            discard_below: 0,
            next_seq: 0,
            frame: 0,
            last_position: Position::default(),
            action: Action::None,
            labels_path: settings.labels.clone(),
            reloads,
            _watcher: watcher,
        })
    }

    /// Watches the labels file and the files its scores come from (`set`'s probes and
    /// pictures); each change is parsed and compiled on the watcher's thread and handed to the
    /// streaming thread, or reported as a warning.
    fn watch_labels(
        &self,
        path: &std::path::Path,
        set: &LabelSet,
        engine: &Arc<Engine>,
        reloads: Sender<Reload>,
    ) -> Result<FileWatcher> {
        let weak = self.obj().downgrade();
        let engine = engine.clone();
        let file = path.to_path_buf();
        FileWatcher::start_following(path, set.dependencies(), RELOAD_DEBOUNCE, move || {
            let obj = weak.upgrade()?;
            let imp = obj.imp();
            let settings = lock(&imp.settings).clone();
            let compiled = settings.label_defaults().and_then(|d| {
                let set = LabelSet::from_file(&file)?;
                let spec = settings.crop_spec_for(&set)?;
                let labels = engine.compile_labels(&set, &d)?;
                Ok(Reload { set, labels, spec })
            });
            match compiled {
                Ok(reload) => {
                    gst::info!(CAT, imp = imp, "reloaded {}", file.display());
                    let follow = reload.set.dependencies();
                    let _ = reloads.send(reload);
                    Some(follow)
                }
                Err(e) => {
                    gst::warning!(CAT, imp = imp, "labels not reloaded: {e}");
                    gst::element_imp_warning!(
                        imp,
                        gst::ResourceError::Read,
                        ("labels not reloaded, the previous set stays in use: {}", e)
                    );
                    None
                }
            }
        })
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ClipFilter {
    const NAME: &'static str = "GstClipFilter";
    type Type = super::ClipFilter;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for ClipFilter {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder(props::MODEL)
                    .nick("Model folder")
                    .blurb("Folder of a CLIP model in the Hugging Face ONNX layout (onnx/vision_model.onnx, onnx/text_model.onnx, tokenizer.json, preprocessor_config.json); loaded once per process and shared")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::VARIANT, props::DEFAULT_VARIANT)
                    .nick("Model variant")
                    .blurb("Which weights of the model folder to load")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::LABELS)
                    .nick("Labels file")
                    .blurb("Label-set TOML file (labels, prompts, thresholds, actions); watched and reloaded while playing, a broken edit keeps the previous set and posts a warning. Exclusive with prompts")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::PROMPTS)
                    .nick("Prompts")
                    .blurb("Inline labels separated by ';' (or new lines), each named after its prompt, e.g. \"a knife;a gun;people talking\". Exclusive with labels")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::TEMPLATES)
                    .nick("Prompt templates")
                    .blurb("Templates applied to the prompts: none, single, ensemble7, imagenet80, or your own separated by ';', each with {} for the prompt (e.g. \"a photo of {}.;a video frame of {}.\"). Label files set their own")
                    .default_value(Some(props::DEFAULT_TEMPLATES))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder(props::INTERVAL)
                    .nick("Sampling interval")
                    .blurb("Stream time between sampled frames, in nanoseconds (0: every frame; at most 24 hours)")
                    .minimum(*limits::INTERVAL_NS.start())
                    .maximum(*limits::INTERVAL_NS.end())
                    .default_value(props::DEFAULT_INTERVAL.nseconds())
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder(props::THRESHOLD)
                    .nick("Threshold")
                    .blurb("Score a sample must reach to count as a match, for labels without their own (see threshold-kind)")
                    .minimum(-1.0)
                    .maximum(1.0)
                    .default_value(props::DEFAULT_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::THRESHOLD_KIND, props::DEFAULT_THRESHOLD_KIND)
                    .nick("Threshold kind")
                    .blurb("What threshold is compared with: the softmax probability among the labels, or the raw cosine similarity")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder(props::EXECUTION_PROVIDER)
                    .nick("Execution providers")
                    .blurb("ONNX Runtime execution providers in order of preference, comma-separated: tensorrt, cuda, cpu (e.g. \"tensorrt,cuda,cpu\"); the one in use shows in stats")
                    .default_value(Some(props::DEFAULT_EXECUTION_PROVIDER))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder(props::REQUIRE_PROVIDER)
                    .nick("Require provider")
                    .blurb("Fail to start when the first execution provider cannot be used, instead of falling back")
                    .default_value(props::DEFAULT_REQUIRE_PROVIDER)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::ACTION, props::DEFAULT_ACTION)
                    .nick("Action")
                    .blurb("What happens to frames while a matching label asks for it, for labels without their own action")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder(props::ENTER_SAMPLES)
                    .nick("Samples to enter")
                    .blurb("Consecutive samples above the threshold before a match starts, for labels without their own")
                    .minimum(*limits::SAMPLES.start())
                    .maximum(*limits::SAMPLES.end())
                    .default_value(props::DEFAULT_ENTER_SAMPLES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder(props::LEAVE_SAMPLES)
                    .nick("Samples to leave")
                    .blurb("Consecutive samples below the threshold before a match ends, for labels without their own")
                    .minimum(*limits::SAMPLES.start())
                    .maximum(*limits::SAMPLES.end())
                    .default_value(props::DEFAULT_LEAVE_SAMPLES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::MODE, props::DEFAULT_MODE)
                    .nick("Mode")
                    .blurb("async: never block the streaming thread, verdicts apply from the next buffer; sync: hold each sampled buffer until its verdict")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder(props::POST_SCORES)
                    .nick("Post scores")
                    .blurb("Post a clipfilter-scores element message with every label's score for each sampled frame")
                    .default_value(props::DEFAULT_POST_SCORES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder(props::POST_EMBEDDING)
                    .nick("Post embedding")
                    .blurb("Add the frame's normalised image embedding to clipfilter-scores messages (field embedding: a buffer of little-endian float32, absent on samples the scene gate skipped), to record or search frames outside the element")
                    .default_value(props::DEFAULT_POST_EMBEDDING)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder(props::POST_FRAME)
                    .nick("Post frame")
                    .blurb("Add the sampled frame to clipfilter-scores messages of inferred samples, as a GstSample in the image field (for thumbnails)")
                    .default_value(props::DEFAULT_POST_FRAME)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder(props::LABEL_SET)
                    .nick("Label set in use")
                    .blurb("JSON of the label set in use: version (the labels-version of clipfilter-scores messages), logit_scale, defaults, and each label's resolved threshold, action, negative, enter, leave and key (a hash of its prompts expanded with templates); null before start")
                    .read_only()
                    .build(),
                glib::ParamSpecBoolean::builder(props::SNAPSHOT)
                    .nick("Snapshot")
                    .blurb("Attach the frame that starts a match to the clipfilter-match start message, as a GstSample in the snapshot field")
                    .default_value(props::DEFAULT_SNAPSHOT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder(props::MAX_BATCH)
                    .nick("Maximum batch")
                    .blurb("Largest batch the shared inference worker gives the model (frames of all streams using the same model)")
                    .minimum(*limits::MAX_BATCH.start())
                    .maximum(*limits::MAX_BATCH.end())
                    .default_value(props::DEFAULT_MAX_BATCH)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder(props::THREADS)
                    .nick("Threads")
                    .blurb("ONNX Runtime threads per operator (0: one per core); pipelines share the cores")
                    .maximum(*limits::THREADS.end())
                    .default_value(props::DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder(props::SYNC_TIMEOUT)
                    .nick("Sync timeout")
                    .blurb("Longest wait for a verdict in sync mode (and for verdicts in flight at EOS), in nanoseconds; a stuck worker then posts an error")
                    .minimum(gst::ClockTime::MSECOND.nseconds())
                    .maximum(u64::MAX - 1)
                    .default_value(props::DEFAULT_SYNC_TIMEOUT.nseconds())
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder(props::BASELINE_FILE)
                    .nick("Baseline file")
                    .blurb("File where the recent scores of labels with min_zscore are kept (read at start, written every few seconds and at stop), so that a restart does not wait for a new baseline; unset: kept in memory only")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::TENSORRT_CACHE)
                    .nick("TensorRT engine cache")
                    .blurb("Folder where TensorRT keeps the engines it builds (minutes each), so that later starts load them; see `clipfilterd model prepare`")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder(props::SCENE_GATE)
                    .nick("Scene-change gate")
                    .blurb("Skip inference for a sampled frame that differs from the last inferred one by less than this mean 8-bit level (on a tiny thumbnail), repeating the last verdict; at least once a minute is inferred anyway. -1: automatic (3 for live sources such as cameras, off for files); 0: off")
                    .minimum(-1.0)
                    .maximum(*limits::SCENE_GATE.end())
                    .default_value(props::DEFAULT_SCENE_GATE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder(props::MAX_FRAME_PIXELS)
                    .nick("Largest frame")
                    .blurb("Largest decoded frame taken, in pixels (width x height; default 7680x4320): a larger one is a stream error naming its size, rather than gigabytes of memory")
                    .minimum(*limits::FRAME_PIXELS.start())
                    .maximum(*limits::FRAME_PIXELS.end())
                    .default_value(limits::DEFAULT_FRAME_PIXELS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::FIT, props::DEFAULT_FIT)
                    .nick("Fit")
                    .blurb("How the whole frame becomes the model's square input. pad (default): letterboxed, the whole picture in one inference, at a smaller scale (a 16:9 frame fills 56% of the square); crop: the reference's centre square, exact CLIPImageProcessor parity, but a 16:9 frame's left and right 22% are never seen; crops: overlapping squares covering the frame (2 for 16:9), one inference each (twice the cost), each label scored on its best square, which messages name (left, right, top, bottom...)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder(props::REGIONS)
                    .nick("Regions")
                    .blurb("Named parts of the picture scored on their own (each letterboxed into the model's input, one more inference per sample), in fractions of the frame so that they survive a resolution change; separated by ';': name:x,y,width,height for a box, name:polygon:x1,y1,x2,y2,x3,y3,... for a polygon (its bounding box is what the model sees, the outside of the polygon set to the mean colour). E.g. \"gate:0.62,0.40,0.30,0.35;door:polygon:0.05,0.2,0.25,0.2,0.25,0.9,0.05,0.9\". Labels of a label set can be limited to regions (regions = [\"gate\"]); the set's own [[region]] tables add to these. At most 32")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder(props::TILES)
                    .nick("Tiles")
                    .blurb("A grid of overlapping tiles, columns x rows (e.g. 3x3, at most 8x8), each letterboxed and scored besides the whole frame, so that small things get more of the model's pixels; a label's score is its best tile (or region, or frame) and messages name the tile (r1c1 is the top left) and its box. Costs one inference per tile per sample (a 3x3 grid: 10 with the frame), less with the scene gate, which skips unchanged tiles. none: no tiles")
                    .default_value(Some(props::DEFAULT_TILES))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder(props::TILE_OVERLAP)
                    .nick("Tile overlap")
                    .blurb("Overlap of neighbouring tiles, as a fraction of a tile's width (height), so that a thing on a tile border is whole in one of them")
                    .minimum(*limits::TILE_OVERLAP.start())
                    .maximum(*limits::TILE_OVERLAP.end())
                    .default_value(props::DEFAULT_TILE_OVERLAP)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder(props::WHOLE_FRAME)
                    .nick("Whole frame")
                    .blurb("Score the whole frame (as fit says) besides the tiles and regions; false: only tiles and regions")
                    .default_value(props::DEFAULT_WHOLE_FRAME)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::ACTION_SCOPE, props::DEFAULT_ACTION_SCOPE)
                    .nick("Action scope")
                    .blurb("What blank and pixelate cover: frame (the whole frame) or region (only the box of the crop, region or tile, that made each painting label match, following it from sample to sample; the rest of the picture stays); drop always drops the frame")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::BACKEND, props::DEFAULT_BACKEND)
                    .nick("Backend")
                    .blurb("Where the CLIP towers run: local (ONNX Runtime in this process) or triton (Triton Inference Server endpoints, see endpoints; the model folder still gives the tokenizer and preprocessing, and the server's models are checked against it)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::ENDPOINTS)
                    .nick("Endpoints")
                    .blurb("backend=triton: Triton gRPC endpoints, comma-separated (grpc://host:8001, grpcs://host:8001 for TLS); requests go round-robin over the ready ones")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::WIRE_FORMAT, props::DEFAULT_WIRE_FORMAT)
                    .nick("Wire format")
                    .blurb("backend=triton: how images travel: fp32, fp16, or uint8 (8-bit RGB, normalised by the server's model as `clipfilterd model export-triton` writes it)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::IMAGE_MODEL_NAME)
                    .nick("Image model name")
                    .blurb("backend=triton: the server's image model (default: clip_image, clip_image_fp16 or clip_image_uint8 after wire-format)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::TEXT_MODEL_NAME)
                    .nick("Text model name")
                    .blurb("backend=triton: the server's text model")
                    .default_value(Some(props::DEFAULT_TEXT_MODEL_NAME))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder(props::REMOTE_TIMEOUT)
                    .nick("Remote timeout")
                    .blurb("backend=triton: longest time of one request, failing over included, in nanoseconds")
                    .minimum(gst::ClockTime::MSECOND.nseconds())
                    .maximum(u64::MAX - 1)
                    .default_value(props::DEFAULT_REMOTE_TIMEOUT.nseconds())
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder(props::CONNECT_TIMEOUT)
                    .nick("Connect timeout")
                    .blurb("backend=triton: longest connect and health check of an endpoint, in nanoseconds")
                    .minimum(gst::ClockTime::MSECOND.nseconds())
                    .maximum(u64::MAX - 1)
                    .default_value(props::DEFAULT_CONNECT_TIMEOUT.nseconds())
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder(props::START_TIMEOUT)
                    .nick("Start timeout")
                    .blurb("backend=triton: how long starting waits for a ready endpoint before it fails (or falls back), in nanoseconds")
                    .minimum(gst::ClockTime::MSECOND.nseconds())
                    .maximum(u64::MAX - 1)
                    .default_value(props::DEFAULT_START_TIMEOUT.nseconds())
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(props::FALLBACK, props::DEFAULT_FALLBACK)
                    .nick("Fallback")
                    .blurb("backend=triton, no endpoint ready: none (drop the samples, counted in stats as unavailable) or local (run them on the model folder here)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::TLS_CA)
                    .nick("TLS certificate authority")
                    .blurb("backend=triton, grpcs:// endpoints: PEM file of the authority that signed the servers' certificates (default: the system's roots; needs the plugin's tls feature)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::TLS_CERTIFICATE)
                    .nick("TLS client certificate")
                    .blurb("backend=triton, grpcs:// endpoints: PEM client certificate for mutual TLS (with tls-key)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::TLS_KEY)
                    .nick("TLS client key")
                    .blurb("backend=triton, grpcs:// endpoints: PEM key of tls-certificate")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(props::TLS_DOMAIN)
                    .nick("TLS domain")
                    .blurb("backend=triton, grpcs:// endpoints: the name to verify in the servers' certificates, when not the endpoints' host")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>(props::STATS)
                    .nick("Statistics")
                    .blurb("clipfilter-stats: frames, sampled, inferred (samples), crops-inferred (model inputs: one per inferred crop), dropped (newest frame won while inference was busy), skipped (scene unchanged, see scene-gate), errors, unavailable (dropped because no Triton endpoint was ready), latency-last-ms, latency-mean-ms (submission to verdict), execution-provider, text-execution-provider")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        let clock = |v: &glib::Value, default: gst::ClockTime| {
            gst::ClockTime::from_nseconds(v.get().unwrap_or(default.nseconds()))
        };
        let path = |v: &glib::Value| {
            v.get::<Option<String>>()
                .ok()
                .flatten()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        let string = |v: &glib::Value| v.get::<Option<String>>().ok().flatten();
        match pspec.name() {
            props::MODEL => s.model = path(value),
            props::VARIANT => s.variant = value.get().unwrap_or(props::DEFAULT_VARIANT),
            props::LABELS => s.labels = path(value),
            props::PROMPTS => s.prompts = string(value).filter(|p| !p.trim().is_empty()),
            props::TEMPLATES => {
                s.templates = string(value).unwrap_or_else(|| props::DEFAULT_TEMPLATES.to_string())
            }
            props::INTERVAL => {
                s.interval = gst::ClockTime::from_nseconds(
                    value.get().unwrap_or(props::DEFAULT_INTERVAL.nseconds()),
                )
            }
            props::THRESHOLD => s.threshold = value.get().unwrap_or(props::DEFAULT_THRESHOLD),
            props::THRESHOLD_KIND => {
                s.threshold_kind = value.get().unwrap_or(props::DEFAULT_THRESHOLD_KIND)
            }
            props::EXECUTION_PROVIDER => {
                s.execution_provider =
                    string(value).unwrap_or_else(|| props::DEFAULT_EXECUTION_PROVIDER.to_string())
            }
            props::REQUIRE_PROVIDER => {
                s.require_provider = value.get().unwrap_or(props::DEFAULT_REQUIRE_PROVIDER)
            }
            props::ACTION => s.action = value.get().unwrap_or(props::DEFAULT_ACTION),
            props::ENTER_SAMPLES => {
                s.enter_samples = value.get().unwrap_or(props::DEFAULT_ENTER_SAMPLES)
            }
            props::LEAVE_SAMPLES => {
                s.leave_samples = value.get().unwrap_or(props::DEFAULT_LEAVE_SAMPLES)
            }
            props::MODE => s.mode = value.get().unwrap_or(props::DEFAULT_MODE),
            props::POST_SCORES => s.post_scores = value.get().unwrap_or(props::DEFAULT_POST_SCORES),
            props::POST_EMBEDDING => {
                s.post_embedding = value.get().unwrap_or(props::DEFAULT_POST_EMBEDDING)
            }
            props::POST_FRAME => s.post_frame = value.get().unwrap_or(props::DEFAULT_POST_FRAME),
            props::SNAPSHOT => s.snapshot = value.get().unwrap_or(props::DEFAULT_SNAPSHOT),
            props::MAX_BATCH => s.max_batch = value.get().unwrap_or(props::DEFAULT_MAX_BATCH),
            props::THREADS => s.threads = value.get().unwrap_or(props::DEFAULT_THREADS),
            props::SYNC_TIMEOUT => {
                s.sync_timeout = gst::ClockTime::from_nseconds(
                    value
                        .get()
                        .unwrap_or(props::DEFAULT_SYNC_TIMEOUT.nseconds()),
                )
            }
            props::SCENE_GATE => s.scene_gate = value.get().unwrap_or(props::DEFAULT_SCENE_GATE),
            props::MAX_FRAME_PIXELS => {
                s.max_frame_pixels = value.get().unwrap_or(limits::DEFAULT_FRAME_PIXELS)
            }
            props::FIT => s.fit = value.get().unwrap_or(props::DEFAULT_FIT),
            props::REGIONS => s.regions = string(value).filter(|r| !r.trim().is_empty()),
            props::TILES => {
                s.tiles = string(value).unwrap_or_else(|| props::DEFAULT_TILES.to_string())
            }
            props::TILE_OVERLAP => {
                s.tile_overlap = value.get().unwrap_or(props::DEFAULT_TILE_OVERLAP)
            }
            props::WHOLE_FRAME => s.whole_frame = value.get().unwrap_or(props::DEFAULT_WHOLE_FRAME),
            props::ACTION_SCOPE => {
                s.action_scope = value.get().unwrap_or(props::DEFAULT_ACTION_SCOPE)
            }
            props::BASELINE_FILE => {
                s.baseline_file = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
            }
            props::TENSORRT_CACHE => {
                s.tensorrt_cache = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
            }
            props::BACKEND => s.remote.backend = value.get().unwrap_or(props::DEFAULT_BACKEND),
            props::ENDPOINTS => s.remote.endpoints = string(value).filter(|e| !e.trim().is_empty()),
            props::WIRE_FORMAT => {
                s.remote.wire_format = value.get().unwrap_or(props::DEFAULT_WIRE_FORMAT)
            }
            props::IMAGE_MODEL_NAME => {
                s.remote.image_model = string(value).filter(|n| !n.trim().is_empty())
            }
            props::TEXT_MODEL_NAME => {
                s.remote.text_model = string(value)
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| props::DEFAULT_TEXT_MODEL_NAME.to_string())
            }
            props::REMOTE_TIMEOUT => s.remote.timeout = clock(value, props::DEFAULT_REMOTE_TIMEOUT),
            props::CONNECT_TIMEOUT => {
                s.remote.connect_timeout = clock(value, props::DEFAULT_CONNECT_TIMEOUT)
            }
            props::START_TIMEOUT => {
                s.remote.start_timeout = clock(value, props::DEFAULT_START_TIMEOUT)
            }
            props::FALLBACK => s.remote.fallback = value.get().unwrap_or(props::DEFAULT_FALLBACK),
            props::TLS_CA => s.remote.tls_ca = path(value),
            props::TLS_CERTIFICATE => s.remote.tls_certificate = path(value),
            props::TLS_KEY => s.remote.tls_key = path(value),
            props::TLS_DOMAIN => s.remote.tls_domain = string(value).filter(|d| !d.is_empty()),
            other => {
                gst::warning!(CAT, imp = self, "unknown property {other}");
                return;
            }
        }
        drop(s);
        gst::info!(
            CAT,
            imp = self,
            "{} set to {}",
            pspec.name(),
            value
                .serialize()
                .map_or_else(|_| format!("{value:?}"), |v| v.to_string())
        );
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        match pspec.name() {
            props::MODEL => path(&s.model).to_value(),
            props::VARIANT => s.variant.to_value(),
            props::LABELS => path(&s.labels).to_value(),
            props::PROMPTS => s.prompts.to_value(),
            props::TEMPLATES => s.templates.to_value(),
            props::INTERVAL => s.interval.nseconds().to_value(),
            props::THRESHOLD => s.threshold.to_value(),
            props::THRESHOLD_KIND => s.threshold_kind.to_value(),
            props::EXECUTION_PROVIDER => s.execution_provider.to_value(),
            props::REQUIRE_PROVIDER => s.require_provider.to_value(),
            props::ACTION => s.action.to_value(),
            props::ENTER_SAMPLES => s.enter_samples.to_value(),
            props::LEAVE_SAMPLES => s.leave_samples.to_value(),
            props::MODE => s.mode.to_value(),
            props::POST_SCORES => s.post_scores.to_value(),
            props::POST_EMBEDDING => s.post_embedding.to_value(),
            props::POST_FRAME => s.post_frame.to_value(),
            props::LABEL_SET => {
                drop(s);
                lock(&self.label_set).to_value()
            }
            props::SNAPSHOT => s.snapshot.to_value(),
            props::MAX_BATCH => s.max_batch.to_value(),
            props::THREADS => s.threads.to_value(),
            props::SYNC_TIMEOUT => s.sync_timeout.nseconds().to_value(),
            props::SCENE_GATE => s.scene_gate.to_value(),
            props::MAX_FRAME_PIXELS => s.max_frame_pixels.to_value(),
            props::FIT => s.fit.to_value(),
            props::REGIONS => s.regions.to_value(),
            props::TILES => s.tiles.to_value(),
            props::TILE_OVERLAP => s.tile_overlap.to_value(),
            props::WHOLE_FRAME => s.whole_frame.to_value(),
            props::ACTION_SCOPE => s.action_scope.to_value(),
            props::BASELINE_FILE => s
                .baseline_file
                .as_ref()
                .map(|p| p.display().to_string())
                .to_value(),
            props::TENSORRT_CACHE => s
                .tensorrt_cache
                .as_ref()
                .map(|p| p.display().to_string())
                .to_value(),
            props::BACKEND => s.remote.backend.to_value(),
            props::ENDPOINTS => s.remote.endpoints.to_value(),
            props::WIRE_FORMAT => s.remote.wire_format.to_value(),
            props::IMAGE_MODEL_NAME => s.remote.image_model.to_value(),
            props::TEXT_MODEL_NAME => s.remote.text_model.to_value(),
            props::REMOTE_TIMEOUT => s.remote.timeout.nseconds().to_value(),
            props::CONNECT_TIMEOUT => s.remote.connect_timeout.nseconds().to_value(),
            props::START_TIMEOUT => s.remote.start_timeout.nseconds().to_value(),
            props::FALLBACK => s.remote.fallback.to_value(),
            props::TLS_CA => path(&s.remote.tls_ca).to_value(),
            props::TLS_CERTIFICATE => path(&s.remote.tls_certificate).to_value(),
            props::TLS_KEY => path(&s.remote.tls_key).to_value(),
            props::TLS_DOMAIN => s.remote.tls_domain.to_value(),
            props::STATS => {
                drop(s);
                self.counters.structure().to_value()
            }
            other => {
                gst::warning!(CAT, imp = self, "unknown property {other}");
                pspec.default_value().clone()
            }
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // Passthrough until labels that paint frames are loaded.
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for ClipFilter {}

impl ElementImpl for ClipFilter {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CLIP zero-shot video filter",
                "Filter/Analyzer/Video",
                "Samples frames, matches them against text prompts with CLIP (ONNX Runtime), posts clipfilter-match messages and can drop, blank or pixelate matching frames",
                "clipfilter developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let formats = PixelFormat::ALL.iter().map(|f| f.gst_name());
            let caps = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(formats))
                .field("width", gst::IntRange::new(1, i32::MAX))
                .field("height", gst::IntRange::new(1, i32::MAX))
                .field(
                    "framerate",
                    gst::FractionRange::new(
                        gst::Fraction::new(0, 1),
                        gst::Fraction::new(i32::MAX, 1),
                    ),
                )
                .build();
            let src = gst::PadTemplate::new(
                "src",
                gst::PadDirection::Src,
                gst::PadPresence::Always,
                &caps,
            );
            let sink = gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &caps,
            );
            match (src, sink) {
                (Ok(src), Ok(sink)) => vec![src, sink],
                _ => Vec::new(),
            }
        });
        PAD_TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        match transition {
            // A streaming thread waiting for a verdict gives up, so the pads can deactivate.
            gst::StateChange::PausedToReady => self.flushing.store(true, Ordering::Release),
            gst::StateChange::ReadyToPaused => self.flushing.store(false, Ordering::Release),
            _ => {}
        }
        self.parent_change_state(transition)
    }
}

impl BaseTransformImpl for ClipFilter {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = true;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.counters.reset();
        let state = self.build_state().map_err(|e| self.settings_error(&e))?;
        gst::info!(
            CAT,
            imp = self,
            "started: model {}, {} labels, image tower on {}",
            state.engine.model().dir.display(),
            state.labels.labels.len(),
            state.engine.providers().0
        );
        self.obj().set_passthrough(state.passthrough);
        self.publish_label_set(&state);
        *lock(&self.state) = Some(state);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = lock(&self.state).take();
        if let Some(mut state) = state {
            let mut posts = Vec::new();
            let ended = state.matcher.end_all();
            state.end_messages(ended, Reason::Stop, &mut posts);
            state.save_baselines(&mut posts);
            // Joins the watcher; releases the stream and, with the last user, the engine.
            drop(state);
            self.post_all(posts);
        }
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps)
            .map_err(|_| gst::loggable_error!(CAT, "cannot parse caps {incaps}"))?;
        let (format, color) = crate::video_frame::format_of(&info)
            .ok_or_else(|| gst::loggable_error!(CAT, "unsupported format {}", info.format()))?;
        let max = lock(&self.settings).max_frame_pixels;
        let pixels = u64::from(info.width()) * u64::from(info.height());
        if pixels > max {
            let message = format!(
                "frames of {}x{} ({pixels} pixels) are larger than {}={max} pixels: scale the source down (videoscale) or raise the limit (at most {})",
                info.width(),
                info.height(),
                props::MAX_FRAME_PIXELS,
                limits::FRAME_PIXELS.end()
            );
            gst::element_imp_error!(self, gst::StreamError::Format, ["{}", message]);
            return Err(gst::loggable_error!(CAT, "{message}"));
        }
        gst::debug!(CAT, imp = self, "caps {incaps}");
        let mut guard = lock(&self.state);
        let state = guard
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "caps before start"))?;
        let resized = state.size() != Some((info.width(), info.height()));
        state.video = Some(Video {
            info,
            format,
            color,
            caps: incaps.clone(),
        });
        if resized {
            // Regions and tiles are relative: the same parts of the picture at the new size.
            state
                .replan()
                .map_err(|e| gst::loggable_error!(CAT, "cannot plan the crops: {e}"))?;
        }
        state.crops.reset_gates();
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        use gst::EventView;
        let mut posts = Vec::new();
        match event.view() {
            EventView::FlushStart(_) => self.flushing.store(true, Ordering::Release),
            EventView::FlushStop(_) => {
                if let Some(state) = lock(&self.state).as_mut() {
                    state.reset_stream(Reason::Flush, &mut posts);
                }
                self.flushing.store(false, Ordering::Release);
            }
            EventView::Segment(e) => {
                if let Some(segment) = e.segment().downcast_ref::<gst::ClockTime>()
                    && let Some(state) = lock(&self.state).as_mut()
                {
                    state.segment = segment.clone();
                    state.sampler.reset();
                }
            }
            EventView::Eos(_) => {
                if let Some(state) = lock(&self.state).as_mut() {
                    self.finish(state, &mut posts);
                }
            }
            _ => {}
        }
        // Messages go out before the event travels on (so ends precede the EOS message).
        self.post_all(posts);
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let verdict = self.analyse(buf).map_err(Self::flow)?;
        match (verdict.action, verdict.paint) {
            (Action::Drop, _) => Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED),
            (Action::Blank | Action::Pixelate, Some(paint)) => {
                self.paint(buf, &verdict.areas, paint)?;
                Ok(gst::FlowSuccess::Ok)
            }
            _ => Ok(gst::FlowSuccess::Ok),
        }
    }

    fn transform_ip_passthrough(
        &self,
        buf: &gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let verdict = self.analyse(buf.as_ref()).map_err(Self::flow)?;
        match verdict.action {
            Action::None => Ok(gst::FlowSuccess::Ok),
            Action::Drop => Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED),
            Action::Blank | Action::Pixelate => {
                // Passthrough ends with the next buffer (the labels just changed); this one
                // cannot be painted, so it is not let through.
                gst::debug!(CAT, imp = self, "dropping a frame that cannot be painted");
                Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED)
            }
        }
    }
}
