//! The daemon's side of the sample history: the element's messages become history records.
//!
//! The pipelines' elements run with `post-scores`, `post-embedding` and `post-frame` on; each
//! pipeline thread owns a [`PipelineTap`] that turns `clipfilter-scores` messages into samples
//! (with a thumbnail made from the sampled frame), match events into event records, and stream
//! starts and ends into epochs. Everything goes to the one [`Recorder`] of the daemon, which
//! never makes a pipeline thread wait.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use gst::prelude::*;
use gst_video::VideoFrameExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::daemon::config::HistoryConfig;
use crate::daemon::event::Event;
use crate::history::record::now_ms;
use crate::history::{
    EventRecord, Limits, ModelInfo, RawThumbnail, Record, Recorder, RecorderConfig, RecorderStats,
    SampleRecord, ThumbnailConfig,
};
use clipfilter::engine::Engine;
use clipfilter::preprocess::thumbnail_rgb8;
use gstclipfilter::clipfilter::messages::{MatchMessage, ScoresMessage};
use gstclipfilter::clipfilter::properties as props;
use gstclipfilter::video_frame;

/// JPEG quality of thumbnails.
const THUMBNAIL_QUALITY: u8 = 75;

/// The daemon's history: its recorder and settings.
#[derive(Debug)]
pub struct HistoryService {
    recorder: Recorder,
    config: HistoryConfig,
}

impl HistoryService {
    /// Starts recording into `config.dir` (`None` when the history is turned off). A folder
    /// that cannot be written pauses the history; it never stops the daemon.
    pub fn start(config: &HistoryConfig) -> crate::error::Result<Option<Arc<HistoryService>>> {
        if !config.enabled {
            return Ok(None);
        }
        let recorder = Recorder::start(RecorderConfig {
            dir: config.dir.clone(),
            limits: Limits {
                keep: config.keep,
                max_bytes: config.max_bytes,
            },
            queue: config.queue,
            thumbnails: config.thumbnails.then_some(ThumbnailConfig {
                long_side: config.thumbnail_size,
                quality: THUMBNAIL_QUALITY,
            }),
        })
        .map_err(|e| {
            crate::error::Error::worker(format!("cannot start the history thread: {e}"))
        })?;
        tracing::info!(dir = %config.dir.display(), "sample history on");
        Ok(Some(Arc::new(HistoryService {
            recorder,
            config: config.clone(),
        })))
    }

    /// The folder.
    pub fn dir(&self) -> &PathBuf {
        &self.config.dir
    }

    /// Records the model whose embeddings the following samples carry.
    pub fn set_model(&self, engine: &Engine) {
        match engine.image_fingerprint() {
            Ok(fingerprint) => self.recorder.record(Record::Model(ModelInfo {
                fingerprint,
                dir: engine.model().dir.display().to_string(),
                variant: engine.config().variant.name().to_string(),
                dim: engine.dim(),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "the model of the history is not known: samples are not recorded")
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<RecorderStats> {
        self.recorder.stats()
    }

    /// A tap for pipeline `name`.
    pub fn tap(self: &Arc<Self>, name: &str) -> PipelineTap {
        PipelineTap {
            service: self.clone(),
            pipeline: name.to_string(),
            epoch: None,
            versions: HashSet::new(),
        }
    }

    /// The `clipfilter_history_*` metrics.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(HistoryMetrics(self.clone()))
    }
}

/// What one pipeline thread records.
#[derive(Debug)]
pub struct PipelineTap {
    service: Arc<HistoryService>,
    pipeline: String,
    epoch: Option<i64>,
    /// Label-set versions already recorded.
    versions: HashSet<String>,
}

impl PipelineTap {
    /// The element properties that make it post what the history records.
    pub fn configure(element: &gst::Element) {
        element.set_property(props::POST_SCORES, true);
        element.set_property(props::POST_EMBEDDING, true);
        element.set_property(props::POST_FRAME, true);
    }

    /// A stream starts (pipeline start, or after an end of stream): matching starts afresh.
    pub fn stream_started(&mut self) {
        self.stream_ended();
        // Microseconds of the wall clock: unique per pipeline, ordered, known without asking
        // the writer.
        let id = jiff::Timestamp::now().as_microsecond();
        let id = match self.epoch {
            Some(prev) if prev >= id => prev + 1,
            _ => id,
        };
        self.epoch = Some(id);
        self.service.recorder.record(Record::Epoch {
            pipeline: self.pipeline.clone(),
            id,
            start_ms: now_ms(),
        });
    }

    /// The stream ended (end of stream, stop, failure).
    pub fn stream_ended(&mut self) {
        if let Some(id) = self.epoch {
            self.service.recorder.record(Record::EpochEnd {
                id,
                end_ms: now_ms(),
            });
        }
    }

    fn epoch(&mut self) -> i64 {
        if self.epoch.is_none() {
            self.stream_started();
        }
        self.epoch.unwrap_or_default()
    }

    /// A `clipfilter-scores` message of `element`; `frame`: its frame number as events count.
    pub fn scores(&mut self, m: &ScoresMessage, frame: u64, element: Option<&gst::Element>) {
        let epoch = self.epoch();
        if !m.labels_version.is_empty() && !self.versions.contains(&m.labels_version) {
            self.versions.insert(m.labels_version.clone());
            // The element says what the version holds; if it moved on already (two reloads in a
            // row), the version is recorded without it and backtests rescore its samples.
            let info = element
                .and_then(|e| e.property::<Option<String>>(props::LABEL_SET))
                .filter(|json| {
                    serde_json::from_str::<clipfilter::labels::LabelSetInfo>(json)
                        .is_ok_and(|i| i.version == m.labels_version)
                });
            self.service.recorder.record(Record::LabelSet {
                pipeline: self.pipeline.clone(),
                version: m.labels_version.clone(),
                info,
            });
        }
        let thumbnail = match (&m.image, self.service.recorder.wants_thumbnails()) {
            (Some(sample), true) => thumbnail(sample, self.service.config.thumbnail_size),
            _ => None,
        };
        let ns = |t: Option<gst::ClockTime>| t.map(|t| t.nseconds() as i64);
        self.service.recorder.sample(
            SampleRecord {
                pipeline: self.pipeline.clone(),
                epoch,
                time_ms: now_ms(),
                pts: ns(m.position.pts),
                stream_time: ns(m.position.stream_time),
                running_time: ns(m.position.running_time),
                frame,
                embedding: m.embedding.clone(),
                labels_version: m.labels_version.clone(),
                scores: m.scores.iter().map(|s| *s as f32).collect(),
                thumbnail: None,
                crop: None,
            },
            thumbnail,
        );
    }

    /// An event the pipeline produced from `m`.
    pub fn event(&mut self, event: &Event, m: &MatchMessage) {
        let epoch = self.epoch();
        let ns = |t: Option<gst::ClockTime>| t.map(|t| t.nseconds() as i64);
        self.service.recorder.record(Record::Event(EventRecord {
            id: event.id.to_string(),
            pipeline: self.pipeline.clone(),
            epoch,
            label: event.label.clone(),
            state: event.state.name().to_string(),
            reason: m.reason.name().to_string(),
            time_ms: event.time.as_millisecond(),
            pts: ns(m.position.pts),
            stream_time: ns(m.position.stream_time),
            running_time: ns(m.position.running_time),
            frame: event.frame,
            score: event.score,
            probability: event.probability,
            snapshot: event.snapshot.as_ref().map(|p| p.display().to_string()),
        }));
    }
}

/// A thumbnail of a sampled frame (`None`, logged, when it cannot be read).
fn thumbnail(sample: &gst::Sample, long_side: u32) -> Option<RawThumbnail> {
    let made = (|| -> Result<RawThumbnail, String> {
        let caps = sample.caps().ok_or("no caps")?;
        let buffer = sample.buffer().ok_or("no buffer")?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
        let (format, color) = video_frame::format_of(&info)
            .ok_or_else(|| format!("unsupported format {}", info.format().to_str()))?;
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
            .map_err(|e| e.to_string())?;
        let frame_ref = video_frame::frame_ref(&frame, format, color).map_err(|e| e.to_string())?;
        let (rgb, width, height) =
            thumbnail_rgb8(&frame_ref, long_side).map_err(|e| e.to_string())?;
        let _ = frame.width();
        Ok(RawThumbnail { rgb, width, height })
    })();
    match made {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::debug!(error = %e, "no thumbnail for this sample");
            None
        }
    }
}

/// `clipfilter_history_*`, read from the recorder's counters at scrape time.
#[derive(Debug)]
struct HistoryMetrics(Arc<HistoryService>);

impl Collector for HistoryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "clipfilter_history_samples_stored",
                "Samples written to the sample history",
                load(&s.stored),
            ),
            (
                "clipfilter_history_samples_dropped",
                "Samples not written to the history (queue full, or history paused)",
                load(&s.dropped),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let oldest = s.oldest_ms.load(Ordering::Relaxed);
        let age = if oldest > 0 {
            ((now_ms() - oldest).max(0) as f64) / 1000.0
        } else {
            0.0
        };
        let gauges: [(&str, &str, f64); 4] = [
            (
                "clipfilter_history_samples",
                "Samples in the sample history",
                load(&s.samples) as f64,
            ),
            (
                "clipfilter_history_bytes",
                "Bytes of the sample history folder",
                load(&s.bytes) as f64,
            ),
            (
                "clipfilter_history_oldest_sample_age_seconds",
                "Age of the oldest sample in the history",
                age,
            ),
            (
                "clipfilter_history_paused",
                "1 while the history cannot be written (full disk, read-only folder)",
                if s.paused.load(Ordering::Relaxed) {
                    1.0
                } else {
                    0.0
                },
            ),
        ];
        for (name, help, value) in gauges {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)?;
        }
        Ok(())
    }
}
