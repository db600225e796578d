//! Prometheus metrics of clipfilterd.
//!
//! [`Metrics`] owns a `prometheus-client` registry with every family the daemon exports and
//! hands out typed handles (cheap clones of the underlying atomics) for one pipeline, model,
//! label or output, so hot paths never look a series up by name:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `clipfilter_frames_seen_total` | counter (read at scrape) | pipeline |
//! | `clipfilter_frames_sampled_total` | counter (read at scrape) | pipeline |
//! | `clipfilter_frames_inferred_total` | counter (read at scrape) | pipeline |
//! | `clipfilter_frames_dropped_total` | counter (read at scrape) | pipeline |
//! | `clipfilter_frames_skipped_by_gate_total` | counter (read at scrape) | pipeline |
//! | `clipfilter_pipeline_restarts_total` | counter | pipeline |
//! | `clipfilter_pipeline_panics_total` | counter: panics caught in its thread | pipeline |
//! | `clipfilter_pipeline_state` | gauge, 1 for the current state | pipeline, state |
//! | `clipfilter_inference_latency_seconds` | histogram | model |
//! | `clipfilter_inference_batch_size` | histogram | model |
//! | `clipfilter_inference_queue_depth` | gauge (read at scrape) | model |
//! | `clipfilter_inference_unavailable_total` | counter (read at scrape): samples dropped, no Triton endpoint ready | model |
//! | `clipfilter_inference_fallback_batches_total` | counter (read at scrape): batches run on the local fallback (`fallback = "local"`), no Triton endpoint ready | model |
//! | `clipfilter_inference_fallback_active` | gauge (read at scrape), 1 while the local fallback runs | model |
//! | `clipfilter_triton_endpoint_up` | gauge (read at scrape), 1 ready, 0 down | model, endpoint |
//! | `clipfilter_triton_requests_total` | counter (read at scrape) | model, endpoint |
//! | `clipfilter_triton_request_errors_total` | counter (read at scrape) | model, endpoint |
//! | `clipfilter_execution_provider` | gauge, always 1 (info) | model, provider |
//! | `clipfilter_label_score` | histogram, buckets 0 to 0.5 by 0.025 | pipeline, label |
//! | `clipfilter_label_matches_total` | counter | pipeline, label |
//! | `clipfilter_output_events_pending` | gauge | output |
//! | `clipfilter_output_events_delivered_total` | counter | output |
//! | `clipfilter_output_delivery_failures_total` | counter (failed attempts) | output |
//! | `clipfilter_output_events_dropped_total` | counter (outbox full) | output |
//! | `clipfilter_outbox_disk_full` | gauge, 1 while the state disk is full (events refused) | |
//! | `clipfilter_events_refused_total` | counter: events not accepted (state disk full) | |
//!
//! "Read at scrape" values live elsewhere (the element's frame counters, the inference queue):
//! register a closure with [`Metrics::set_frame_source`], [`Metrics::set_queue_depth_source`] or
//! [`Metrics::set_backend_source`] and it is called on each scrape; nothing is copied in between.
//!
//! The exposition is OpenMetrics text ([`CONTENT_TYPE`]), which Prometheus scrapes natively.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the label-score histogram buckets: 0 to 0.5 by 0.025 (cosine similarity).
pub fn score_buckets() -> impl Iterator<Item = f64> {
    (0..=20).map(|i| f64::from(i) / 40.0)
}

const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The supervision state of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipelineState {
    /// Being built or prerolling.
    Starting,
    /// Playing.
    Running,
    /// Failed; waiting before the next restart.
    BackingOff,
    /// Stopped (removed, or the daemon is shutting down).
    Stopped,
}

impl PipelineState {
    /// All states, in the order they are exported.
    pub const ALL: [PipelineState; 4] = [
        PipelineState::Starting,
        PipelineState::Running,
        PipelineState::BackingOff,
        PipelineState::Stopped,
    ];

    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Running => "running",
            PipelineState::BackingOff => "backing_off",
            PipelineState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for PipelineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frame counters of one pipeline, read at scrape time (see [`Metrics::set_frame_source`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// Frames that reached the element.
    pub seen: u64,
    /// Frames picked by the sample interval.
    pub sampled: u64,
    /// Frames the model ran on.
    pub inferred: u64,
    /// Sampled frames dropped because the inference queue was full.
    pub dropped: u64,
    /// Sampled frames skipped by the scene-change gate.
    pub skipped_by_gate: u64,
}

/// A label value, escaped as the exposition format says when encoded (`\\`, `\"` and a new line
/// as `\n`): `prometheus-client` writes label values as they are, and a label name is any text
/// a label set holds.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct LabelValue(String);

impl From<&str> for LabelValue {
    fn from(s: &str) -> Self {
        LabelValue(s.to_owned())
    }
}

impl From<String> for LabelValue {
    fn from(s: String) -> Self {
        LabelValue(s)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        let mut rest = self.0.as_str();
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: LabelValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pipeline: LabelValue,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: LabelValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    model: LabelValue,
    provider: LabelValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelLabels {
    pipeline: LabelValue,
    label: LabelValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    output: LabelValue,
}

type FrameSource = Arc<dyn Fn() -> FrameCounts + Send + Sync>;
type BackendSource = Arc<dyn Fn() -> BackendCounts + Send + Sync>;

/// What the inference backend of one model reports at scrape time (see
/// [`Metrics::set_backend_source`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendCounts {
    /// Samples dropped because no endpoint could serve them.
    pub unavailable: u64,
    /// Batches run on the local fallback, and whether it runs now (Triton with
    /// `fallback = "local"`).
    pub fallback_batches: u64,
    pub fallback_active: bool,
    /// Remote endpoints (none for the local backend).
    pub endpoints: Vec<EndpointCounts>,
}

/// One Triton endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    pub endpoint: String,
    pub up: bool,
    pub requests: u64,
    pub errors: u64,
}
type GaugeSource = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Values read at scrape time, encoded by a [`Collector`].
#[derive(Default)]
struct ScrapeSources {
    frames: RwLock<BTreeMap<String, FrameSource>>,
    queue_depth: RwLock<BTreeMap<String, GaugeSource>>,
    backend: RwLock<BTreeMap<String, BackendSource>>,
}

impl std::fmt::Debug for ScrapeSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeSources").finish_non_exhaustive()
    }
}

impl Collector for ScrapeSources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let frames: Vec<(String, FrameCounts)> = self
            .frames
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(pipeline, read)| (pipeline.clone(), read()))
            .collect();
        type Read = fn(&FrameCounts) -> u64;
        let families: [(&str, &str, Read); 5] = [
            (
                "clipfilter_frames_seen",
                "Frames that reached the clipfilter element",
                |c| c.seen,
            ),
            (
                "clipfilter_frames_sampled",
                "Frames picked by the sample interval",
                |c| c.sampled,
            ),
            (
                "clipfilter_frames_inferred",
                "Frames the model ran on",
                |c| c.inferred,
            ),
            (
                "clipfilter_frames_dropped",
                "Sampled frames dropped because the inference queue was full",
                |c| c.dropped,
            ),
            (
                "clipfilter_frames_skipped_by_gate",
                "Sampled frames skipped by the scene-change gate",
                |c| c.skipped_by_gate,
            ),
        ];
        for (name, help, get) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (pipeline, counts) in &frames {
                let labels = [("pipeline", LabelValue::from(pipeline.as_str()))];
                ConstCounter::new(get(counts)).encode(family.encode_family(&labels)?)?;
            }
        }
        let depths: Vec<(String, i64)> = self
            .queue_depth
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(model, read)| (model.clone(), read()))
            .collect();
        let mut family = encoder.encode_descriptor(
            "clipfilter_inference_queue_depth",
            "Frames waiting for the inference worker",
            None,
            MetricType::Gauge,
        )?;
        for (model, depth) in &depths {
            let labels = [("model", LabelValue::from(model.as_str()))];
            ConstGauge::new(*depth).encode(family.encode_family(&labels)?)?;
        }
        self.encode_backend(&mut encoder)
    }
}

impl ScrapeSources {
    fn encode_backend(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let backends: Vec<(String, BackendCounts)> = self
            .backend
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(model, read)| (model.clone(), read()))
            .collect();
        let mut family = encoder.encode_descriptor(
            "clipfilter_inference_unavailable",
            "Samples dropped because no inference endpoint could serve them",
            None,
            MetricType::Counter,
        )?;
        for (model, counts) in &backends {
            let labels = [("model", LabelValue::from(model.as_str()))];
            ConstCounter::new(counts.unavailable).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "clipfilter_inference_fallback_batches",
            "Batches embedded by the local fallback because no Triton endpoint was ready",
            None,
            MetricType::Counter,
        )?;
        for (model, counts) in &backends {
            let labels = [("model", model.as_str())];
            ConstCounter::new(counts.fallback_batches).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "clipfilter_inference_fallback_active",
            "Whether the local fallback embeds the samples now (1) or Triton does (0)",
            None,
            MetricType::Gauge,
        )?;
        for (model, counts) in &backends {
            let labels = [("model", model.as_str())];
            ConstGauge::new(i64::from(counts.fallback_active))
                .encode(family.encode_family(&labels)?)?;
        }
        type Read = fn(&EndpointCounts) -> u64;
        let families: [(&str, &str, MetricType, Read); 3] = [
            (
                "clipfilter_triton_endpoint_up",
                "Whether the Triton endpoint is ready (1) or taken out (0)",
                MetricType::Gauge,
                |e| u64::from(e.up),
            ),
            (
                "clipfilter_triton_requests",
                "Requests sent to the Triton endpoint",
                MetricType::Counter,
                |e| e.requests,
            ),
            (
                "clipfilter_triton_request_errors",
                "Requests to the Triton endpoint that failed",
                MetricType::Counter,
                |e| e.errors,
            ),
        ];
        for (name, help, kind, get) in families {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (model, counts) in &backends {
                for e in &counts.endpoints {
                    let labels = [
                        ("model", LabelValue::from(model.as_str())),
                        ("endpoint", LabelValue::from(e.endpoint.as_str())),
                    ];
                    let value = get(e);
                    if matches!(kind, MetricType::Gauge) {
                        ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
                    } else {
                        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Handles for one pipeline's supervision metrics.
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    restarts: Counter,
    panics: Counter,
    states: [Gauge; 4],
}

impl PipelineMetrics {
    /// Counts one restart.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// Counts one panic of the pipeline's thread.
    pub fn panicked(&self) {
        self.panics.inc();
    }

    /// Sets the current state (1 for it, 0 for the others).
    pub fn set_state(&self, state: PipelineState) {
        for (s, gauge) in PipelineState::ALL.iter().zip(&self.states) {
            gauge.set(i64::from(*s == state));
        }
    }
}

/// Handles for one model's inference metrics.
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    latency: Histogram,
    batch_size: Histogram,
}

impl ModelMetrics {
    /// Records one batch run: its wall time and its size.
    pub fn observe_batch(&self, latency: Duration, batch_size: usize) {
        self.latency.observe(latency.as_secs_f64());
        self.batch_size.observe(batch_size as f64);
    }
}

/// Handles for one label of one pipeline.
#[derive(Debug, Clone)]
pub struct LabelMetrics {
    score: Histogram,
    matches: Counter,
}

impl LabelMetrics {
    /// Records the cosine similarity of a sampled frame with the label.
    pub fn observe_score(&self, score: f32) {
        self.score.observe(f64::from(score));
    }

    /// Counts one match start.
    pub fn matched(&self) {
        self.matches.inc();
    }
}

/// Handles for one output's delivery metrics (used by [`crate::daemon::delivery`]).
#[derive(Debug, Clone)]
pub struct OutputMetrics {
    /// Events waiting in the outbox.
    pub pending: Gauge,
    /// Events acknowledged by the endpoint.
    pub delivered: Counter,
    /// Failed delivery attempts.
    pub failures: Counter,
    /// Events dropped because the output's queue was full.
    pub dropped: Counter,
}

/// The daemon's metrics registry. Share it with `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    scrape: Arc<ScrapeSources>,
    restarts: Family<PipelineLabels, Counter>,
    panics: Family<PipelineLabels, Counter>,
    state: Family<StateLabels, Gauge>,
    latency: Family<ModelLabels, Histogram>,
    batch_size: Family<ModelLabels, Histogram>,
    provider: Family<ProviderLabels, Gauge>,
    provider_of: Mutex<BTreeMap<String, String>>,
    score: Family<LabelLabels, Histogram>,
    matches: Family<LabelLabels, Counter>,
    labels_of: Mutex<BTreeMap<String, BTreeSet<String>>>,
    out_pending: Family<OutputLabels, Gauge>,
    out_delivered: Family<OutputLabels, Counter>,
    out_failures: Family<OutputLabels, Counter>,
    out_dropped: Family<OutputLabels, Counter>,
    outbox_full: Gauge,
    events_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every clipfilter family registered (and no series yet).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let scrape = Arc::new(ScrapeSources::default());
        registry.register_collector(Box::new(Arc::clone(&scrape)));

        let restarts = Family::<PipelineLabels, Counter>::default();
        registry.register(
            "clipfilter_pipeline_restarts",
            "Restarts of the pipeline after an error or end of stream",
            restarts.clone(),
        );
        let panics = Family::<PipelineLabels, Counter>::default();
        registry.register(
            "clipfilter_pipeline_panics",
            "Panics caught in the pipeline's thread (a bug: /healthz fails until it is restarted)",
            panics.clone(),
        );
        let state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "clipfilter_pipeline_state",
            "Supervision state of the pipeline (1 = current state)",
            state.clone(),
        );
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "clipfilter_inference_latency",
            "Wall time of one inference batch",
            Unit::Seconds,
            latency.clone(),
        );
        let batch_size = Family::<ModelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(BATCH_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "clipfilter_inference_batch_size",
            "Frames per inference batch",
            batch_size.clone(),
        );
        let provider = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "clipfilter_execution_provider",
            "Execution provider the model runs on (always 1)",
            provider.clone(),
        );
        let score = Family::<LabelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(score_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "clipfilter_label_score",
            "Cosine similarity of sampled frames with the label",
            score.clone(),
        );
        let matches = Family::<LabelLabels, Counter>::default();
        registry.register(
            "clipfilter_label_matches",
            "Matches started",
            matches.clone(),
        );
        let out_pending = Family::<OutputLabels, Gauge>::default();
        registry.register(
            "clipfilter_output_events_pending",
            "Events in the outbox waiting for the output",
            out_pending.clone(),
        );
        let out_delivered = Family::<OutputLabels, Counter>::default();
        registry.register(
            "clipfilter_output_events_delivered",
            "Events acknowledged by the output",
            out_delivered.clone(),
        );
        let out_failures = Family::<OutputLabels, Counter>::default();
        registry.register(
            "clipfilter_output_delivery_failures",
            "Failed delivery attempts (each is retried)",
            out_failures.clone(),
        );
        let out_dropped = Family::<OutputLabels, Counter>::default();
        registry.register(
            "clipfilter_output_events_dropped",
            "Oldest pending events dropped because the output's queue was full",
            out_dropped.clone(),
        );
        let outbox_full = Gauge::default();
        registry.register(
            "clipfilter_outbox_disk_full",
            "1 while the state disk is full: new events are refused",
            outbox_full.clone(),
        );
        let events_refused = Counter::default();
        registry.register(
            "clipfilter_events_refused",
            "Events not accepted because the state disk was full",
            events_refused.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            scrape,
            restarts,
            panics,
            state,
            latency,
            batch_size,
            provider,
            provider_of: Mutex::new(BTreeMap::new()),
            score,
            matches,
            labels_of: Mutex::new(BTreeMap::new()),
            out_pending,
            out_delivered,
            out_failures,
            out_dropped,
            outbox_full,
            events_refused,
        }
    }

    /// The gauge that is 1 while the state disk is full.
    pub fn outbox_full(&self) -> Gauge {
        self.outbox_full.clone()
    }

    /// The count of events refused because the state disk was full.
    pub fn events_refused(&self) -> Counter {
        self.events_refused.clone()
    }

    /// Handles for `pipeline` (created on first use; its state starts as `starting`).
    pub fn pipeline(&self, pipeline: &str) -> PipelineMetrics {
        let restarts = self.restarts.get_or_create_owned(&PipelineLabels {
            pipeline: pipeline.into(),
        });
        let panics = self.panics.get_or_create_owned(&PipelineLabels {
            pipeline: pipeline.into(),
        });
        let fresh = self
            .state
            .get(&StateLabels {
                pipeline: pipeline.into(),
                state: "starting",
            })
            .is_none();
        let states = PipelineState::ALL.map(|s| {
            self.state.get_or_create_owned(&StateLabels {
                pipeline: pipeline.into(),
                state: s.as_str(),
            })
        });
        let handles = PipelineMetrics {
            restarts,
            panics,
            states,
        };
        if fresh {
            handles.set_state(PipelineState::Starting);
        }
        handles
    }

    /// Handles for `model`.
    pub fn model(&self, model: &str) -> ModelMetrics {
        let labels = ModelLabels {
            model: model.into(),
        };
        ModelMetrics {
            latency: self.latency.get_or_create_owned(&labels),
            batch_size: self.batch_size.get_or_create_owned(&labels),
        }
    }

    /// Handles for `label` of `pipeline`.
    pub fn label(&self, pipeline: &str, label: &str) -> LabelMetrics {
        self.labels_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pipeline.to_owned())
            .or_default()
            .insert(label.to_owned());
        let labels = LabelLabels {
            pipeline: pipeline.into(),
            label: label.into(),
        };
        LabelMetrics {
            score: self.score.get_or_create_owned(&labels),
            matches: self.matches.get_or_create_owned(&labels),
        }
    }

    /// Handles for `output`.
    pub fn output(&self, output: &str) -> OutputMetrics {
        let labels = OutputLabels {
            output: output.into(),
        };
        OutputMetrics {
            pending: self.out_pending.get_or_create_owned(&labels),
            delivered: self.out_delivered.get_or_create_owned(&labels),
            failures: self.out_failures.get_or_create_owned(&labels),
            dropped: self.out_dropped.get_or_create_owned(&labels),
        }
    }

    /// Records that `model` runs on `provider` (replacing any provider recorded before).
    pub fn set_execution_provider(&self, model: &str, provider: &str) {
        let mut current = self.provider_of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.insert(model.to_owned(), provider.to_owned()) {
            self.provider.remove(&ProviderLabels {
                model: model.into(),
                provider: old.into(),
            });
        }
        self.provider
            .get_or_create(&ProviderLabels {
                model: model.into(),
                provider: provider.into(),
            })
            .set(1);
    }

    /// Reads `pipeline`'s frame counters from `read` at each scrape (replacing an earlier source).
    pub fn set_frame_source(
        &self,
        pipeline: &str,
        read: impl Fn() -> FrameCounts + Send + Sync + 'static,
    ) {
        self.scrape
            .frames
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pipeline.to_owned(), Arc::new(read));
    }

    /// Reads `model`'s inference queue depth from `read` at each scrape.
    pub fn set_queue_depth_source(
        &self,
        model: &str,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) {
        self.scrape
            .queue_depth
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_owned(), Arc::new(read));
    }

    /// Reads the inference backend of `model` from `read` at each scrape (replacing an earlier
    /// source): dropped samples and, for Triton, each endpoint's state and requests.
    pub fn set_backend_source(
        &self,
        model: &str,
        read: impl Fn() -> BackendCounts + Send + Sync + 'static,
    ) {
        self.scrape
            .backend
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_owned(), Arc::new(read));
    }

    /// Removes every series of `pipeline` (when it is removed from the configuration). Handles
    /// still held keep working but are no longer exported.
    pub fn remove_pipeline(&self, pipeline: &str) {
        self.scrape
            .frames
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pipeline);
        self.restarts.remove(&PipelineLabels {
            pipeline: pipeline.into(),
        });
        self.panics.remove(&PipelineLabels {
            pipeline: pipeline.into(),
        });
        for s in PipelineState::ALL {
            self.state.remove(&StateLabels {
                pipeline: pipeline.into(),
                state: s.as_str(),
            });
        }
        let labels = self
            .labels_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pipeline);
        for label in labels.into_iter().flatten() {
            let key = LabelLabels {
                pipeline: pipeline.into(),
                label: label.into(),
            };
            self.score.remove(&key);
            self.matches.remove(&key);
        }
    }

    /// Removes `model`'s series (when the model is unloaded).
    pub fn remove_model(&self, model: &str) {
        self.scrape
            .queue_depth
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(model);
        let labels = ModelLabels {
            model: model.into(),
        };
        self.latency.remove(&labels);
        self.batch_size.remove(&labels);
        let old = self
            .provider_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(model);
        if let Some(provider) = old {
            self.provider.remove(&ProviderLabels {
                model: model.into(),
                provider: provider.into(),
            });
        }
    }

    /// Registers an extra collector, encoded after the clipfilter families on each scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// The exposition in OpenMetrics text format (serve it with [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"))
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        let hostile = "red\"} 99\nclipfilter_injected 1\n# back\\slash";
        m.label("cam1", hostile).matched();
        let text = m.encode();
        assert!(
            text.contains(
                "clipfilter_label_matches_total{pipeline=\"cam1\",label=\"red\\\"} 99\\nclipfilter_injected 1\\n# back\\\\slash\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("clipfilter_injected")),
            "{text}"
        );
    }

    #[test]
    fn families_are_named_and_valued() {
        let m = Metrics::new();
        let p = m.pipeline("cam1");
        p.restarted();
        p.set_state(PipelineState::BackingOff);
        m.model("clip-b32")
            .observe_batch(Duration::from_millis(12), 3);
        let l = m.label("cam1", "white van");
        l.observe_score(0.26);
        l.observe_score(0.01);
        l.matched();
        m.set_execution_provider("clip-b32", "cuda");
        m.set_execution_provider("clip-b32", "cpu");
        let o = m.output("alerts");
        o.delivered.inc_by(4);
        o.pending.set(2);
        let seen = Arc::new(AtomicU64::new(10));
        let s2 = Arc::clone(&seen);
        m.set_frame_source("cam1", move || FrameCounts {
            seen: s2.load(Ordering::Relaxed),
            sampled: 5,
            ..Default::default()
        });
        m.set_queue_depth_source("clip-b32", || 7);
        m.set_backend_source("clip-b32", || BackendCounts {
            unavailable: 12,
            fallback_batches: 5,
            fallback_active: true,
            endpoints: vec![EndpointCounts {
                endpoint: "grpc://gpu1:8001".into(),
                up: false,
                requests: 40,
                errors: 3,
            }],
        });

        let text = m.encode();
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(
            line(&text, "clipfilter_pipeline_restarts_total{"),
            "clipfilter_pipeline_restarts_total{pipeline=\"cam1\"} 1"
        );
        assert!(
            text.contains("clipfilter_pipeline_state{pipeline=\"cam1\",state=\"backing_off\"} 1\n")
        );
        assert!(
            text.contains("clipfilter_pipeline_state{pipeline=\"cam1\",state=\"running\"} 0\n")
        );
        assert!(
            text.contains("clipfilter_inference_latency_seconds_count{model=\"clip-b32\"} 1\n")
        );
        assert!(
            text.contains(
                "clipfilter_inference_batch_size_bucket{le=\"4.0\",model=\"clip-b32\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("clipfilter_label_score_bucket{le=\"0.275\",pipeline=\"cam1\",label=\"white van\"} 2\n"), "{text}");
        assert!(text.contains(
            "clipfilter_label_score_bucket{le=\"0.025\",pipeline=\"cam1\",label=\"white van\"} 1\n"
        ));
        assert!(
            text.contains(
                "clipfilter_label_matches_total{pipeline=\"cam1\",label=\"white van\"} 1\n"
            )
        );
        assert!(
            text.contains("clipfilter_execution_provider{model=\"clip-b32\",provider=\"cpu\"} 1\n")
        );
        assert!(!text.contains("provider=\"cuda\""));
        assert!(text.contains("clipfilter_output_events_delivered_total{output=\"alerts\"} 4\n"));
        assert!(text.contains("clipfilter_output_events_pending{output=\"alerts\"} 2\n"));
        assert!(text.contains("clipfilter_frames_seen_total{pipeline=\"cam1\"} 10\n"));
        assert!(text.contains("clipfilter_frames_sampled_total{pipeline=\"cam1\"} 5\n"));
        assert!(text.contains("clipfilter_inference_queue_depth{model=\"clip-b32\"} 7\n"));
        assert!(
            text.contains("clipfilter_inference_unavailable_total{model=\"clip-b32\"} 12\n"),
            "{text}"
        );
        assert!(text.contains("clipfilter_triton_endpoint_up{model=\"clip-b32\",endpoint=\"grpc://gpu1:8001\"} 0\n"), "{text}");
        assert!(
            text.contains("clipfilter_inference_fallback_batches_total{model=\"clip-b32\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("clipfilter_inference_fallback_active{model=\"clip-b32\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("clipfilter_triton_requests_total{model=\"clip-b32\",endpoint=\"grpc://gpu1:8001\"} 40\n"), "{text}");
        assert!(text.contains("clipfilter_triton_request_errors_total{model=\"clip-b32\",endpoint=\"grpc://gpu1:8001\"} 3\n"), "{text}");

        seen.store(11, Ordering::Relaxed);
        assert!(
            m.encode()
                .contains("clipfilter_frames_seen_total{pipeline=\"cam1\"} 11\n")
        );

        m.remove_pipeline("cam1");
        let text = m.encode();
        assert!(!text.contains("pipeline=\"cam1\""), "{text}");
        assert!(text.contains("# TYPE clipfilter_frames_seen counter"));
    }

    #[test]
    fn score_buckets_are_exact() {
        let b: Vec<f64> = score_buckets().collect();
        assert_eq!(b.len(), 21);
        assert_eq!((b[0], b[3], b[20]), (0.0, 0.075, 0.5));
    }
}
