//! The element's properties: their names (for applications that set them, such as clipfilterd),
//! their defaults, and the settings they fill in.

use std::path::PathBuf;
use std::time::Duration;

use clipfilter::encoder::{Provider, SessionConfig};
use clipfilter::engine::EngineConfig;
use clipfilter::error::{Error, Result};
use clipfilter::labels::{LabelDefaults, LabelSet, Threshold};
use clipfilter::limits;
use clipfilter::worker::BatchConfig;
use clipfilter::zeroshot::Templates;

use super::{ClipFilterAction, ClipFilterMode, ClipFilterThresholdKind, ClipFilterVariant};

pub const MODEL: &str = "model";
pub const VARIANT: &str = "variant";
pub const LABELS: &str = "labels";
pub const PROMPTS: &str = "prompts";
pub const TEMPLATES: &str = "templates";
pub const INTERVAL: &str = "interval";
pub const THRESHOLD: &str = "threshold";
pub const THRESHOLD_KIND: &str = "threshold-kind";
pub const EXECUTION_PROVIDER: &str = "execution-provider";
pub const REQUIRE_PROVIDER: &str = "require-provider";
pub const ACTION: &str = "action";
pub const ENTER_SAMPLES: &str = "enter-samples";
pub const LEAVE_SAMPLES: &str = "leave-samples";
pub const MODE: &str = "mode";
pub const POST_SCORES: &str = "post-scores";
pub const POST_EMBEDDING: &str = "post-embedding";
pub const POST_FRAME: &str = "post-frame";
pub const LABEL_SET: &str = "label-set";
pub const SNAPSHOT: &str = "snapshot";
pub const MAX_BATCH: &str = "max-batch";
pub const THREADS: &str = "threads";
pub const SYNC_TIMEOUT: &str = "sync-timeout";
pub const TENSORRT_CACHE: &str = "tensorrt-cache";
pub const SCENE_GATE: &str = "scene-gate";
pub const STATS: &str = "stats";

pub const DEFAULT_VARIANT: ClipFilterVariant = ClipFilterVariant::Fp32;
pub const DEFAULT_TEMPLATES: &str = "none";
pub const DEFAULT_INTERVAL: gst::ClockTime = gst::ClockTime::from_mseconds(500);
pub const DEFAULT_THRESHOLD: f64 = 0.5;
pub const DEFAULT_THRESHOLD_KIND: ClipFilterThresholdKind = ClipFilterThresholdKind::Probability;
pub const DEFAULT_EXECUTION_PROVIDER: &str = "cpu";
pub const DEFAULT_REQUIRE_PROVIDER: bool = false;
pub const DEFAULT_ACTION: ClipFilterAction = ClipFilterAction::None;
pub const DEFAULT_ENTER_SAMPLES: u32 = 1;
pub const DEFAULT_LEAVE_SAMPLES: u32 = 1;
pub const DEFAULT_MODE: ClipFilterMode = ClipFilterMode::Async;
pub const DEFAULT_POST_SCORES: bool = false;
pub const DEFAULT_POST_EMBEDDING: bool = false;
pub const DEFAULT_POST_FRAME: bool = false;
pub const DEFAULT_SNAPSHOT: bool = false;
pub const DEFAULT_MAX_BATCH: u32 = limits::DEFAULT_MAX_BATCH;
pub const DEFAULT_THREADS: u32 = 0;
pub const DEFAULT_SYNC_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(10);
/// `scene-gate` default: automatic (on for live sources, off otherwise).
pub const DEFAULT_SCENE_GATE: f64 = -1.0;
/// Threshold the automatic gate uses on live sources (mean 8-bit level difference).
pub const AUTO_SCENE_GATE: f64 = 3.0;

/// The settings the streaming thread works with (copied when they change).
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    pub(super) interval: u64,
    pub(super) mode: ClipFilterMode,
    pub(super) post_scores: bool,
    pub(super) post_embedding: bool,
    pub(super) post_frame: bool,
    pub(super) snapshot: bool,
    pub(super) sync_timeout: Duration,
    /// Scene-change gate threshold: < 0 automatic (on for live sources), 0 off.
    pub(super) scene_gate: f64,
}

/// The element's settings, as its properties set them.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) model: Option<PathBuf>,
    pub(super) variant: ClipFilterVariant,
    pub(super) labels: Option<PathBuf>,
    pub(super) prompts: Option<String>,
    pub(super) templates: String,
    pub(super) interval: gst::ClockTime,
    pub(super) threshold: f64,
    pub(super) threshold_kind: ClipFilterThresholdKind,
    pub(super) execution_provider: String,
    pub(super) require_provider: bool,
    pub(super) action: ClipFilterAction,
    pub(super) enter_samples: u32,
    pub(super) leave_samples: u32,
    pub(super) mode: ClipFilterMode,
    pub(super) post_scores: bool,
    pub(super) post_embedding: bool,
    pub(super) post_frame: bool,
    pub(super) snapshot: bool,
    pub(super) max_batch: u32,
    pub(super) threads: u32,
    pub(super) sync_timeout: gst::ClockTime,
    pub(super) scene_gate: f64,
    pub(super) tensorrt_cache: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: None,
            variant: DEFAULT_VARIANT,
            labels: None,
            prompts: None,
            templates: DEFAULT_TEMPLATES.to_string(),
            interval: DEFAULT_INTERVAL,
            threshold: DEFAULT_THRESHOLD,
            threshold_kind: DEFAULT_THRESHOLD_KIND,
            execution_provider: DEFAULT_EXECUTION_PROVIDER.to_string(),
            require_provider: DEFAULT_REQUIRE_PROVIDER,
            action: DEFAULT_ACTION,
            enter_samples: DEFAULT_ENTER_SAMPLES,
            leave_samples: DEFAULT_LEAVE_SAMPLES,
            mode: DEFAULT_MODE,
            post_scores: DEFAULT_POST_SCORES,
            post_embedding: DEFAULT_POST_EMBEDDING,
            post_frame: DEFAULT_POST_FRAME,
            snapshot: DEFAULT_SNAPSHOT,
            max_batch: DEFAULT_MAX_BATCH,
            threads: DEFAULT_THREADS,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
            scene_gate: DEFAULT_SCENE_GATE,
            tensorrt_cache: None,
        }
    }
}

impl Settings {
    pub(super) fn engine_config(&self) -> Result<EngineConfig> {
        let model = self.model.clone().ok_or_else(|| {
            Error::invalid(
                "model",
                "the `model` property is not set: give the folder of a CLIP model",
            )
        })?;
        Ok(EngineConfig {
            model_dir: model,
            variant: self.variant.into(),
            session: SessionConfig {
                providers: Provider::parse_list(&self.execution_provider)?,
                require_provider: self.require_provider,
                intra_threads: self.threads as usize,
                tensorrt_cache: self.tensorrt_cache.clone(),
                ..SessionConfig::default()
            },
            batch: BatchConfig {
                max_batch: self.max_batch.max(1) as usize,
                ..BatchConfig::default()
            },
        })
    }

    pub(super) fn templates(&self) -> Result<Templates> {
        let t = self.templates.trim();
        if t.contains("{}") {
            Templates::custom(split_list(t))
        } else {
            t.parse()
        }
    }

    /// The label set: the labels file or the inline prompts.
    pub(super) fn label_set(&self) -> Result<LabelSet> {
        let templates = self.templates()?;
        match (&self.labels, &self.prompts) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "labels",
                "both `labels` and `prompts` are set: use one of them",
            )),
            (Some(path), None) => LabelSet::from_file(path),
            (None, Some(prompts)) => LabelSet::from_prompts(&split_list(prompts), templates),
            (None, None) => Err(Error::invalid(
                "labels",
                "neither `labels` (a label-set file) nor `prompts` is set",
            )),
        }
    }

    pub(super) fn threshold(&self) -> Result<Threshold> {
        let v = self.threshold;
        match self.threshold_kind {
            ClipFilterThresholdKind::Probability if !(v > 0.0 && v <= 1.0) => Err(Error::invalid(
                "threshold",
                format!("{v} is not a probability in (0, 1] (threshold-kind=probability)"),
            )),
            kind => Ok(kind.threshold(v)),
        }
    }

    pub(super) fn label_defaults(&self) -> Result<LabelDefaults> {
        Ok(LabelDefaults {
            threshold: self.threshold()?,
            action: self.action.into(),
            enter: self.enter_samples.max(1),
            leave: self.leave_samples.max(1),
        })
    }

    pub(super) fn rules(&self) -> Rules {
        Rules {
            interval: self.interval.nseconds(),
            mode: self.mode,
            post_scores: self.post_scores,
            post_embedding: self.post_embedding,
            post_frame: self.post_frame,
            snapshot: self.snapshot,
            sync_timeout: Duration::from_nanos(self.sync_timeout.nseconds()),
            scene_gate: self.scene_gate,
        }
    }
}

/// `a;b;c` or one item per line, blanks dropped.
pub(super) fn split_list(s: &str) -> Vec<String> {
    s.split([';', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_templates_parse() {
        assert_eq!(split_list(" red ;green\nblue;;"), ["red", "green", "blue"]);
        let s = Settings {
            templates: "a photo of {}.;{} on video".into(),
            ..Settings::default()
        };
        assert_eq!(
            s.templates().unwrap(),
            Templates::Custom(vec!["a photo of {}.".into(), "{} on video".into()])
        );
        let bad = Settings {
            templates: "imagenet81".into(),
            ..Settings::default()
        };
        assert!(
            bad.templates()
                .unwrap_err()
                .to_string()
                .contains("imagenet81")
        );
        let neither = Settings::default().label_set().unwrap_err().to_string();
        assert!(neither.contains("prompts"), "{neither}");
        let p = Settings {
            threshold: -0.2,
            ..Settings::default()
        };
        assert!(p.threshold().is_err());
    }
}
