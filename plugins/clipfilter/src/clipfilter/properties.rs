//! The element's properties: their names (for applications that set them, such as clipfilterd),
//! their defaults, and the settings they fill in.

use std::path::PathBuf;
use std::time::Duration;

use clipfilter::crops::{CropSpec, Tiles, parse_regions};
use clipfilter::encoder::{Provider, SessionConfig};
use clipfilter::engine::{Backend, EngineConfig};
use clipfilter::error::{Error, Result};
use clipfilter::labels::{LabelDefaults, LabelSet, Threshold};
use clipfilter::limits;
use clipfilter::remote::{self, RemoteConfig, RemoteTls};
use clipfilter::worker::BatchConfig;
use clipfilter::zeroshot::Templates;

use super::{
    ClipFilterAction, ClipFilterActionScope, ClipFilterBackend, ClipFilterFallback, ClipFilterFit,
    ClipFilterMode, ClipFilterThresholdKind, ClipFilterVariant, ClipFilterWireFormat,
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
pub const POST_EMBEDDING: &str = "post-embedding";
pub const POST_FRAME: &str = "post-frame";
pub const LABEL_SET: &str = "label-set";
pub const SNAPSHOT: &str = "snapshot";
pub const MAX_BATCH: &str = "max-batch";
pub const THREADS: &str = "threads";
pub const SYNC_TIMEOUT: &str = "sync-timeout";
pub const TENSORRT_CACHE: &str = "tensorrt-cache";
pub const BASELINE_FILE: &str = "baseline-file";
pub const SCENE_GATE: &str = "scene-gate";
pub const MAX_FRAME_PIXELS: &str = "max-frame-pixels";
pub const FIT: &str = "fit";
pub const REGIONS: &str = "regions";
pub const TILES: &str = "tiles";
pub const TILE_OVERLAP: &str = "tile-overlap";
pub const WHOLE_FRAME: &str = "whole-frame";
pub const ACTION_SCOPE: &str = "action-scope";
pub const STATS: &str = "stats";
pub const BACKEND: &str = "backend";
pub const ENDPOINTS: &str = "endpoints";
pub const WIRE_FORMAT: &str = "wire-format";
pub const IMAGE_MODEL_NAME: &str = "image-model-name";
pub const TEXT_MODEL_NAME: &str = "text-model-name";
pub const REMOTE_TIMEOUT: &str = "remote-timeout";
pub const CONNECT_TIMEOUT: &str = "connect-timeout";
pub const START_TIMEOUT: &str = "start-timeout";
pub const FALLBACK: &str = "fallback";
pub const TLS_CA: &str = "tls-ca";
pub const TLS_CERTIFICATE: &str = "tls-certificate";
pub const TLS_KEY: &str = "tls-key";
pub const TLS_DOMAIN: &str = "tls-domain";

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
pub const DEFAULT_BACKEND: ClipFilterBackend = ClipFilterBackend::Local;
pub const DEFAULT_WIRE_FORMAT: ClipFilterWireFormat = ClipFilterWireFormat::Fp32;
pub const DEFAULT_TEXT_MODEL_NAME: &str = remote::DEFAULT_TEXT_MODEL;
pub const DEFAULT_REMOTE_TIMEOUT: gst::ClockTime =
    gst::ClockTime::from_mseconds(remote::DEFAULT_TIMEOUT.as_millis() as u64);
pub const DEFAULT_CONNECT_TIMEOUT: gst::ClockTime =
    gst::ClockTime::from_mseconds(remote::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64);
pub const DEFAULT_START_TIMEOUT: gst::ClockTime =
    gst::ClockTime::from_mseconds(remote::DEFAULT_START_TIMEOUT.as_millis() as u64);
pub const DEFAULT_FALLBACK: ClipFilterFallback = ClipFilterFallback::None;
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
    pub(super) post_embedding: bool,
    pub(super) post_frame: bool,
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
    pub(super) post_embedding: bool,
    pub(super) post_frame: bool,
    pub(super) snapshot: bool,
    pub(super) max_batch: u32,
    pub(super) threads: u32,
    pub(super) sync_timeout: gst::ClockTime,
    pub(super) scene_gate: f64,
    pub(super) max_frame_pixels: u64,
    pub(super) tensorrt_cache: Option<PathBuf>,
    /// Where the `min_zscore` baselines are kept across restarts.
    pub(super) baseline_file: Option<PathBuf>,
    pub(super) fit: ClipFilterFit,
    pub(super) regions: Option<String>,
    pub(super) tiles: String,
    pub(super) tile_overlap: f64,
    pub(super) whole_frame: bool,
    pub(super) action_scope: ClipFilterActionScope,
    pub(super) remote: RemoteSettings,
}

/// The properties of `backend=triton`.
#[derive(Debug, Clone)]
pub(super) struct RemoteSettings {
    pub(super) backend: ClipFilterBackend,
    pub(super) endpoints: Option<String>,
    pub(super) wire_format: ClipFilterWireFormat,
    /// `None`: the default for the wire format.
    pub(super) image_model: Option<String>,
    pub(super) text_model: String,
    pub(super) timeout: gst::ClockTime,
    pub(super) connect_timeout: gst::ClockTime,
    pub(super) start_timeout: gst::ClockTime,
    pub(super) fallback: ClipFilterFallback,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) tls_certificate: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) tls_domain: Option<String>,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            backend: DEFAULT_BACKEND,
            endpoints: None,
            wire_format: DEFAULT_WIRE_FORMAT,
            image_model: None,
            text_model: DEFAULT_TEXT_MODEL_NAME.to_string(),
            timeout: DEFAULT_REMOTE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            start_timeout: DEFAULT_START_TIMEOUT,
            fallback: DEFAULT_FALLBACK,
            tls_ca: None,
            tls_certificate: None,
            tls_key: None,
            tls_domain: None,
        }
    }
}

impl RemoteSettings {
    /// The engine backend these properties describe.
    pub(super) fn backend(&self) -> Result<Backend> {
        if self.backend == ClipFilterBackend::Local {
            return Ok(Backend::Local);
        }
        let endpoints = split_endpoints(self.endpoints.as_deref().unwrap_or(""));
        if endpoints.is_empty() {
            return Err(Error::invalid(
                ENDPOINTS,
                "backend=triton needs at least one endpoint (e.g. endpoints=grpc://gpu1:8001)",
            ));
        }
        let wire = self.wire_format.into();
        let mut config = RemoteConfig::new(endpoints).with_wire(wire);
        if let Some(name) = &self.image_model {
            config.image_model = name.clone();
        }
        config.text_model = self.text_model.clone();
        config.timeout = duration(self.timeout);
        config.connect_timeout = duration(self.connect_timeout);
        config.start_timeout = duration(self.start_timeout);
        config.fallback = self.fallback.into();
        let tls = RemoteTls {
            ca_certificate: self.tls_ca.clone(),
            client_certificate: self.tls_certificate.clone(),
            client_key: self.tls_key.clone(),
            domain: self.tls_domain.clone(),
        };
        config.tls = (tls != RemoteTls::default()).then_some(tls);
        Ok(Backend::Triton(Box::new(config)))
    }
}

fn duration(t: gst::ClockTime) -> Duration {
    Duration::from_nanos(t.nseconds())
}

/// `a,b` or `a;b` or one per line, blanks dropped.
pub fn split_endpoints(s: &str) -> Vec<String> {
    s.split([',', ';', '\n', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
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
            max_frame_pixels: limits::DEFAULT_FRAME_PIXELS,
            tensorrt_cache: None,
            baseline_file: None,
            fit: DEFAULT_FIT,
            regions: None,
            tiles: DEFAULT_TILES.to_string(),
            tile_overlap: DEFAULT_TILE_OVERLAP,
            whole_frame: DEFAULT_WHOLE_FRAME,
            action_scope: DEFAULT_ACTION_SCOPE,
            remote: RemoteSettings::default(),
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
            backend: self.remote.backend()?,
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

    #[test]
    fn remote_properties_make_the_triton_backend() {
        assert_eq!(RemoteSettings::default().backend().unwrap(), Backend::Local);
        let mut r = RemoteSettings {
            backend: ClipFilterBackend::Triton,
            ..RemoteSettings::default()
        };
        let e = r.backend().unwrap_err().to_string();
        assert!(e.contains("endpoints"), "{e}");
        r.endpoints = Some("grpc://a:8001, grpcs://b:8001".into());
        r.wire_format = ClipFilterWireFormat::Uint8;
        r.timeout = gst::ClockTime::from_mseconds(1500);
        r.tls_ca = Some(PathBuf::from("/etc/ca.pem"));
        let Backend::Triton(c) = r.backend().unwrap() else {
            panic!("not triton")
        };
        assert_eq!(c.endpoints, ["grpc://a:8001", "grpcs://b:8001"]);
        assert_eq!(c.image_model, "clip_image_uint8");
        assert_eq!(c.text_model, "clip_text");
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(
            c.tls.unwrap().ca_certificate,
            Some(PathBuf::from("/etc/ca.pem"))
        );
        r.image_model = Some("mine".into());
        let Backend::Triton(c) = r.backend().unwrap() else {
            panic!("not triton")
        };
        assert_eq!(c.image_model, "mine");
        assert!(c.tls.is_some());
    }
}
