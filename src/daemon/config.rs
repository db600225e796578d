//! The daemon's configuration file (`/etc/clipfilter/clipfilterd.toml` by default).
//!
//! ```toml
//! # Relative paths anywhere in this file are relative to the folder of this file.
//! state_dir = "/var/lib/clipfilter"   # outbox and snapshots (default: $STATE_DIRECTORY, else
//!                                     # /var/lib/clipfilter)
//! listen = "127.0.0.1:9464"           # /metrics, /healthz, /status ("" turns the server off)
//!
//! [model]
//! repo = "Xenova/clip-vit-base-patch32"   # a model in the hub cache (`clipfilterd model fetch`)
//! # revision = "main"                     # branch, tag or commit of `repo`
//! # cache_dir = "/var/lib/clipfilter/models"   # default: the cache `model fetch` uses
//! # path = "/srv/models/clip-vit-base-patch32" # ...or a model folder (give `repo` or `path`)
//! variant = "fp32"                # fp32 | fp16 | quantized
//! providers = ["cpu"]             # in order of preference: tensorrt, cuda, cpu
//! require_provider = false        # fail instead of falling back to the next provider
//! threads = 0                     # threads per ONNX Runtime operator (0: one per core)
//! max_batch = 8                   # largest inference batch (frames of all pipelines together)
//! # backend = "triton"            # local (default) | triton: the towers run on Triton
//! #                               # Inference Server; the folder above still gives the tokenizer
//! #                               # and preprocessing, and the servers' models are checked against it
//! # endpoints = ["grpc://gpu1:8001", "grpcs://gpu2:8001"]   # round-robin over ready ones
//! # wire_format = "uint8"         # fp32 (default) | fp16 | uint8 (8-bit RGB, normalised by the server)
//! # image_model = "clip_image_uint8"   # default: clip_image[_fp16|_uint8] after wire_format
//! # text_model = "clip_text"
//! # timeout = "5s"                # one call, failing over to another endpoint included
//! # connect_timeout = "2s"        # connect and health check
//! # start_timeout = "30s"         # wait at start for one endpoint to be ready
//! # fallback = "none"             # none: no endpoint ready -> samples dropped and counted;
//! #                               # local: run them on this machine's ONNX Runtime
//! # tls_ca = "ca.pem"             # grpcs://: CA, client certificate + key, name to verify
//! # tls_certificate = "client.pem"
//! # tls_key = "client.key"
//! # tls_domain = "triton.internal"
//!
//! [snapshots]                     # JPEGs of the frames that start matches
//! # dir = "/var/lib/clipfilter/snapshots"   # default: <state_dir>/snapshots
//! max_files = 1000                # the oldest are deleted beyond either bound
//! max_bytes = "256MiB"
//! quality = 85
//!
//! [outbox]
//! max_pending = 100000            # events kept per output while it is down (an output's own
//!                                 # `max_pending` wins); when full the oldest is dropped
//!
//! [restart]                       # supervision of pipelines
//! initial = "1s"                  # first wait after a failure, doubled each time (with jitter)
//! max = "60s"                     # longest wait
//! stall_timeout = "30s"           # a running pipeline that sees no frame this long is restarted
//!
//! [[output]]                      # see `crate::daemon::output`
//! name = "log"
//! type = "jsonl"
//! path = "-"
//!
//! [[pipeline]]
//! name = "driveway"               # unique: letters, digits, `_`, `-`, `.`
//! source = "rtsp://user:secret@192.168.1.20:554/stream1"
//! transport = "tcp"               # rtsp: tcp | udp | auto
//! latency = "200ms"               # rtsp: jitter buffer
//! # username = "user"            # rtsp, http(s): credentials outside the URL
//! # password = "secret"
//! # loop = true                   # file: start again at the end (as if live)
//! # realtime = true               # file, launch: play at the media's speed (default true)
//! # launch = "v4l2src ! image/jpeg,width=1280 ! jpegdec"   # instead of `source`: a raw
//! #                                 # gst-launch description whose last element feeds clipfilter
//! # sink = "videoconvert ! x264enc ! mp4mux ! filesink location={config_dir}/out.mp4"
//! #                                 # after clipfilter (default: a fake sink); in `launch` and
//! #                                 # `sink`, {config_dir} is the folder of this file
//! keyframes_only = false          # decode key frames only (when `interval` exceeds the GOP)
//! # scene_gate = 3.0              # skip inference while the picture does not change (mean
//! #                               # 8-bit level difference; 0: off; default: on for live sources)
//! interval = "1s"                 # time between sampled frames
//! labels = "labels/driveway.toml" # a label set (reloaded when it changes), or:
//! # prompts = ["a person", "a car"]
//! # templates = "ensemble7"       # none | single | ensemble7 | imagenet80
//! min_probability = 0.6           # default threshold of labels without their own, or
//! # min_cosine = 0.25
//! action = "none"                 # none | drop | blank | pixelate (labels may override)
//! enter = 2                       # consecutive samples to start a match
//! leave = 3                       # consecutive samples to end it
//! mode = "async"                  # async | sync (hold each sampled frame until its verdict)
//! snapshots = true                # save the frame that starts a match
//! outputs = ["log"]               # default: every output
//! ```
//!
//! Parsing goes in two steps: raw serde structs (unknown fields are errors with their line),
//! then a validated [`Config`] whose errors name the file, line and field.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::daemon::output::{OutputConfig, Outputs};
use crate::daemon::secret::{Secret, redact_url};
use crate::daemon::source::{Source, SourceKind, Transport};
use clipfilter::encoder::Provider;
use clipfilter::engine::Backend;
use clipfilter::error::{Error, Location, Result};
use clipfilter::labels::{Action, LabelSet, Threshold};
use clipfilter::model::Variant;
use clipfilter::remote::{self, Fallback, RemoteConfig, RemoteTls, WireFormat};
use clipfilter::zeroshot::Templates;
use gstclipfilter::clipfilter::{ClipFilterMode, from_nick, nicks};

/// In `launch` and `sink` descriptions, stands for the folder of the configuration file (file
/// names inside descriptions are otherwise relative to the daemon's working directory).
pub const CONFIG_DIR: &str = "{config_dir}";

/// Where the daemon looks for its configuration without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clipfilter/clipfilterd.toml";
/// State folder when neither the file nor systemd names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/clipfilter";
/// Default address of the metrics and health server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Default time between sampled frames.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound on the number of snapshot files.
pub const DEFAULT_SNAPSHOT_FILES: u64 = 1000;
/// Default bound on the bytes of snapshot files (256 MiB).
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 256 << 20;
/// Default JPEG quality of snapshots.
pub const DEFAULT_SNAPSHOT_QUALITY: u8 = 85;
/// Default first wait before restarting a failed pipeline.
pub const DEFAULT_RESTART_INITIAL: Duration = Duration::from_secs(1);
/// Default longest wait before restarting a failed pipeline.
pub const DEFAULT_RESTART_MAX: Duration = Duration::from_secs(60);
/// Default time without frames after which a running pipeline is restarted.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Raw, as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<PathBuf>>,
    listen: Option<Spanned<String>>,
    model: Option<Spanned<RawModel>>,
    #[serde(default)]
    snapshots: RawSnapshots,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default)]
    restart: RawRestart,
    #[serde(default)]
    output: Vec<Spanned<OutputConfig>>,
    #[serde(default)]
    pipeline: Vec<Spanned<RawPipeline>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: Option<Spanned<PathBuf>>,
    repo: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    cache_dir: Option<Spanned<PathBuf>>,
    variant: Option<Spanned<String>>,
    providers: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    require_provider: bool,
    threads: Option<Spanned<u32>>,
    max_batch: Option<Spanned<u32>>,
    tensorrt_cache: Option<Spanned<PathBuf>>,
    backend: Option<Spanned<String>>,
    endpoints: Option<Spanned<Vec<String>>>,
    wire_format: Option<Spanned<String>>,
    image_model: Option<Spanned<String>>,
    text_model: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    start_timeout: Option<Spanned<String>>,
    fallback: Option<Spanned<String>>,
    tls_ca: Option<Spanned<PathBuf>>,
    tls_certificate: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    tls_domain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSnapshots {
    dir: Option<Spanned<PathBuf>>,
    max_files: Option<Spanned<u64>>,
    max_bytes: Option<Spanned<RawSize>>,
    quality: Option<Spanned<u8>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_pending: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    initial: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
    stall_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    source: Option<Spanned<String>>,
    launch: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    latency: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    #[serde(rename = "loop")]
    looping: Option<Spanned<bool>>,
    realtime: Option<Spanned<bool>>,
    sink: Option<Spanned<String>>,
    #[serde(default)]
    keyframes_only: bool,
    interval: Option<Spanned<String>>,
    labels: Option<Spanned<PathBuf>>,
    prompts: Option<Spanned<Vec<String>>>,
    templates: Option<Spanned<String>>,
    min_probability: Option<Spanned<f64>>,
    min_cosine: Option<Spanned<f64>>,
    action: Option<Spanned<String>>,
    enter: Option<Spanned<u32>>,
    leave: Option<Spanned<u32>>,
    mode: Option<Spanned<String>>,
    scene_gate: Option<Spanned<f64>>,
    snapshots: Option<bool>,
    outputs: Option<Spanned<Vec<String>>>,
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A model folder.
    Path(PathBuf),
    /// A repository in the Hugging Face hub cache, as `clipfilterd model fetch` leaves it.
    Repo {
        repo: String,
        revision: String,
        /// `None`: the cache `model fetch` uses by default.
        cache_dir: Option<PathBuf>,
    },
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Path(p) => write!(f, "{}", p.display()),
            ModelSource::Repo { repo, revision, .. } => write!(f, "{repo}@{revision}"),
        }
    }
}

/// The `[model]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub source: ModelSource,
    pub variant: Variant,
    pub providers: Vec<Provider>,
    pub require_provider: bool,
    pub threads: u32,
    pub max_batch: u32,
    pub tensorrt_cache: Option<PathBuf>,
    /// Where the towers run: this process (`local`) or Triton endpoints (`triton`).
    pub backend: Backend,
}

/// The `[snapshots]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Folder of the JPEG files (default `<state_dir>/snapshots`).
    pub dir: PathBuf,
    pub max_files: u64,
    pub max_bytes: u64,
    pub quality: u8,
}

/// The `[restart]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// `None`: never restart a pipeline for lack of frames.
    pub stall_timeout: Option<Duration>,
}

/// What a pipeline matches against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// A label-set file (absolute), reloaded by the element when it changes.
    File(PathBuf),
    /// Inline prompts, one label each.
    Prompts(Vec<String>),
}

/// One `[[pipeline]]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub name: String,
    pub source: Source,
    /// A gst-launch description placed after clipfilter (default: a fake sink).
    pub sink: Option<String>,
    pub interval: Duration,
    pub labels: LabelSource,
    pub templates: Option<String>,
    pub threshold: Option<Threshold>,
    pub action: Option<Action>,
    pub enter: Option<u32>,
    pub leave: Option<u32>,
    pub mode: ClipFilterMode,
    /// Scene-change gate threshold (the element's `scene-gate`); `None`: automatic, on for
    /// live sources.
    pub scene_gate: Option<f64>,
    pub snapshots: bool,
    /// Names of the outputs its events go to (already checked against `[[output]]`).
    pub outputs: Vec<String>,
}

/// The whole file, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    /// `None`: no HTTP server.
    pub listen: Option<SocketAddr>,
    pub model: ModelConfig,
    pub snapshots: SnapshotConfig,
    pub restart: RestartPolicy,
    /// Outputs as written (with the `[outbox]` default filled in).
    pub output_configs: Vec<OutputConfig>,
    pub outputs: Outputs,
    pub pipelines: Vec<PipelineConfig>,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    base: PathBuf,
}

impl Ctx<'_> {
    fn at(&self, span: Option<std::ops::Range<usize>>, field: impl Into<String>) -> Location {
        let field = field.into();
        match span {
            Some(s) => Location::from_offset(self.text, s.start, Some(field)),
            None => locate(self.text, &field),
        }
    }

    fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::config(self.path, self.at(span, field), message)
    }

    fn duration(&self, raw: &Spanned<String>, field: &str) -> Result<Duration> {
        crate::daemon::duration::parse(raw.get_ref())
            .map_err(|m| self.err(Some(raw.span()), field, m))
    }

    fn path(&self, raw: &Path) -> PathBuf {
        normalize(&self.base.join(raw))
    }
}

/// `path` without `.` and `..` components (lexically; symbolic links are not followed).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The line and column of `field` (a dotted path such as `pipeline[2].source` or
/// `output[0].url`) in `text`, for errors found after parsing.
fn locate(text: &str, field: &str) -> Location {
    let span = toml::de::DeTable::parse(text).ok().and_then(|root| {
        let mut span = None;
        let mut table = Some(root.get_ref());
        let mut value: Option<&toml::de::DeValue<'_>> = None;
        for part in field.split('.') {
            let (key, index) = match part.split_once('[') {
                Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let t = match (table, value) {
                (Some(t), _) => t,
                (None, Some(toml::de::DeValue::Table(t))) => t,
                _ => break,
            };
            let Some((_, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
                break;
            };
            span = Some(v.span());
            table = None;
            value = Some(v.get_ref());
            if let Some(i) = index {
                let Some(toml::de::DeValue::Array(a)) = value else {
                    break;
                };
                let Some(item) = a.get(i) else { break };
                span = Some(item.span());
                value = Some(item.get_ref());
            }
        }
        span
    });
    match span {
        Some(s) => Location::from_offset(text, s.start, Some(field.to_string())),
        None => Location::field(field),
    }
}

/// A size in bytes: an integer, or a string such as `"256MiB"`, `"1.5 GB"`, `"800k"`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?} (expected e.g. \"256MiB\" or 1000000)"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    Ok((number * factor).round() as u64)
}

/// Whether `name` can name a pipeline: it appears in file names, metric labels and MQTT topics.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
}

fn state_dir_default() -> PathBuf {
    std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|s| s.split(':').find(|p| !p.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

impl Config {
    /// Reads and validates the configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors and anchors relative
    /// paths (its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::toml(path, text, &e))?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("."));
        let cx = Ctx { text, path, base };

        let state_dir = match &raw.state_dir {
            Some(d) if d.get_ref().as_os_str().is_empty() => {
                return Err(cx.err(Some(d.span()), "state_dir", "must not be empty"));
            }
            Some(d) => cx.path(d.get_ref()),
            None => state_dir_default(),
        };
        let listen = match &raw.listen {
            None => Some(parse_addr(DEFAULT_LISTEN).map_err(|m| cx.err(None, "listen", m))?),
            Some(l) if l.get_ref().trim().is_empty() => None,
            Some(l) => {
                Some(parse_addr(l.get_ref()).map_err(|m| cx.err(Some(l.span()), "listen", m))?)
            }
        };
        let model = match &raw.model {
            Some(m) => model(&cx, m)?,
            None => {
                return Err(cx.err(
                    None,
                    "model",
                    "no [model] table: add one with `repo = \"Xenova/clip-vit-base-patch32\"` (fetched with `clipfilterd model fetch`) or `path = \"/path/to/model\"`",
                ));
            }
        };
        let snapshots = snapshots(&cx, &raw.snapshots, &state_dir)?;
        let restart = restart(&cx, &raw.restart)?;

        let default_pending = match &raw.outbox.max_pending {
            Some(n) if *n.get_ref() == 0 => {
                return Err(cx.err(Some(n.span()), "outbox.max_pending", "must be at least 1"));
            }
            Some(n) => Some(*n.get_ref()),
            None => None,
        };
        let mut output_configs: Vec<OutputConfig> = Vec::with_capacity(raw.output.len());
        for o in &raw.output {
            let mut o = o.get_ref().clone();
            if let Some(n) = default_pending {
                fill_max_pending(&mut o, n);
            }
            if let OutputConfig::Jsonl(j) = &mut o
                && j.path != Path::new("-")
            {
                j.path = cx.path(&j.path);
            }
            output_configs.push(o);
        }
        let outputs = Outputs::new(path, output_configs.clone()).map_err(|e| relocate(e, text))?;

        let mut pipelines: Vec<PipelineConfig> = Vec::with_capacity(raw.pipeline.len());
        for (i, p) in raw.pipeline.iter().enumerate() {
            let p = pipeline(&cx, i, p.get_ref(), &outputs)?;
            if let Some(first) = pipelines.iter().position(|o| o.name == p.name) {
                let name = &raw.pipeline[i].get_ref().name;
                return Err(cx.err(
                    Some(name.span()),
                    format!("pipeline[{i}].name"),
                    format!(
                        "duplicate pipeline name `{}` (pipeline[{first}] has it too)",
                        p.name
                    ),
                ));
            }
            pipelines.push(p);
        }
        Ok(Config {
            path: path.to_path_buf(),
            state_dir,
            listen,
            model,
            snapshots,
            restart,
            output_configs,
            outputs,
            pipelines,
        })
    }

    /// The pipeline called `name`.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

/// Fills in a line and column for errors that only name a field.
fn relocate(err: Error, text: &str) -> Error {
    match err {
        Error::Config {
            path,
            location,
            message,
        } if location.line.is_none() => {
            let location = match &location.field {
                Some(f) => locate(text, f),
                None => location,
            };
            Error::Config {
                path,
                location,
                message,
            }
        }
        other => other,
    }
}

fn fill_max_pending(o: &mut OutputConfig, n: u64) {
    let slot = match o {
        OutputConfig::Jsonl(c) => &mut c.max_pending,
        OutputConfig::Webhook(c) => &mut c.max_pending,
        OutputConfig::Mqtt(c) => &mut c.max_pending,
        OutputConfig::Nats(c) => &mut c.max_pending,
    };
    slot.get_or_insert(n);
}

fn parse_addr(text: &str) -> std::result::Result<SocketAddr, String> {
    SocketAddr::from_str(text.trim()).map_err(|e| {
        format!("{text:?} is not an address with a port such as \"127.0.0.1:9464\": {e}")
    })
}

fn model(cx: &Ctx<'_>, raw: &Spanned<RawModel>) -> Result<ModelConfig> {
    let m = raw.get_ref();
    let source = match (&m.path, &m.repo) {
        (Some(p), None) => {
            if m.revision.is_some() || m.cache_dir.is_some() {
                return Err(cx.err(
                    Some(p.span()),
                    "model.path",
                    "revision and cache_dir go with `repo`, not with `path`",
                ));
            }
            ModelSource::Path(cx.path(p.get_ref()))
        }
        (None, Some(r)) => {
            let repo = r.get_ref().trim();
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|s| s.is_empty()) {
                return Err(cx.err(
                    Some(r.span()),
                    "model.repo",
                    format!("`{repo}` is not a hub repository id such as \"Xenova/clip-vit-base-patch32\""),
                ));
            }
            ModelSource::Repo {
                repo: repo.to_string(),
                revision: m
                    .revision
                    .as_ref()
                    .map_or_else(|| "main".to_string(), |r| r.get_ref().trim().to_string()),
                cache_dir: m.cache_dir.as_ref().map(|d| cx.path(d.get_ref())),
            }
        }
        (Some(p), Some(_)) => {
            return Err(cx.err(
                Some(p.span()),
                "model.path",
                "give `path` or `repo`, not both",
            ));
        }
        (None, None) => {
            return Err(cx.err(
                Some(raw.span()),
                "model",
                "give `repo` (a model fetched with `clipfilterd model fetch`) or `path` (a model folder)",
            ));
        }
    };
    let variant = match &m.variant {
        Some(v) => v.get_ref().parse::<Variant>().map_err(|_| {
            cx.err(
                Some(v.span()),
                "model.variant",
                format!("`{}`: expected fp32, fp16 or quantized", v.get_ref()),
            )
        })?,
        None => Variant::Fp32,
    };
    let providers = match &m.providers {
        Some(p) if p.get_ref().is_empty() => {
            return Err(cx.err(Some(p.span()), "model.providers", "the list is empty"));
        }
        Some(p) => p
            .get_ref()
            .iter()
            .map(|s| s.trim().parse::<Provider>())
            .collect::<Result<Vec<_>>>()
            .map_err(|e| {
                let message = match e {
                    Error::InvalidInput { message, .. } => message,
                    other => other.to_string(),
                };
                cx.err(Some(p.span()), "model.providers", message)
            })?,
        None => vec![Provider::Cpu],
    };
    let max_batch = match &m.max_batch {
        Some(b) if *b.get_ref() == 0 || *b.get_ref() > 1024 => {
            return Err(cx.err(
                Some(b.span()),
                "model.max_batch",
                "must be between 1 and 1024",
            ));
        }
        Some(b) => *b.get_ref(),
        None => 8,
    };
    let threads = match &m.threads {
        Some(t) if *t.get_ref() > 1024 => {
            return Err(cx.err(Some(t.span()), "model.threads", "must be at most 1024"));
        }
        Some(t) => *t.get_ref(),
        None => 0,
    };
    Ok(ModelConfig {
        source,
        variant,
        providers,
        require_provider: m.require_provider,
        threads,
        max_batch,
        tensorrt_cache: m.tensorrt_cache.as_ref().map(|d| cx.path(d.get_ref())),
        backend: backend(cx, raw)?,
    })
}

/// `[model] backend` and the keys of `backend = "triton"`.
fn backend(cx: &Ctx<'_>, raw: &Spanned<RawModel>) -> Result<Backend> {
    let m = raw.get_ref();
    let name = m.backend.as_ref().map_or("local", |b| b.get_ref().trim());
    let remote_keys: [(&str, Option<std::ops::Range<usize>>); 12] = [
        ("endpoints", m.endpoints.as_ref().map(Spanned::span)),
        ("wire_format", m.wire_format.as_ref().map(Spanned::span)),
        ("image_model", m.image_model.as_ref().map(Spanned::span)),
        ("text_model", m.text_model.as_ref().map(Spanned::span)),
        ("timeout", m.timeout.as_ref().map(Spanned::span)),
        (
            "connect_timeout",
            m.connect_timeout.as_ref().map(Spanned::span),
        ),
        ("start_timeout", m.start_timeout.as_ref().map(Spanned::span)),
        ("fallback", m.fallback.as_ref().map(Spanned::span)),
        ("tls_ca", m.tls_ca.as_ref().map(Spanned::span)),
        (
            "tls_certificate",
            m.tls_certificate.as_ref().map(Spanned::span),
        ),
        ("tls_key", m.tls_key.as_ref().map(Spanned::span)),
        ("tls_domain", m.tls_domain.as_ref().map(Spanned::span)),
    ];
    match name {
        "local" => {
            if let Some((key, span)) = remote_keys.into_iter().find(|(_, s)| s.is_some()) {
                return Err(cx.err(
                    span,
                    format!("model.{key}"),
                    "goes with backend = \"triton\"",
                ));
            }
            return Ok(Backend::Local);
        }
        "triton" => {}
        other => {
            return Err(cx.err(
                m.backend.as_ref().map(Spanned::span),
                "model.backend",
                format!("`{other}`: expected local or triton"),
            ));
        }
    }
    let endpoints = match &m.endpoints {
        None => {
            return Err(cx.err(
                m.backend.as_ref().map(Spanned::span),
                "model.endpoints",
                "backend = \"triton\" needs endpoints = [\"grpc://host:8001\", ...]",
            ));
        }
        Some(e) if e.get_ref().is_empty() => {
            return Err(cx.err(Some(e.span()), "model.endpoints", "the list is empty"));
        }
        Some(e) => {
            for endpoint in e.get_ref() {
                clipfilter_triton::check_endpoint(endpoint)
                    .map_err(|err| cx.err(Some(e.span()), "model.endpoints", err.to_string()))?;
            }
            e.get_ref()
                .iter()
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        }
    };
    let wire = match &m.wire_format {
        Some(w) => remote::parse_wire(w.get_ref().trim()).map_err(|_| {
            cx.err(
                Some(w.span()),
                "model.wire_format",
                format!("`{}`: expected fp32, fp16 or uint8", w.get_ref()),
            )
        })?,
        None => WireFormat::Fp32,
    };
    let mut config = RemoteConfig::new(endpoints).with_wire(wire);
    let model_name = |raw: &Spanned<String>, field: &str| {
        let name = raw.get_ref().trim();
        if name.is_empty() || name.contains(['/', ' ']) {
            Err(cx.err(
                Some(raw.span()),
                field,
                format!("{name:?} is not a Triton model name"),
            ))
        } else {
            Ok(name.to_string())
        }
    };
    if let Some(n) = &m.image_model {
        config.image_model = model_name(n, "model.image_model")?;
    }
    if let Some(n) = &m.text_model {
        config.text_model = model_name(n, "model.text_model")?;
    }
    let positive = |raw: &Spanned<String>, field: &str| -> Result<Duration> {
        let d = cx.duration(raw, field)?;
        if d < Duration::from_millis(1) {
            return Err(cx.err(Some(raw.span()), field, "must be at least 1ms"));
        }
        Ok(d)
    };
    if let Some(t) = &m.timeout {
        config.timeout = positive(t, "model.timeout")?;
    }
    if let Some(t) = &m.connect_timeout {
        config.connect_timeout = positive(t, "model.connect_timeout")?;
    }
    if let Some(t) = &m.start_timeout {
        config.start_timeout = positive(t, "model.start_timeout")?;
    }
    if let Some(f) = &m.fallback {
        config.fallback = Fallback::parse(f.get_ref().trim()).map_err(|_| {
            cx.err(
                Some(f.span()),
                "model.fallback",
                format!("`{}`: expected none or local", f.get_ref()),
            )
        })?;
    }
    let tls = RemoteTls {
        ca_certificate: m.tls_ca.as_ref().map(|p| cx.path(p.get_ref())),
        client_certificate: m.tls_certificate.as_ref().map(|p| cx.path(p.get_ref())),
        client_key: m.tls_key.as_ref().map(|p| cx.path(p.get_ref())),
        domain: m
            .tls_domain
            .as_ref()
            .map(|d| d.get_ref().trim().to_string()),
    };
    if tls.client_certificate.is_some() != tls.client_key.is_some() {
        let span = m
            .tls_certificate
            .as_ref()
            .or(m.tls_key.as_ref())
            .map(Spanned::span);
        return Err(cx.err(
            span,
            "model.tls_certificate",
            "tls_certificate and tls_key go together (mutual TLS)",
        ));
    }
    config.tls = (tls != RemoteTls::default()).then_some(tls);
    Ok(Backend::Triton(config))
}

fn snapshots(cx: &Ctx<'_>, raw: &RawSnapshots, state_dir: &Path) -> Result<SnapshotConfig> {
    let max_files = match &raw.max_files {
        Some(n) if *n.get_ref() == 0 => {
            return Err(cx.err(Some(n.span()), "snapshots.max_files", "must be at least 1"));
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_SNAPSHOT_FILES,
    };
    let max_bytes = match &raw.max_bytes {
        Some(s) => {
            let bytes = match s.get_ref() {
                RawSize::Bytes(b) => *b,
                RawSize::Text(t) => {
                    parse_size(t).map_err(|m| cx.err(Some(s.span()), "snapshots.max_bytes", m))?
                }
            };
            if bytes < 4096 {
                return Err(cx.err(
                    Some(s.span()),
                    "snapshots.max_bytes",
                    "must be at least 4 KiB",
                ));
            }
            bytes
        }
        None => DEFAULT_SNAPSHOT_BYTES,
    };
    let quality = match &raw.quality {
        Some(q) if !(1..=100).contains(q.get_ref()) => {
            return Err(cx.err(
                Some(q.span()),
                "snapshots.quality",
                "must be between 1 and 100",
            ));
        }
        Some(q) => *q.get_ref(),
        None => DEFAULT_SNAPSHOT_QUALITY,
    };
    Ok(SnapshotConfig {
        dir: raw
            .dir
            .as_ref()
            .map_or_else(|| state_dir.join("snapshots"), |d| cx.path(d.get_ref())),
        max_files,
        max_bytes,
        quality,
    })
}

fn restart(cx: &Ctx<'_>, raw: &RawRestart) -> Result<RestartPolicy> {
    let initial = match &raw.initial {
        Some(d) => cx.duration(d, "restart.initial")?,
        None => DEFAULT_RESTART_INITIAL,
    };
    if initial.is_zero() {
        return Err(cx.err(
            raw.initial.as_ref().map(Spanned::span),
            "restart.initial",
            "must be greater than zero",
        ));
    }
    let max = match &raw.max {
        Some(d) => cx.duration(d, "restart.max")?,
        None => DEFAULT_RESTART_MAX.max(initial),
    };
    if max < initial {
        return Err(cx.err(
            raw.max.as_ref().map(Spanned::span),
            "restart.max",
            "must not be shorter than restart.initial",
        ));
    }
    let stall_timeout = match &raw.stall_timeout {
        Some(d) => Some(cx.duration(d, "restart.stall_timeout")?).filter(|d| !d.is_zero()),
        None => Some(DEFAULT_STALL_TIMEOUT),
    };
    Ok(RestartPolicy {
        initial,
        max,
        stall_timeout,
    })
}

fn pipeline(cx: &Ctx<'_>, i: usize, p: &RawPipeline, outputs: &Outputs) -> Result<PipelineConfig> {
    let at = |f: &str| format!("pipeline[{i}].{f}");
    let name = p.name.get_ref().trim().to_string();
    if !valid_name(&name) {
        return Err(cx.err(
            Some(p.name.span()),
            at("name"),
            format!("`{name}`: use 1 to 64 letters, digits, `_`, `-` or `.` (it names files, metrics and MQTT topics)"),
        ));
    }

    let password = p
        .password
        .as_ref()
        .map(|s| Secret::new(s.get_ref().clone()));
    let mut source = match (&p.source, &p.launch) {
        (Some(s), None) => Source::parse(s.get_ref(), &cx.base).map_err(|m| {
            cx.err(
                Some(s.span()),
                at("source"),
                format!("{}: {m}", redact_url(s.get_ref())),
            )
        })?,
        (None, Some(l)) => {
            if l.get_ref().trim().is_empty() {
                return Err(cx.err(Some(l.span()), at("launch"), "must not be empty"));
            }
            Source::launch(
                &l.get_ref()
                    .replace(CONFIG_DIR, &cx.base.display().to_string()),
            )
        }
        (Some(s), Some(_)) => {
            return Err(cx.err(
                Some(s.span()),
                at("source"),
                "give `source` or `launch`, not both",
            ));
        }
        (None, None) => {
            return Err(cx.err(
                Some(p.name.span()),
                at("source"),
                "a pipeline needs a `source` (a URI or a file path) or a `launch` description",
            ));
        }
    };
    let kind = source.kind();
    let only = |field: &str, span: std::ops::Range<usize>, kinds: &[SourceKind], what: &str| {
        if kinds.contains(&kind) {
            Ok(())
        } else {
            Err(cx.err(
                Some(span),
                at(field),
                format!(
                    "`{field}` applies to {what} sources only, not to {}",
                    kind.describe()
                ),
            ))
        }
    };
    if let Some(t) = &p.transport {
        only("transport", t.span(), &[SourceKind::Rtsp], "rtsp://")?;
        let transport = t
            .get_ref()
            .parse::<Transport>()
            .map_err(|m| cx.err(Some(t.span()), at("transport"), m))?;
        source.options.transport = Some(transport);
    }
    if let Some(l) = &p.latency {
        only("latency", l.span(), &[SourceKind::Rtsp], "rtsp://")?;
        source.options.latency = Some(cx.duration(l, &at("latency"))?);
    }
    if let Some(u) = &p.username {
        only(
            "username",
            u.span(),
            &[SourceKind::Rtsp, SourceKind::Http],
            "rtsp:// and http(s)://",
        )?;
        if source.has_userinfo() {
            return Err(cx.err(
                Some(u.span()),
                at("username"),
                "the source URL already carries credentials: give them in one place",
            ));
        }
        source.options.username = Some(u.get_ref().clone());
    }
    if let Some(pw) = &p.password {
        only(
            "password",
            pw.span(),
            &[SourceKind::Rtsp, SourceKind::Http],
            "rtsp:// and http(s)://",
        )?;
        if p.username.is_none() {
            return Err(cx.err(
                Some(pw.span()),
                at("password"),
                "a password needs a username",
            ));
        }
        source.options.password = password;
    }
    if let Some(l) = &p.looping {
        only("loop", l.span(), &[SourceKind::File], "file")?;
        source.options.looping = *l.get_ref();
    }
    if let Some(r) = &p.realtime {
        only(
            "realtime",
            r.span(),
            &[SourceKind::File, SourceKind::Launch],
            "file and launch",
        )?;
        source.options.realtime = *r.get_ref();
    }
    source.options.keyframes_only = p.keyframes_only;
    let sink = match &p.sink {
        Some(s) if s.get_ref().trim().is_empty() => {
            return Err(cx.err(Some(s.span()), at("sink"), "must not be empty"));
        }
        Some(s) => Some(
            s.get_ref()
                .trim()
                .replace(CONFIG_DIR, &cx.base.display().to_string()),
        ),
        None => None,
    };

    let interval = match &p.interval {
        Some(d) => cx.duration(d, &at("interval"))?,
        None => DEFAULT_INTERVAL,
    };
    let labels = match (&p.labels, &p.prompts) {
        (Some(l), None) => {
            if l.get_ref().as_os_str().is_empty() {
                return Err(cx.err(Some(l.span()), at("labels"), "must not be empty"));
            }
            LabelSource::File(cx.path(l.get_ref()))
        }
        (None, Some(pr)) => {
            let set = LabelSet::from_prompts(pr.get_ref(), Templates::None).map_err(|e| {
                let message = match e {
                    Error::InvalidInput { message, .. } => message,
                    other => other.to_string(),
                };
                cx.err(Some(pr.span()), at("prompts"), message)
            })?;
            if let Some(bad) = pr
                .get_ref()
                .iter()
                .find(|s| s.contains(';') || s.contains('\n'))
            {
                return Err(cx.err(
                    Some(pr.span()),
                    at("prompts"),
                    format!("{bad:?}: a prompt cannot contain `;` or a new line"),
                ));
            }
            LabelSource::Prompts(set.labels.into_iter().map(|l| l.name).collect())
        }
        (Some(l), Some(_)) => {
            return Err(cx.err(
                Some(l.span()),
                at("labels"),
                "give `labels` or `prompts`, not both",
            ));
        }
        (None, None) => {
            return Err(cx.err(
                Some(p.name.span()),
                at("labels"),
                "a pipeline needs `labels` (a label-set file) or `prompts`",
            ));
        }
    };
    let templates = match &p.templates {
        Some(t) => {
            t.get_ref().trim().parse::<Templates>().map_err(|e| {
                let message = match e {
                    Error::InvalidInput { message, .. } => message,
                    other => other.to_string(),
                };
                cx.err(Some(t.span()), at("templates"), message)
            })?;
            Some(t.get_ref().trim().to_string())
        }
        None => None,
    };
    let threshold = match (&p.min_probability, &p.min_cosine) {
        (Some(pr), Some(_)) => {
            return Err(cx.err(
                Some(pr.span()),
                at("min_probability"),
                "give min_probability or min_cosine, not both",
            ));
        }
        (Some(pr), None) => {
            let v = *pr.get_ref();
            if !(v > 0.0 && v <= 1.0) {
                return Err(cx.err(
                    Some(pr.span()),
                    at("min_probability"),
                    format!("{v} is outside (0, 1]"),
                ));
            }
            Some(Threshold::Probability(v as f32))
        }
        (None, Some(c)) => {
            let v = *c.get_ref();
            if !(-1.0..=1.0).contains(&v) {
                return Err(cx.err(
                    Some(c.span()),
                    at("min_cosine"),
                    format!("{v} is outside [-1, 1]"),
                ));
            }
            Some(Threshold::Cosine(v as f32))
        }
        (None, None) => None,
    };
    if let (LabelSource::Prompts(prompts), Some(Threshold::Probability(_)) | None) =
        (&labels, threshold)
        && prompts.len() < 2
    {
        let span = p.prompts.as_ref().map(Spanned::span);
        return Err(cx.err(
            span,
            at("prompts"),
            "with a single prompt its probability is always 1: add prompts or set min_cosine",
        ));
    }
    let action = match &p.action {
        Some(a) => Some(a.get_ref().parse::<Action>().map_err(|_| {
            cx.err(
                Some(a.span()),
                at("action"),
                format!("`{}`: expected none, drop, blank or pixelate", a.get_ref()),
            )
        })?),
        None => None,
    };
    let count = |raw: &Option<Spanned<u32>>, field: &str| -> Result<Option<u32>> {
        match raw {
            Some(n) if *n.get_ref() == 0 => {
                Err(cx.err(Some(n.span()), at(field), "must be at least 1"))
            }
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    };
    let enter = count(&p.enter, "enter")?;
    let leave = count(&p.leave, "leave")?;
    let scene_gate = match &p.scene_gate {
        Some(g) if !(0.0..=255.0).contains(g.get_ref()) => {
            return Err(cx.err(
                Some(g.span()),
                at("scene_gate"),
                format!(
                    "{} is outside 0..=255 (mean 8-bit level difference; 0 turns the gate off)",
                    g.get_ref()
                ),
            ));
        }
        g => g.as_ref().map(|g| *g.get_ref()),
    };
    let mode = match &p.mode {
        Some(m) => from_nick::<ClipFilterMode>(m.get_ref()).ok_or_else(|| {
            cx.err(
                Some(m.span()),
                at("mode"),
                format!(
                    "`{}`: expected {}",
                    m.get_ref(),
                    nicks::<ClipFilterMode>().join(" or ")
                ),
            )
        })?,
        None => ClipFilterMode::default(),
    };
    let outputs = match &p.outputs {
        Some(o) => {
            let mut seen = BTreeSet::new();
            if let Some(dup) = o.get_ref().iter().find(|n| !seen.insert(n.as_str())) {
                return Err(cx.err(
                    Some(o.span()),
                    at("outputs"),
                    format!("output {dup:?} is listed twice"),
                ));
            }
            outputs
                .check_names(cx.path, &at("outputs"), o.get_ref())
                .map_err(|e| match e {
                    Error::Config { message, .. } => cx.err(Some(o.span()), at("outputs"), message),
                    other => other,
                })?;
            o.get_ref().clone()
        }
        None => outputs.iter().map(|o| o.name().to_string()).collect(),
    };
    Ok(PipelineConfig {
        name,
        source,
        sink,
        interval,
        labels,
        templates,
        threshold,
        action,
        enter,
        leave,
        scene_gate,
        mode,
        snapshots: p.snapshots.unwrap_or(true),
        outputs,
    })
}

// ---------------------------------------------------------------------------------------------
// `clipfilterd check`.

/// Checks a daemon configuration for `clipfilterd check`: everything [`Config::parse`] checks,
/// plus what needs the machine: label-set files, URI schemes GStreamer can read, launch
/// descriptions, the model. Returns a one-line summary.
pub fn check_file(path: &Path, text: &str) -> Result<String> {
    let config = Config::parse(text, path)?;
    let mut problems: Vec<Error> = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        if let LabelSource::File(f) = &p.labels
            && let Err(e) = LabelSet::from_file(f)
        {
            problems.push(Error::config(
                path,
                locate(text, &format!("pipeline[{i}].labels")),
                format!("{e}"),
            ));
        }
    }
    if let Some(first) = problems.into_iter().next() {
        return Err(first);
    }
    if let Err(e) = crate::daemon::source::check_machine(&config) {
        return Err(relocate(e, text));
    }
    let model = match crate::daemon::service::resolve_model(&config.model) {
        Ok(dir) => format!("model {}", dir.display()),
        Err(e) => return Err(Error::config(path, locate(text, "model"), e.to_string())),
    };
    Ok(format!(
        "daemon config, {} pipeline{}, {} output{}, {model}",
        config.pipelines.len(),
        if config.pipelines.len() == 1 { "" } else { "s" },
        config.outputs.len(),
        if config.outputs.len() == 1 { "" } else { "s" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/clipfilter/d.toml"))
    }

    const MINIMAL: &str = "[model]\npath = \"models/clip\"\n";

    #[test]
    fn the_triton_backend_and_its_keys() {
        let c = parse(
            "[model]\npath = \"m\"\nbackend = \"triton\"\nendpoints = [\"grpc://gpu1:8001\", \"gpu2:8001\"]\nwire_format = \"uint8\"\ntimeout = \"2s\"\nstart_timeout = \"1m\"\nfallback = \"local\"\ntls_ca = \"ca.pem\"\n",
        )
        .unwrap();
        let Backend::Triton(r) = &c.model.backend else {
            panic!("{:?}", c.model.backend);
        };
        assert_eq!(r.endpoints, ["grpc://gpu1:8001", "gpu2:8001"]);
        assert_eq!(r.wire, WireFormat::Uint8);
        assert_eq!(r.image_model, "clip_image_uint8");
        assert_eq!(r.text_model, "clip_text");
        assert_eq!(r.timeout, Duration::from_secs(2));
        assert_eq!(r.start_timeout, Duration::from_secs(60));
        assert_eq!(r.fallback, Fallback::Local);
        let tls = r.tls.as_ref().unwrap();
        assert_eq!(
            tls.ca_certificate.as_deref(),
            Some(Path::new("/etc/clipfilter/ca.pem"))
        );
        assert_eq!(parse(MINIMAL).unwrap().model.backend, Backend::Local);

        let cases = [
            (
                "endpoints = [\"grpc://a:1\"]",
                "model.endpoints",
                "goes with backend",
            ),
            (
                "backend = \"remote\"",
                "model.backend",
                "expected local or triton",
            ),
            ("backend = \"triton\"", "model.endpoints", "needs endpoints"),
            (
                "backend = \"triton\"\nendpoints = []",
                "model.endpoints",
                "empty",
            ),
            (
                "backend = \"triton\"\nendpoints = [\"http2://a:1\"]",
                "model.endpoints",
                "unknown scheme",
            ),
            (
                "backend = \"triton\"\nendpoints = [\"a:1\"]\nwire_format = \"int4\"",
                "model.wire_format",
                "expected fp32",
            ),
            (
                "backend = \"triton\"\nendpoints = [\"a:1\"]\ntimeout = \"0s\"",
                "model.timeout",
                "at least 1ms",
            ),
            (
                "backend = \"triton\"\nendpoints = [\"a:1\"]\nfallback = \"cloud\"",
                "model.fallback",
                "none or local",
            ),
            (
                "backend = \"triton\"\nendpoints = [\"a:1\"]\ntls_key = \"k.pem\"",
                "model.tls_certificate",
                "go together",
            ),
            (
                "backend = \"triton\"\nendpoints = [\"a:1\"]\nimage_model = \"a/b\"",
                "model.image_model",
                "not a Triton model name",
            ),
        ];
        for (extra, field, message) in cases {
            let e = err(&format!("[model]\npath = \"m\"\n{extra}\n"));
            assert!(e.contains(field) && e.contains(message), "{extra}: {e}");
        }
    }

    #[test]
    fn parses_a_full_config() {
        let c = parse(
            r#"
state_dir = "state"
listen = "127.0.0.1:0"

[model]
repo = "Xenova/clip-vit-base-patch32"
variant = "quantized"
providers = ["cuda", "cpu"]
threads = 2
max_batch = 16

[snapshots]
max_files = 10
max_bytes = "1MiB"
quality = 70

[outbox]
max_pending = 50

[restart]
initial = "200ms"
max = "5s"
stall_timeout = "0s"

[[output]]
name = "log"
type = "jsonl"
path = "events.jsonl"

[[output]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
max_pending = 7

[[pipeline]]
name = "cam-1"
source = "rtsp://admin:hunter2@10.0.0.2/stream"
transport = "udp"
latency = "100ms"
interval = "250ms"
labels = "labels/cam.toml"
min_cosine = 0.25
action = "blank"
enter = 2
leave = 3
mode = "sync"
outputs = ["hook"]

[[pipeline]]
name = "clip"
source = "../media/clip.mp4"
loop = true
prompts = ["a red car", "a white van"]
templates = "ensemble7"
snapshots = false
"#,
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/clipfilter/state"));
        assert_eq!(c.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(
            c.model.source,
            ModelSource::Repo {
                repo: "Xenova/clip-vit-base-patch32".into(),
                revision: "main".into(),
                cache_dir: None
            }
        );
        assert_eq!(c.model.variant, Variant::Quantized);
        assert_eq!(c.model.providers, [Provider::Cuda, Provider::Cpu]);
        assert_eq!(c.snapshots.max_bytes, 1 << 20);
        assert_eq!(
            c.snapshots.dir,
            Path::new("/etc/clipfilter/state/snapshots")
        );
        assert_eq!(c.restart.stall_timeout, None);
        assert_eq!(c.outputs.get("log").unwrap().max_pending(), 50);
        assert_eq!(c.outputs.get("hook").unwrap().max_pending(), 7);
        match &c.output_configs[0] {
            OutputConfig::Jsonl(j) => assert_eq!(j.path, Path::new("/etc/clipfilter/events.jsonl")),
            other => panic!("{other:?}"),
        }
        let cam = &c.pipelines[0];
        assert_eq!(cam.source.kind(), SourceKind::Rtsp);
        assert_eq!(cam.source.options.transport, Some(Transport::Udp));
        assert_eq!(cam.source.display(), "rtsp://***@10.0.0.2/stream");
        assert_eq!(
            cam.labels,
            LabelSource::File("/etc/clipfilter/labels/cam.toml".into())
        );
        assert_eq!(cam.threshold, Some(Threshold::Cosine(0.25)));
        assert_eq!(cam.outputs, ["hook"]);
        assert_eq!(cam.mode, ClipFilterMode::Sync);
        let clip = &c.pipelines[1];
        assert_eq!(clip.source.kind(), SourceKind::File);
        assert!(clip.source.options.looping);
        assert_eq!(clip.source.uri(), "file:///etc/media/clip.mp4");
        assert_eq!(clip.outputs, ["log", "hook"]);
        assert_eq!(clip.interval, DEFAULT_INTERVAL);
        assert!(!clip.snapshots);
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert_eq!(
            c.model.source,
            ModelSource::Path("/etc/clipfilter/models/clip".into())
        );
        assert_eq!(c.model.max_batch, 8);
        assert!(c.pipelines.is_empty());
        assert_eq!(c.restart.initial, DEFAULT_RESTART_INITIAL);
        assert!(
            parse("listen = \"\"\n[model]\npath = \"m\"\n")
                .unwrap()
                .listen
                .is_none()
        );
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err(&format!(
            "{MINIMAL}\n[[pipeline]]\nname = \"a\"\nsource = \"file:///x.mp4\"\nprompts = [\"red\", \"green\"]\ncolour = 3\n"
        ));
        assert!(e.starts_with("/etc/clipfilter/d.toml: line 8"), "{e}");
        assert!(e.contains("colour"), "{e}");

        let pipe = |name: &str, extra: &str| {
            format!(
                "[[pipeline]]\nname = \"{name}\"\nsource = \"file:///x.mp4\"\nprompts = [\"red\", \"green\"]\n{extra}\n"
            )
        };
        let e = err(&format!("{MINIMAL}{}{}", pipe("a", ""), pipe("a", "")));
        assert!(
            e.contains("line 9") && e.contains("pipeline[1].name") && e.contains("duplicate"),
            "{e}"
        );

        let e = err(&format!(
            "{MINIMAL}[[pipeline]]\nname = \"a\"\nsource = \"gopher://x/y\"\nprompts = [\"red\", \"green\"]\n"
        ));
        assert!(
            e.contains("line 5") && e.contains("pipeline[0].source") && e.contains("gopher"),
            "{e}"
        );

        let e = err(&format!("{MINIMAL}{}", pipe("a", "outputs = [\"pager\"]")));
        assert!(
            e.contains("line 7") && e.contains("unknown output \"pager\""),
            "{e}"
        );

        let e = err(&format!("{MINIMAL}{}", pipe("a b", "")));
        assert!(
            e.contains("line 4") && e.contains("pipeline[0].name"),
            "{e}"
        );

        let e = err(&format!(
            "{MINIMAL}{}",
            pipe("a", "loop = true\ntransport = \"tcp\"")
        ));
        assert!(e.contains("line 8") && e.contains("rtsp://"), "{e}");

        let e = err(&format!(
            "{MINIMAL}[[pipeline]]\nname = \"a\"\nsource = \"rtsp://u:p@cam/s\"\nusername = \"x\"\nprompts = [\"red\", \"green\"]\n"
        ));
        assert!(e.contains("credentials"), "{e}");

        let e = err(&format!("{MINIMAL}{}", pipe("a", "interval = \"soon\"")));
        assert!(e.contains("line 7") && e.contains("interval"), "{e}");

        let e = err(&format!(
            "{MINIMAL}[[pipeline]]\nname = \"a\"\nsource = \"file:///x.mp4\"\nprompts = [\"red\"]\n"
        ));
        assert!(e.contains("always 1"), "{e}");

        // Errors found by the outputs' own validation get their line too.
        let e = err(&format!(
            "{MINIMAL}\n[[output]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"ftp://x\"\n"
        ));
        assert!(e.contains("line 7") && e.contains("output[0].url"), "{e}");

        let e = err("[model]\npath = \"a\"\nrepo = \"b/c\"\n");
        assert!(e.contains("not both"), "{e}");
        let e = err("state_dir = \"x\"\n");
        assert!(e.contains("[model]"), "{e}");
        let e = err("[model]\nrepo = \"nope\"\n");
        assert!(e.contains("line 2") && e.contains("model.repo"), "{e}");
        let e = err("listen = \"localhost\"\n[model]\npath = \"m\"\n");
        assert!(e.contains("line 1") && e.contains("listen"), "{e}");
        let e = err("[model]\npath = \"m\"\n[snapshots]\nmax_bytes = \"12 parsecs\"\n");
        assert!(e.contains("line 4") && e.contains("parsecs"), "{e}");
    }

    #[test]
    fn passwords_never_show_in_errors() {
        let e = err(&format!(
            "{MINIMAL}[[pipeline]]\nname = \"a\"\nsource = \"rtsp://u:hunter2@cam/s\"\nloop = true\nprompts = [\"red\", \"green\"]\n"
        ));
        assert!(!e.contains("hunter2"), "{e}");
        let c = parse(&format!("{MINIMAL}[[pipeline]]\nname = \"a\"\nsource = \"rtsp://cam/s\"\nusername = \"u\"\npassword = \"hunter2\"\nprompts = [\"red\", \"green\"]\n")).unwrap();
        assert!(!format!("{:?}", c.pipelines[0]).contains("hunter2"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("800k"), Ok(800_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1 parsec").is_err());
    }
}
