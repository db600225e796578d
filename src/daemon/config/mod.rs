//! The daemon's configuration file (`/etc/clipfilter/clipfilterd.toml` by default).
//!
//! ```toml
//! # Relative paths anywhere in this file are relative to the folder of this file.
//! state_dir = "/var/lib/clipfilter"   # outbox and snapshots (default: $STATE_DIRECTORY, else
//!                                     # /var/lib/clipfilter)
//! listen = "127.0.0.1:9464"           # the console, /api, /metrics, /healthz, /status ("" turns
//!                                     # the server off); an address other than loopback needs
//!                                     # a token (below)
//!
//! [http]
//! # token = { file = "/etc/clipfilter/http.token" }   # asked of every request (a secret: see
//! #                               # `crate::daemon::secret`): `Authorization: Bearer <token>`, or
//! #                               # open the console once with `/?token=<token>` (a cookie)
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
//! # tensorrt_cache = "/var/cache/clipfilter/tensorrt"   # TensorRT engines built once, kept here
//! # onnxruntime = "/opt/onnxruntime/lib/libonnxruntime.so"   # the ONNX Runtime library to load
//! #                               # (default: see `clipfilter::runtime`); loaded once per process:
//! #                               # a change takes effect at the next start
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
//! # draw_box = true               # outline the crop that matched (what the model saw)
//! # dir = "/var/lib/clipfilter/snapshots"   # default: <state_dir>/snapshots
//! max_files = 1000                # the oldest are deleted beyond either bound
//! max_bytes = "256MiB"
//! quality = 85
//!
//! [history]                       # every inferred sample, to search and backtest (see
//!                                 # `crate::history`); changes apply at the next start
//! enabled = true
//! # dir = "/var/lib/clipfilter/history"     # default: <state_dir>/history
//! keep = "7d"                     # older samples are deleted ("forever": only max_bytes bounds)
//! max_bytes = "2GiB"              # the oldest samples are deleted beyond this
//! thumbnails = true               # a small JPEG per sample (about 4 KiB)
//! thumbnail_size = 160            # pixels on the longer side
//! queue = 4096                    # samples waiting for the writer; beyond, new ones are dropped
//!
//! [outbox]
//! max_pending = 100000            # events kept per output while it is down (an output's own
//!                                 # `max_pending` wins); when full the oldest is dropped
//!
//! [restart]                       # supervision of pipelines
//! initial = "1s"                  # first wait after a failure, doubled each time (with jitter)
//! max = "60s"                     # longest wait (both at most 24h)
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
//! # password = "secret"         # or { file = "/etc/clipfilter/driveway.password" }, or
//! #                               # { credential = "driveway" } (systemd LoadCredential=), as
//! #                               # every secret: see `crate::daemon::secret`
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
//! # fit = "pad"                   # crop | pad | crops: how the whole frame reaches the model
//! # tiles = "3x3"                 # also tile_overlap, whole_frame, action_scope and
//! #                               # [[pipeline.region]] tables: see `daemon/view.rs`
//! # max_frame_pixels = 33177600  # largest decoded frame (default 7680x4320); larger: an error
//! interval = "1s"                 # time between sampled frames (at most 24h)
//! labels = "labels/driveway.toml" # a label set (reloaded when it changes), or:
//! # prompts = ["a person", "a car"]
//! # templates = "ensemble7"       # none | single | ensemble7 | imagenet80
//! min_probability = 0.6           # default threshold of labels without their own (a label
//! #                               # matches above it), or
//! # min_cosine = 0.25
//! action = "none"                 # none | drop | blank | pixelate (labels may override)
//! enter = 2                       # consecutive samples to start a match
//! leave = 3                       # consecutive samples to end it
//! mode = "async"                  # async | sync (hold each sampled frame until its verdict)
//! snapshots = true                # save the frame that starts a match
//! outputs = ["log"]               # default: every output
//! ```
//!
//! Reading goes in two steps (as ripgrep's low-level and high-level arguments): `raw` holds the
//! serde structs as written, with the spans of their values, read table by table; the topic
//! modules validate them into the public types (`model`, `pipeline` with [`source`], `outputs`,
//! `snapshots`, `restart`). Every problem in the file is reported at once, each
//! with the file, line and field ([`clipfilter::Error::Problems`] when there are several), so that
//! a file is fixed in one pass. `crate::daemon::check` adds what needs the machine.

mod history;
mod model;
mod outputs;
mod pipeline;
mod raw;
mod restart;
mod snapshots;
pub mod source;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;

use crate::daemon::output::{OutputConfig, Outputs};
use crate::daemon::paths;
use clipfilter::error::{Error, Location, Problems, Result};
use raw::RawConfig;

pub use history::{
    DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_KEEP, DEFAULT_HISTORY_QUEUE, DEFAULT_THUMBNAIL_SIZE,
    HistoryConfig,
};
pub use model::{ModelConfig, ModelSource};
pub use pipeline::{DEFAULT_INTERVAL, LabelSource, PipelineConfig};
pub use restart::{
    DEFAULT_RESTART_INITIAL, DEFAULT_RESTART_MAX, DEFAULT_STALL_TIMEOUT, RestartPolicy,
};
pub use snapshots::{
    DEFAULT_SNAPSHOT_BYTES, DEFAULT_SNAPSHOT_FILES, DEFAULT_SNAPSHOT_QUALITY, SnapshotConfig,
    parse_size,
};

/// In `launch` and `sink` descriptions, stands for the folder of the configuration file (file
/// names inside descriptions are otherwise relative to the daemon's working directory).
pub const CONFIG_DIR: &str = "{config_dir}";

/// Where the daemon looks for its configuration without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clipfilter/clipfilterd.toml";
/// State folder when neither the file nor systemd names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/clipfilter";
/// Default address of the metrics and health server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The whole file, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    /// `None`: no HTTP server.
    pub listen: Option<SocketAddr>,
    /// `[http] token`: what every HTTP request must carry (required off loopback).
    pub http_token: Option<crate::daemon::secret::Secret>,
    pub model: ModelConfig,
    pub snapshots: SnapshotConfig,
    pub history: HistoryConfig,
    pub restart: RestartPolicy,
    /// Outputs as written (with the `[outbox]` default filled in).
    pub output_configs: Vec<OutputConfig>,
    pub outputs: Outputs,
    pub pipelines: Vec<PipelineConfig>,
}

impl Config {
    /// Reads and validates the configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = clipfilter::input::read_to_string(path)?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors and anchors relative
    /// paths (its folder). All problems are reported together.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let cx = Ctx::new(text, path);
        let raw = RawConfig::read(&cx)?;
        let state_dir = cx.keep(state_dir(&cx, &raw));
        let listen = cx.keep(listen(&cx, &raw));
        let http_token = cx.keep(http_token(&cx, &raw, listen.flatten()));
        let model = raw.model.as_ref().and_then(|m| model::model(&cx, m));
        let snapshots = snapshots::snapshots(
            &cx,
            &raw.snapshots,
            state_dir.as_deref().unwrap_or(Path::new(DEFAULT_STATE_DIR)),
        );
        let history = history::history(
            &cx,
            &raw.history,
            state_dir.as_deref().unwrap_or(Path::new(DEFAULT_STATE_DIR)),
        );
        let restart = restart::restart(&cx, &raw.restart);
        let outputs = outputs::outputs(&cx, &raw.outbox, &raw.output);
        let pipelines = pipeline::pipelines(&cx, &raw.pipeline, outputs.as_ref().map(|o| &o.1));
        let config = (|| {
            let (output_configs, outputs) = outputs?;
            Some(Config {
                path: path.to_path_buf(),
                state_dir: state_dir?,
                listen: listen?,
                http_token: http_token?,
                model: model?,
                snapshots: snapshots?,
                history: history?,
                restart: restart?,
                output_configs,
                outputs,
                pipelines: pipelines?,
            })
        })();
        cx.finish()?;
        // Every step that gives nothing records why: this is only a safety net.
        config.ok_or_else(|| Error::config(path, Location::default(), "invalid configuration"))
    }

    /// The pipeline called `name`.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

fn state_dir(cx: &Ctx<'_>, raw: &RawConfig) -> Result<PathBuf> {
    match &raw.state_dir {
        Some(d) if d.get_ref().as_os_str().is_empty() => {
            Err(cx.err(Some(d.span()), "state_dir", "must not be empty"))
        }
        Some(d) => Ok(cx.resolve(d.get_ref())),
        None => Ok(state_dir_default()),
    }
}

fn state_dir_default() -> PathBuf {
    std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|s| s.split(':').find(|p| !p.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

fn listen(cx: &Ctx<'_>, raw: &RawConfig) -> Result<Option<SocketAddr>> {
    match &raw.listen {
        None => Ok(Some(
            parse_addr(DEFAULT_LISTEN).map_err(|m| cx.err(None, "listen", m))?,
        )),
        Some(l) if l.get_ref().trim().is_empty() => Ok(None),
        Some(l) => Ok(Some(
            parse_addr(l.get_ref()).map_err(|m| cx.err(Some(l.span()), "listen", m))?,
        )),
    }
}

/// `[http] token`; `Err` when `listen` is not a loopback address and there is none.
fn http_token(
    cx: &Ctx<'_>,
    raw: &RawConfig,
    listen: Option<SocketAddr>,
) -> Result<Option<crate::daemon::secret::Secret>> {
    let token = raw.http.token.as_ref();
    if let Some(t) = token
        && t.get_ref().expose().trim().len() < clipfilter::limits::MIN_HTTP_TOKEN_CHARS
    {
        return Err(cx.err(
            Some(t.span()),
            "http.token",
            format!(
                "too short: at least {} characters",
                clipfilter::limits::MIN_HTTP_TOKEN_CHARS
            ),
        ));
    }
    match (listen, token) {
        (Some(addr), None) if !addr.ip().is_loopback() => Err(cx.err(
            raw.listen.as_ref().map(|l| l.span()),
            "listen",
            format!(
                "{addr} is not a loopback address: anyone who reaches it could read the console and change label files; set `[http] token = {{ file = \"/etc/clipfilter/http.token\" }}` (or listen on 127.0.0.1 and use an SSH tunnel)"
            ),
        )),
        (_, t) => Ok(t.map(|t| t.get_ref().clone())),
    }
}

fn parse_addr(text: &str) -> std::result::Result<SocketAddr, String> {
    SocketAddr::from_str(text.trim()).map_err(|e| {
        format!("{text:?} is not an address with a port such as \"127.0.0.1:9464\": {e}")
    })
}

/// What every validation step works with: the text (for lines and columns), the file (for
/// messages), the folder relative paths start from, and the problems found so far.
///
/// Steps that check one field return a `Result` (the caller records it with [`Ctx::keep`]);
/// steps that check several record each problem themselves and return an `Option`, `None`
/// when what they validate is unusable.
struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    base: PathBuf,
    problems: RefCell<Problems>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str, path: &'a Path) -> Ctx<'a> {
        Ctx {
            text,
            path,
            base: paths::config_dir(path),
            problems: RefCell::default(),
        }
    }

    /// Where `field` is: at `span` when known, else looked up in the text.
    fn at(&self, span: Option<Range<usize>>, field: impl Into<String>) -> Location {
        let field = field.into();
        match span {
            Some(s) => Location::from_offset(self.text, s.start, Some(field)),
            None => locate(self.text, &field),
        }
    }

    /// A problem with `field` (at `span` when known).
    fn err(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::config(self.path, self.at(span, field), message)
    }

    /// Records a problem with `field`.
    fn problem(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(self.err(span, field, message));
    }

    /// Records `problem`, with its line when it only names a field.
    fn push(&self, problem: Error) {
        self.problems
            .borrow_mut()
            .push(relocate(problem, self.text));
    }

    /// The value of `result`, or `None` once its problem is recorded.
    fn keep<T>(&self, result: Result<T>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// A TOML error of the file, at its line and column.
    fn toml(&self, e: &toml::de::Error) -> Error {
        Error::toml(self.path, self.text, e)
    }

    /// A problem at byte `offset` of the text that names no field (as TOML errors).
    fn err_at(&self, offset: usize, message: impl Into<String>) -> Error {
        Error::config(
            self.path,
            Location::from_offset(self.text, offset, None),
            message,
        )
    }

    fn duration(&self, raw: &Spanned<String>, field: &str) -> Result<Duration> {
        crate::daemon::duration::parse(raw.get_ref())
            .map_err(|m| self.err(Some(raw.span()), field, m))
    }

    /// The folder relative paths start from.
    fn base(&self) -> &Path {
        &self.base
    }

    /// A path as written in the file, resolved.
    fn resolve(&self, raw: &Path) -> PathBuf {
        paths::resolve(&self.base, raw)
    }

    /// Every problem found, in the order of their lines.
    fn finish(self) -> Result<()> {
        self.problems.into_inner().finish()
    }
}

/// The message of an engine error about a value, without its "invalid ...:" prefix (the
/// location says what is invalid).
fn message_of(e: Error) -> String {
    match e {
        Error::InvalidInput { message, .. } => message,
        other => other.to_string(),
    }
}

/// The line and column of `field` (a dotted path such as `pipeline[2].source` or
/// `output[0].url`) in `text`, for errors found after parsing.
pub(crate) fn locate(text: &str, field: &str) -> Location {
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
        Error::Problems(list) => {
            Error::Problems(list.into_iter().map(|e| relocate(e, text)).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::source::{SourceKind, Transport};
    use clipfilter::encoder::Provider;
    use clipfilter::engine::Backend;
    use clipfilter::labels::Threshold;
    use clipfilter::model::Variant;
    use clipfilter::remote::{Fallback, WireFormat};
    use gstclipfilter::clipfilter::ClipFilterMode;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/clipfilter/d.toml"))
    }

    const MINIMAL: &str = "[model]\npath = \"models/clip\"\n";

    #[test]
    fn off_loopback_the_listener_needs_a_token() {
        let e = parse(&format!("listen = \"0.0.0.0:9464\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("not a loopback address") && e.contains("token"),
            "{e}"
        );
        let e = parse(&format!(
            "listen = \"0.0.0.0:9464\"\n[http]\ntoken = \"short\"\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3") && e.contains("http.token") && e.contains("too short"),
            "{e}"
        );
        let c = parse(&format!(
            "listen = \"[::]:9464\"\n[http]\ntoken = \"0123456789abcdef\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.http_token.unwrap().expose(), "0123456789abcdef");
        // Loopback needs none; 127.0.0.0/8 is loopback.
        let c = parse(&format!("listen = \"127.0.0.2:9464\"\n{MINIMAL}")).unwrap();
        assert!(c.http_token.is_none());
        assert!(format!("{c:?}").contains("http_token: None"));
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
    fn every_problem_is_reported_at_once_with_its_line() {
        let text = r#"listen = "localhost"

[model]
repo = "nope"
max_batch = 0

[snapshots]
quality = 0

[[pipeline]]
name = "a"
source = "file:///x.mp4"
prompts = ["red", "green"]
interval = "soon"
mode = "later"

[[pipeline]]
name = "b"
source = "gopher://host/x"
prompts = ["red"]
enter = 0
"#;
        let e = parse(text).unwrap_err();
        let Error::Problems(problems) = &e else {
            panic!("one problem only: {e}");
        };
        let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
        assert_eq!(lines.len(), problems.len(), "{e}");
        let expect = [
            (1, "listen"),
            (4, "model.repo"),
            (5, "model.max_batch"),
            (8, "snapshots.quality"),
            (14, "pipeline[0].interval"),
            (15, "pipeline[0].mode"),
            (19, "pipeline[1].source"),
            (20, "pipeline[1].prompts"),
            (21, "pipeline[1].enter"),
        ];
        assert_eq!(lines.len(), expect.len(), "{e}");
        for (line, (n, field)) in lines.iter().zip(expect) {
            assert!(
                line.starts_with(&format!("/etc/clipfilter/d.toml: line {n}, "))
                    && line.contains(&format!("field `{field}`")),
                "line {n}, {field}: {e}"
            );
        }
        assert!(e.is_user_error());
    }

    #[test]
    fn mistakes_in_several_tables_are_all_reported() {
        // Unknown fields and wrong types: serde stops at the first in a table, not in the file.
        let text = r#"colour = 1

[model]
path = "m"
varient = "fp16"

[restart]
initial = 5

[[output]]
name = "log"
type = "jsonl"
path = "-"
speed = 2

[[pipeline]]
name = "a"
source = "file:///x.mp4"
prompts = ["red", "green"]
intervall = "1s"

[[pipeline]]
name = "b"
source = "file:///x.mp4"
prompts = ["red", "green"]
interval = "soon"
"#;
        let e = parse(text).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        let expect = [
            (1, "colour"),
            (5, "varient"),
            (8, "invalid type"),
            // Output types are read through serde's buffer, which loses the spans of their
            // fields: the line is the table's.
            (10, "speed"),
            (20, "intervall"),
            (26, "pipeline[1].interval"),
        ];
        assert_eq!(lines.len(), expect.len(), "{e}");
        for (line, (n, word)) in lines.iter().zip(expect) {
            assert!(
                line.contains(&format!("line {n},")) && line.contains(word),
                "line {n}, {word}: {e}"
            );
        }
        // A missing [model] is one problem among others.
        let e = parse("listen = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("[model]") && e.contains("line 1"), "{e}");
        // A syntax error stops the reading.
        let e = parse("[model\npath = \"m\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn onnxruntime_is_a_path_relative_to_the_file() {
        let c =
            parse("[model]\npath = \"m\"\nonnxruntime = \"../lib/libonnxruntime.so\"\n").unwrap();
        assert_eq!(
            c.model.onnxruntime.as_deref(),
            Some(Path::new("/etc/lib/libonnxruntime.so"))
        );
        assert_eq!(parse(MINIMAL).unwrap().model.onnxruntime, None);
        let e = err("[model]\npath = \"m\"\nonnxruntime = \"\"\n");
        assert!(
            e.contains("line 3") && e.contains("model.onnxruntime"),
            "{e}"
        );
    }

    #[test]
    fn numbers_stay_within_what_the_element_takes() {
        // The element's properties panic on values outside their ranges: the config refuses them.
        let pipe = |extra: &str| {
            format!(
                "{MINIMAL}[[pipeline]]\nname = \"a\"\nsource = \"file:///x.mp4\"\nprompts = [\"red\", \"green\"]\n{extra}\n"
            )
        };
        let e = err(&pipe("leave = 1001"));
        assert!(
            e.contains("pipeline[0].leave") && e.contains("between 1 and 1000"),
            "{e}"
        );
        let e = err(&pipe("scene_gate = 256.0"));
        assert!(e.contains("0..=255"), "{e}");
        let e = err("[model]\npath = \"m\"\nmax_batch = 257\n");
        assert!(
            e.contains("model.max_batch") && e.contains("between 1 and 256"),
            "{e}"
        );
        assert!(parse(&pipe("enter = 1000\nleave = 1")).is_ok());
        // The supervisor adds restart waits to the clock: centuries would overflow it.
        let e = err("[model]\npath = \"m\"\n[restart]\nmax = \"2562047788015215h\"\n");
        assert!(e.contains("line 4") && e.contains("restart.max"), "{e}");
        let e = err("[model]\npath = \"m\"\n[restart]\ninitial = \"25h\"\n");
        assert!(e.contains("restart.initial") && e.contains("24h"), "{e}");
        assert!(parse("[model]\npath = \"m\"\n[restart]\nmax = \"24h\"\n").is_ok());
    }

    #[test]
    fn views_regions_and_tiles_are_checked_with_line_and_field() {
        let pipe = |extra: &str| {
            format!(
                "{MINIMAL}[[pipeline]]\nname = \"a\"\nsource = \"file:///x.mp4\"\nprompts = [\"red\", \"green\"]\n{extra}\n"
            )
        };
        // Defaults: the whole frame, letterboxed.
        let c = parse(&pipe("")).unwrap();
        assert_eq!(c.pipelines[0].view, crate::daemon::view::View::default());
        assert_eq!(c.pipelines[0].view.fit, clipfilter::crops::Fit::Pad);
        let c = parse(&pipe(
            "fit = \"crops\"\ntiles = \"3x2\"\ntile_overlap = 0.2\naction_scope = \"region\"\n[[pipeline.region]]\nname = \"gate\"\nbox = [0.62, 0.4, 0.3, 0.35]\n[[pipeline.region]]\nname = \"door\"\npolygon = [[0.1, 0.1], [0.3, 0.1], [0.2, 0.4]]",
        ))
        .unwrap();
        let v = &c.pipelines[0].view;
        assert_eq!(v.fit, clipfilter::crops::Fit::Crops);
        assert_eq!(
            v.tiles.map(|t| (t.columns, t.rows, t.overlap)),
            Some((3, 2, 0.2))
        );
        assert_eq!(
            v.action_scope,
            gstclipfilter::clipfilter::ClipFilterActionScope::Region
        );
        assert_eq!(v.regions.len(), 2);
        assert_eq!(
            clipfilter::crops::regions_to_compact(&v.regions),
            "gate:0.62,0.4,0.3,0.35;door:polygon:0.1,0.1,0.3,0.1,0.2,0.4"
        );

        let cases = [
            (
                "fit = \"squash\"",
                "line 7",
                "pipeline[0].fit",
                "crop, pad, crops",
            ),
            (
                "tiles = \"0x3\"",
                "line 7",
                "pipeline[0].tiles",
                "between 1 and 8",
            ),
            (
                "tiles = \"9x9\"",
                "line 7",
                "pipeline[0].tiles",
                "between 1 and 8",
            ),
            (
                "tiles = \"2x2\"\ntile_overlap = 0.9",
                "line 8",
                "pipeline[0].tile_overlap",
                "overlap 0.9",
            ),
            (
                "tile_overlap = 0.2",
                "line 7",
                "pipeline[0].tile_overlap",
                "no tiles",
            ),
            (
                "action_scope = \"all\"",
                "line 7",
                "pipeline[0].action_scope",
                "frame or region",
            ),
            (
                "[[pipeline.region]]\nname = \"gate\"\nbox = [0.9, 0.4, 0.3, 0.35]",
                "line 9",
                "pipeline[0].region[0].box",
                "outside the frame",
            ),
            (
                "[[pipeline.region]]\nname = \"x\"\npolygon = [[0.1, 0.1], [0.6, 0.5], [0.1, 0.5], [0.5, 0.1]]",
                "line 9",
                "pipeline[0].region[0].polygon",
                "crosses itself",
            ),
            (
                "[[pipeline.region]]\nname = \"x\"\npolygon = [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]",
                "line 9",
                "pipeline[0].region[0].polygon",
                "empty",
            ),
            (
                "[[pipeline.region]]\nname = \"x\"\nbox = [0.1, 0.1, 0.2, 0.2]\n[[pipeline.region]]\nname = \"x\"\nbox = [0.5, 0.5, 0.2, 0.2]",
                "line 11",
                "pipeline[0].region[1].name",
                "duplicate region name",
            ),
            (
                "whole_frame = false",
                "",
                "pipeline[0].whole_frame",
                "nothing to look at",
            ),
        ];
        let mut failures = Vec::new();
        for (extra, line, field, words) in cases {
            let e = err(&pipe(extra));
            if !(e.contains(line) && e.contains(&format!("`{field}`")) && e.contains(words)) {
                failures.push(format!("{extra:?}: {e}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

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
                "backend = \"triton\"\nendpoints = [\"a:1\"]\nstart_timeout = \"1000h\"",
                "model.start_timeout",
                "at most 24h",
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
}
