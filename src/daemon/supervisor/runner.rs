//! One pipeline's life, on its own thread: build it, play it, watch its bus, and decide what
//! happens next.
//!
//! - an error, an end of stream from a live source, or no frames for `restart.stall_timeout`:
//!   the pipeline is torn down and started again after an exponential backoff with jitter
//!   (`restart.initial`, doubling up to `restart.max`; reset after a healthy run);
//! - a looping file reaches its end: a flushing seek starts it again without a restart (when the
//!   file cannot seek, a restart that is not a failure). Not segment seeks: MPEG-TS accepts
//!   them and then sends nothing;
//! - a file that does not loop ends: the pipeline is `stopped` (finished) until reconfigured.
//!
//! The bus is watched through a sync handler feeding a channel; the element's own messages go to
//! the [`Reporter`]. Errors and warnings are logged with credentials hidden.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use gst::prelude::*;

use crate::daemon::backoff::Backoff;
use crate::daemon::config::PipelineConfig;
use crate::daemon::metrics::PipelineState;
use crate::daemon::model::ElementModel;
use crate::daemon::pipeline;
use crate::daemon::secret::redact;
use crate::daemon::supervisor::Shared;
use crate::daemon::supervisor::events::Reporter;
use crate::daemon::supervisor::status::PipelineStatus;

/// After this long running with frames flowing, the next failure starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a stopping pipeline with its own sink waits for the end of stream to reach it (so
/// that a file it writes is finished).
const EOS_WAIT: Duration = Duration::from_secs(5);
/// How often a pipeline thread looks at its frame counter.
const TICK: Duration = Duration::from_millis(250);

/// What the supervisor tells a running pipeline.
pub(super) enum Control {
    /// Stop and end the thread.
    Stop,
    /// Send the events to these outputs from now on.
    Outputs(Vec<String>),
}

/// How one attempt to run the pipeline ended.
enum AttemptEnd {
    /// Told to stop.
    Stop,
    /// A file that does not loop reached its end.
    Finished,
    /// Start again at once, not a failure (a looping file that cannot seek).
    Again,
    /// A failure: restart after the backoff. `healthy`: it ran well for a while first.
    Failed { message: String, healthy: bool },
}

/// One pipeline's thread.
pub(super) struct Runner {
    config: PipelineConfig,
    model: ElementModel,
    shared: Arc<Shared>,
    status: Arc<PipelineStatus>,
    control: Receiver<Control>,
    /// Where the element's messages go.
    reporter: Reporter,
    /// Words to hide in messages (a source password).
    secrets: Vec<String>,
}

impl Runner {
    /// A runner for `config` with `model`, told what to do through `control`.
    pub(super) fn new(
        config: &PipelineConfig,
        model: &ElementModel,
        shared: Arc<Shared>,
        status: Arc<PipelineStatus>,
        control: Receiver<Control>,
    ) -> Runner {
        let secrets = config
            .source
            .options
            .password
            .iter()
            .map(|p| p.expose().to_string())
            .collect();
        let reporter = Reporter::new(
            &config.name,
            config.outputs.clone(),
            shared.clone(),
            status.clone(),
        );
        Runner {
            config: config.clone(),
            model: model.clone(),
            shared,
            status,
            control,
            reporter,
            secrets,
        }
    }

    /// Runs the pipeline until told to stop; restarts it after failures.
    pub(super) fn run(mut self) {
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
            let status = self.status.clone();
            let end =
                status
                    .guarded(|| self.attempt())
                    .unwrap_or_else(|panic| AttemptEnd::Failed {
                        message: format!("panicked: {panic}"),
                        healthy: false,
                    });
            match end {
                AttemptEnd::Stop => break,
                AttemptEnd::Finished => {
                    tracing::info!("the file ended: pipeline finished");
                    self.status.set_state(PipelineState::Stopped, true);
                    // Wait until removed, changed or shut down.
                    loop {
                        match self.control.recv() {
                            Ok(Control::Outputs(o)) => self.reporter.set_outputs(o),
                            Ok(Control::Stop) | Err(_) => return,
                        }
                    }
                }
                AttemptEnd::Again => continue,
                AttemptEnd::Failed { message, healthy } => {
                    if healthy {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.status.set_last_error(message.clone());
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
                            Ok(Control::Outputs(o)) => self.reporter.set_outputs(o),
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
                    self.status.restarted();
                }
            }
        }
        self.status.set_state(PipelineState::Stopped, false);
        tracing::info!("pipeline stopped");
    }

    fn attempt(&mut self) -> AttemptEnd {
        let built = match pipeline::build(&self.config, &self.model) {
            Ok(b) => b,
            Err(e) => {
                return AttemptEnd::Failed {
                    message: redact(&e.to_string(), &self.secrets),
                    healthy: false,
                };
            }
        };
        // Baselines survive restarts of the pipeline and of the daemon.
        let file: String = self
            .config
            .name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        built.filter.set_property(
            gstclipfilter::clipfilter::properties::BASELINE_FILE,
            self.shared
                .baselines
                .join(format!("{file}.json"))
                .display()
                .to_string(),
        );
        let (tx, rx) = crossbeam_channel::unbounded();
        let Some(bus) = built.pipeline.bus() else {
            return AttemptEnd::Failed {
                message: "the pipeline has no bus".into(),
                healthy: false,
            };
        };
        bus.set_sync_handler(move |_, msg| {
            let _ = tx.send(msg.clone());
            gst::BusSyncReply::Drop
        });
        self.status.attach(&built.filter);
        self.reporter.stream_started(Some(&built.filter));
        let end = self.play(&built, &rx);
        if matches!(end, AttemptEnd::Stop) && built.custom_sink {
            // Let the sink finish what it writes.
            built.pipeline.send_event(gst::event::Eos::new());
            let deadline = Instant::now() + EOS_WAIT;
            while let Ok(msg) = rx.recv_deadline(deadline) {
                match msg.view() {
                    gst::MessageView::Eos(_) | gst::MessageView::Error(_) => break,
                    _ => self.reporter.handle(&msg),
                }
            }
        }
        if let Err(e) = built.pipeline.set_state(gst::State::Null) {
            tracing::warn!(error = %e, "pipeline did not stop cleanly");
        }
        // Ends of matches posted while stopping are events too.
        while let Ok(msg) = rx.try_recv() {
            self.reporter.handle(&msg);
        }
        bus.unset_sync_handler();
        self.status.detach();
        self.reporter.stream_ended();
        end
    }

    fn play(&mut self, built: &pipeline::Built, rx: &Receiver<gst::Message>) -> AttemptEnd {
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
                return AttemptEnd::Failed {
                    message: "the pipeline could not start".into(),
                    healthy: false,
                };
            }
        };
        let looping = self.config.source.options.looping;
        let mut running_since: Option<Instant> = None;
        let mut last_frames = 0u64;
        let mut last_progress = Instant::now();
        let mut buffering = false;
        loop {
            select! {
                recv(self.control) -> c => match c {
                    Ok(Control::Outputs(o)) => self.reporter.set_outputs(o),
                    Ok(Control::Stop) | Err(_) => return AttemptEnd::Stop,
                },
                recv(rx) -> msg => {
                    let Ok(msg) = msg else { return AttemptEnd::Stop };
                    let healthy = running_since.is_some_and(|t| t.elapsed() >= HEALTHY_RUN);
                    match msg.view() {
                        gst::MessageView::Error(e) => return self.failed(&msg, e, healthy),
                        gst::MessageView::Eos(_) => {
                            // The element ended its episodes: what follows is another stream.
                            self.reporter.stream_started(None);
                            if looping {
                                tracing::debug!("end of file: looping with a flushing seek");
                                if seek_start(pipeline) {
                                    continue;
                                }
                                tracing::info!("the file cannot seek: restarting it to loop");
                                return AttemptEnd::Again;
                            }
                            if self.config.source.eos_is_failure() {
                                return AttemptEnd::Failed {
                                    message: "the stream ended (end of stream from a live source)".into(),
                                    healthy,
                                };
                            }
                            return AttemptEnd::Finished;
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
                        _ => self.reporter.handle(&msg),
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
                return AttemptEnd::Failed {
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

    fn failed(&self, msg: &gst::Message, e: &gst::message::Error, healthy: bool) -> AttemptEnd {
        let message = self.describe(msg, &e.error().to_string(), e.debug().as_deref());
        AttemptEnd::Failed { message, healthy }
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
}

/// Seeks to the start with a plain flushing seek; false when refused. Not a segment seek:
/// some demuxers (MPEG-TS) accept one and then send nothing, so a looping file would stall.
fn seek_start(pipeline: &gst::Pipeline) -> bool {
    pipeline
        .seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO)
        .is_ok()
}
