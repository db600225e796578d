//! Remote inference: the CLIP towers on Triton Inference Server (or any KServe v2 server)
//! over gRPC, through [`clipfilter_triton::Pool`] (round-robin over ready endpoints, failing
//! ones taken out and probed back with backoff).
//!
//! The engine still owns everything else: the tokenizer and prompt cache, preprocessing, and
//! the shared worker that forms the batches (Triton's dynamic batcher then merges the batches
//! of many hosts). At start the server's models are checked against the local model folder
//! (input names, types and sizes from `preprocessor_config.json` and the ONNX graphs'
//! interfaces, the embedding size, the text tower's sequence length and attention mask): a
//! mismatch is an error. While running, a call that finds no ready endpoint fails at once with
//! an error [`Error::is_unavailable`] recognises: the worker drops those samples and counts
//! them. Nothing falls back to local inference unless the configuration says
//! `fallback = "local"`.

mod image;
mod text;

pub use clipfilter_triton::WireFormat;
pub use image::RemoteImage;
pub use text::RemoteText;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clipfilter_triton::{
    ImageModelSpec, ModelSpec, Pool, PoolConfig, TextModelSpec, TlsConfig, read_graph_io,
};

use crate::encoder::{ImageEncoder, LocalText, SessionConfig};
use crate::error::{Error, Result};
use crate::model::ModelDir;

/// Default per-call timeout (a whole call, failing over included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default TCP connect and health-check timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default wait at start for a ready endpoint.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default model names: those `clipfilterd model export-triton` writes.
pub const DEFAULT_TEXT_MODEL: &str = "clip_text";

/// The default image model name for a wire format (`clip_image`, `clip_image_fp16`,
/// `clip_image_uint8`, as `clipfilterd model export-triton` writes them).
pub fn default_image_model(wire: WireFormat) -> String {
    match wire {
        WireFormat::Fp32 => "clip_image".into(),
        other => format!("clip_image_{other}"),
    }
}

/// Parses a wire format name (`fp32`, `fp16`, `uint8`).
pub fn parse_wire(name: &str) -> Result<WireFormat> {
    WireFormat::parse(name).ok_or_else(|| {
        Error::invalid(
            "wire format",
            format!("`{name}`: expected fp32, fp16 or uint8"),
        )
    })
}

/// What happens when no endpoint is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fallback {
    /// Samples are dropped and counted until an endpoint is back.
    #[default]
    None,
    /// The local model folder runs them on this machine's ONNX Runtime (loaded at start).
    Local,
}

impl Fallback {
    pub fn name(self) -> &'static str {
        match self {
            Fallback::None => "none",
            Fallback::Local => "local",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Fallback::None),
            "local" => Ok(Fallback::Local),
            other => Err(Error::invalid(
                "fallback",
                format!("`{other}`: expected none or local"),
            )),
        }
    }
}

/// TLS files for `grpcs://` endpoints (the daemon is built with TLS; the GStreamer plugin only
/// with its `tls` feature).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RemoteTls {
    /// PEM certificate authority of the servers' certificates (default: the system's roots).
    pub ca_certificate: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name to verify in the servers' certificates, when not the endpoints' host.
    pub domain: Option<String>,
}

/// Where and how the towers run remotely.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteConfig {
    /// `grpc://host:port` or `grpcs://host:port`.
    pub endpoints: Vec<String>,
    pub image_model: String,
    pub text_model: String,
    pub wire: WireFormat,
    /// Longest time one call takes, failing over included.
    pub timeout: Duration,
    /// Longest TCP connect and health check.
    pub connect_timeout: Duration,
    /// How long start-up waits for a ready endpoint before it fails (or falls back).
    pub start_timeout: Duration,
    pub tls: Option<RemoteTls>,
    pub fallback: Fallback,
}

impl RemoteConfig {
    /// Defaults (fp32, the model names of `model export-triton`) for `endpoints`.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        RemoteConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            image_model: default_image_model(WireFormat::Fp32),
            text_model: DEFAULT_TEXT_MODEL.into(),
            wire: WireFormat::Fp32,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            start_timeout: DEFAULT_START_TIMEOUT,
            tls: None,
            fallback: Fallback::None,
        }
    }

    /// The same with wire format `wire` and its default image model name.
    pub fn with_wire(mut self, wire: WireFormat) -> Self {
        self.wire = wire;
        self.image_model = default_image_model(wire);
        self
    }

    fn pool_config(&self, image: ImageModelSpec, text: TextModelSpec) -> PoolConfig {
        let mut pool = PoolConfig::new(self.endpoints.iter().cloned())
            .model(&self.image_model, Some(ModelSpec::Image(image)))
            .model(&self.text_model, Some(ModelSpec::Text(text)));
        pool.timeout = self.timeout;
        pool.connect_timeout = self.connect_timeout;
        pool.probe_timeout = self.connect_timeout;
        pool.tls = self.tls.as_ref().map(|t| TlsConfig {
            ca_certificate: t.ca_certificate.clone(),
            client_certificate: t.client_certificate.clone(),
            client_key: t.client_key.clone(),
            domain: t.domain.clone(),
        });
        pool
    }
}

/// Counters of remote inference, shared by the towers and read by `/status` and metrics.
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Batches run on the local fallback because no endpoint was ready.
    pub fallback_batches: AtomicU64,
    /// Texts embedded by the local fallback.
    pub fallback_texts: AtomicU64,
    /// Whether the image tower runs locally now (from its first batch without a ready endpoint
    /// to the first that a Triton endpoint serves again).
    pub fallback_active: AtomicBool,
}

/// The connection shared by the two remote towers: the pool and its counters.
#[derive(Debug, Clone)]
pub struct Remote {
    pub pool: Arc<Pool>,
    pub config: RemoteConfig,
    pub stats: Arc<RemoteStats>,
}

impl Remote {
    /// Every endpoint's state, for `/status`.
    pub fn status(&self) -> Vec<clipfilter_triton::EndpointStatus> {
        self.pool.status()
    }

    pub fn fallback_batches(&self) -> u64 {
        self.stats.fallback_batches.load(Ordering::Relaxed)
    }

    /// Whether samples are embedded by the local fallback now.
    pub fn fallback_active(&self) -> bool {
        self.stats.fallback_active.load(Ordering::Relaxed)
    }
}

/// The remote towers of a model folder.
pub struct Towers {
    pub image: RemoteImage,
    pub text: RemoteText,
    pub remote: Remote,
    /// Embedding width.
    pub dim: usize,
}

/// Connects to the endpoints, checks their models against the local folder `model` and waits
/// (at most `start_timeout`) for one to be ready. `image_session` and `text_session` configure
/// the local fallback's towers, loaded only with `fallback = "local"`.
pub fn connect(
    config: &RemoteConfig,
    model: &ModelDir,
    image_session: &SessionConfig,
    text_session: &SessionConfig,
) -> Result<Towers> {
    let _span = tracing::info_span!("remote_connect", endpoints = ?config.endpoints).entered();
    let local_io = LocalInterface::read(model)?;
    let (height, width) = local_io.size;
    let image_spec = ImageModelSpec {
        input: local_io.image_input.clone(),
        wire: config.wire,
        height: height as usize,
        width: width as usize,
        output: local_io.image_output.clone(),
        embed_dim: local_io.dim,
    };
    let text_spec = TextModelSpec {
        input_ids: "input_ids".into(),
        attention_mask: local_io.attention_mask.then(|| "attention_mask".into()),
        seq_len: local_io.seq_len,
        output: local_io.text_output.clone(),
        embed_dim: local_io.dim,
    };
    let pool = Pool::connect(config.pool_config(image_spec, text_spec))
        .map_err(|e| Error::remote("connecting to the Triton endpoints", e))?;
    let pool = Arc::new(pool);
    let (fallback_image, fallback_text) = match config.fallback {
        Fallback::None => (None, None),
        Fallback::Local => {
            tracing::info!(model = %model.dir.display(), "loading the local fallback (fallback = \"local\")");
            (
                Some(ImageEncoder::load(
                    &model.vision_onnx,
                    local_io.size,
                    image_session,
                )?),
                Some(LocalText::load(model, text_session)?),
            )
        }
    };
    if let Err(e) = pool.wait_ready(config.start_timeout) {
        let e = Error::remote(
            format!(
                "no Triton endpoint became ready within {:?} (start_timeout)",
                config.start_timeout
            ),
            e,
        );
        if config.fallback == Fallback::None {
            return Err(e);
        }
        tracing::error!(error = %e, "starting on the local fallback (fallback = \"local\")");
    } else {
        tracing::info!(ready = pool.ready_count(), endpoints = config.endpoints.len(), image_model = %config.image_model, text_model = %config.text_model, wire = %config.wire, "Triton endpoints ready");
    }
    let stats = Arc::new(RemoteStats::default());
    let remote = Remote {
        pool: pool.clone(),
        config: config.clone(),
        stats: stats.clone(),
    };
    let image = RemoteImage::new(
        remote.clone(),
        &local_io,
        fallback_image.map(|e| (e, model.preprocess.clone())),
    );
    let text = RemoteText::new(remote.clone(), &local_io, fallback_text);
    Ok(Towers {
        image,
        text,
        remote,
        dim: local_io.dim,
    })
}

/// What the local folder says the towers look like (read without loading them).
pub(crate) struct LocalInterface {
    pub(crate) size: (u32, u32),
    pub(crate) image_input: String,
    pub(crate) image_output: String,
    pub(crate) text_output: String,
    pub(crate) attention_mask: bool,
    pub(crate) seq_len: Option<usize>,
    pub(crate) dim: usize,
}

impl LocalInterface {
    fn read(model: &ModelDir) -> Result<Self> {
        let size = model.preprocess.output_size().ok_or_else(|| {
            Error::model(
                &model.dir,
                "preprocessor_config.json does not fix the image size (no crop_size)",
            )
        })?;
        let read = |path: &std::path::Path| {
            read_graph_io(path).map_err(|e| Error::model(&model.dir, e.to_string()))
        };
        let image = read(&model.vision_onnx)?;
        let text = read(&model.text_onnx)?;
        let bad = |m: String| Error::model(&model.dir, m);
        let image_input = match image.input("pixel_values") {
            Some(i) => i.name.clone(),
            None if image.inputs.len() == 1 => image.inputs[0].name.clone(),
            None => {
                return Err(bad(format!(
                    "{}: expected one input `pixel_values`",
                    model.vision_onnx.display()
                )));
            }
        };
        let output = |io: &clipfilter_triton::GraphIo, name: &str, path: &std::path::Path| {
            io.output(name)
                .or_else(|| (io.outputs.len() == 1).then(|| &io.outputs[0]))
                .cloned()
                .ok_or_else(|| bad(format!("{}: no output `{name}`", path.display())))
        };
        let image_output = output(&image, "image_embeds", &model.vision_onnx)?;
        let text_output = output(&text, "text_embeds", &model.text_onnx)?;
        let width_of = |t: &clipfilter_triton::TensorInfo| {
            t.shape
                .last()
                .copied()
                .filter(|d| *d > 0)
                .map(|d| d as usize)
        };
        let dim = width_of(&image_output)
            .or_else(|| width_of(&text_output))
            .or(model.projection_dim)
            .ok_or_else(|| {
                bad("neither the ONNX graphs nor config.json (projection_dim) give the embedding size".into())
            })?;
        for (what, d) in [
            ("image tower", width_of(&image_output)),
            ("text tower", width_of(&text_output)),
            ("config.json projection_dim", model.projection_dim),
        ] {
            if let Some(d) = d.filter(|d| *d != dim) {
                return Err(bad(format!(
                    "the {what} gives embeddings of width {d}, not {dim}: the towers do not belong together"
                )));
            }
        }
        let ids = text.input("input_ids").ok_or_else(|| {
            bad(format!(
                "{}: no `input_ids` input",
                model.text_onnx.display()
            ))
        })?;
        let seq_len = ids
            .shape
            .get(1)
            .copied()
            .filter(|n| *n > 0)
            .map(|n| n as usize);
        Ok(LocalInterface {
            size,
            image_input,
            image_output: image_output.name,
            text_output: text_output.name,
            attention_mask: text.input("attention_mask").is_some(),
            seq_len,
            dim,
        })
    }
}
