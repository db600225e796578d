//! The element's properties: their names (for applications that set them, such as clipfilterd),
//! their defaults, and the settings they fill in.

use std::path::PathBuf;
use std::time::Duration;

use clipfilter::crops::{CropSpec, Tiles, parse_regions};
use clipfilter::encoder::{Provider, SessionConfig};
use clipfilter::engine::EngineConfig;
use clipfilter::error::{Error, Result};
use clipfilter::labels::{LabelDefaults, LabelSet, Threshold};
use clipfilter::limits;
use clipfilter::worker::BatchConfig;
use clipfilter::zeroshot::Templates;

use super::{
    ClipFilterAction, ClipFilterActionScope, ClipFilterFit, ClipFilterMode,
    ClipFilterThresholdKind, ClipFilterVariant,
};

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
pub const SNAPSHOT: &str = "snapshot";
pub const MAX_BATCH: &str = "max-batch";
pub const THREADS: &str = "threads";
pub const SYNC_TIMEOUT: &str = "sync-timeout";
pub const TENSORRT_CACHE: &str = "tensorrt-cache";
pub const SCENE_GATE: &str = "scene-gate";
pub const FIT: &str = "fit";
pub const REGIONS: &str = "regions";
pub const TILES: &str = "tiles";
pub const TILE_OVERLAP: &str = "tile-overlap";
pub const WHOLE_FRAME: &str = "whole-frame";
pub const ACTION_SCOPE: &str = "action-scope";
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
pub const DEFAULT_SNAPSHOT: bool = false;
pub const DEFAULT_MAX_BATCH: u32 = limits::DEFAULT_MAX_BATCH;
pub const DEFAULT_THREADS: u32 = 0;
pub const DEFAULT_SYNC_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(10);
/// `scene-gate` default: automatic (on for live sources, off otherwise).
pub const DEFAULT_SCENE_GATE: f64 = -1.0;
/// Threshold the automatic gate uses on live sources (mean 8-bit level difference).
pub const AUTO_SCENE_GATE: f64 = 3.0;
/// Video covers the whole frame: letterboxed, one inference per sample.
pub const DEFAULT_FIT: ClipFilterFit = ClipFilterFit::Pad;
pub const DEFAULT_TILES: &str = "none";
pub const DEFAULT_TILE_OVERLAP: f64 = 0.1;
pub const DEFAULT_WHOLE_FRAME: bool = true;
pub const DEFAULT_ACTION_SCOPE: ClipFilterActionScope = ClipFilterActionScope::Frame;

/// The settings the streaming thread works with (copied when they change).
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    pub(super) interval: u64,
    pub(super) mode: ClipFilterMode,
    pub(super) post_scores: bool,
    pub(super) snapshot: bool,
    pub(super) sync_timeout: Duration,
    /// Scene-change gate threshold: < 0 automatic (on for live sources), 0 off.
    pub(super) scene_gate: f64,
    pub(super) action_scope: ClipFilterActionScope,
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
    pub(super) snapshot: bool,
    pub(super) max_batch: u32,
    pub(super) threads: u32,
    pub(super) sync_timeout: gst::ClockTime,
    pub(super) scene_gate: f64,
    pub(super) tensorrt_cache: Option<PathBuf>,
    pub(super) fit: ClipFilterFit,
    pub(super) regions: Option<String>,
    pub(super) tiles: String,
    pub(super) tile_overlap: f64,
    pub(super) whole_frame: bool,
    pub(super) action_scope: ClipFilterActionScope,
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
            snapshot: DEFAULT_SNAPSHOT,
            max_batch: DEFAULT_MAX_BATCH,
            threads: DEFAULT_THREADS,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
            scene_gate: DEFAULT_SCENE_GATE,
            tensorrt_cache: None,
            fit: DEFAULT_FIT,
            regions: None,
            tiles: DEFAULT_TILES.to_string(),
            tile_overlap: DEFAULT_TILE_OVERLAP,
            whole_frame: DEFAULT_WHOLE_FRAME,
            action_scope: DEFAULT_ACTION_SCOPE,
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
            snapshot: self.snapshot,
            sync_timeout: Duration::from_nanos(self.sync_timeout.nseconds()),
            scene_gate: self.scene_gate,
            action_scope: self.action_scope,
        }
    }

    /// What to look at, as the properties say (the label set may add regions).
    pub(super) fn crop_spec(&self) -> Result<CropSpec> {
        let regions = match &self.regions {
            Some(text) => parse_regions(text).map_err(|m| Error::invalid(REGIONS, m))?,
            None => Vec::new(),
        };
        let tiles =
            Tiles::parse(&self.tiles, self.tile_overlap).map_err(|m| Error::invalid(TILES, m))?;
        Ok(CropSpec {
            fit: self.fit.into(),
            whole_frame: self.whole_frame,
            tiles,
            regions,
        })
    }

    /// What to look at with label set `set`: the properties' regions and the set's together,
    /// every region a label is limited to defined.
    pub(super) fn crop_spec_for(&self, set: &LabelSet) -> Result<CropSpec> {
        let mut spec = self.crop_spec()?;
        spec.regions = set.all_regions(&spec.regions)?;
        set.check_regions(&spec.regions)?;
        spec.check().map_err(|m| Error::invalid(REGIONS, m))?;
        Ok(spec)
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

    #[test]
    fn crop_settings_parse_with_clear_errors() {
        let s = Settings {
            regions: Some("gate:0.62,0.40,0.30,0.35".into()),
            tiles: "3x2".into(),
            ..Settings::default()
        };
        let spec = s.crop_spec().unwrap();
        assert_eq!(spec.regions.len(), 1);
        assert_eq!(spec.tiles.map(|t| (t.columns, t.rows)), Some((3, 2)));
        let bad = |s: Settings| s.crop_spec().unwrap_err().to_string();
        let e = bad(Settings {
            regions: Some("gate:0.9,0.4,0.3,0.35".into()),
            ..Settings::default()
        });
        assert!(
            e.starts_with("invalid regions: region 1") && e.contains("outside"),
            "{e}"
        );
        let e = bad(Settings {
            tiles: "0x3".into(),
            ..Settings::default()
        });
        assert!(
            e.starts_with("invalid tiles:") && e.contains("between 1 and 8"),
            "{e}"
        );
        let e = bad(Settings {
            tiles: "12x12".into(),
            ..Settings::default()
        });
        assert!(e.contains("12 columns"), "{e}");
    }
}
