//! The `[model]` table: which CLIP model, how it runs, and which ONNX Runtime library loads it.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawModel;
use super::{Ctx, message_of};
use clipfilter::encoder::Provider;
use clipfilter::engine::Backend;
use clipfilter::error::Result;
use clipfilter::limits;
use clipfilter::model::Variant;
use clipfilter::remote::{self, Fallback, RemoteConfig, RemoteTls, WireFormat};

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
    /// The ONNX Runtime library (`libonnxruntime.so`) to load; `None`: the usual search (see
    /// `clipfilter::runtime`). It loads once per process.
    pub onnxruntime: Option<PathBuf>,
    /// Where the towers run: this process (`local`) or Triton endpoints (`triton`).
    pub backend: Backend,
}

/// Validates `[model]`, recording every problem in `cx`.
pub(super) fn model(cx: &Ctx<'_>, raw: &Spanned<RawModel>) -> Option<ModelConfig> {
    let m = raw.get_ref();
    let source = cx.keep(source(cx, raw));
    let variant = cx.keep(variant(cx, m));
    let providers = cx.keep(providers(cx, m));
    let max_batch = cx.keep(max_batch(cx, m));
    let threads = cx.keep(threads(cx, m));
    let onnxruntime = cx.keep(onnxruntime(cx, m));
    let backend = cx.keep(backend(cx, m));
    Some(ModelConfig {
        source: source?,
        variant: variant?,
        providers: providers?,
        require_provider: m.require_provider,
        threads: threads?,
        max_batch: max_batch?,
        tensorrt_cache: m.tensorrt_cache.as_ref().map(|d| cx.resolve(d.get_ref())),
        onnxruntime: onnxruntime?,
        backend: backend?,
    })
}

/// `path`, or `repo` with `revision` and `cache_dir`.
fn source(cx: &Ctx<'_>, raw: &Spanned<RawModel>) -> Result<ModelSource> {
    let m = raw.get_ref();
    match (&m.path, &m.repo) {
        (Some(p), None) => {
            if m.revision.is_some() || m.cache_dir.is_some() {
                return Err(cx.err(
                    Some(p.span()),
                    "model.path",
                    "revision and cache_dir go with `repo`, not with `path`",
                ));
            }
            Ok(ModelSource::Path(cx.resolve(p.get_ref())))
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
            Ok(ModelSource::Repo {
                repo: repo.to_string(),
                revision: m
                    .revision
                    .as_ref()
                    .map_or_else(|| "main".to_string(), |r| r.get_ref().trim().to_string()),
                cache_dir: m.cache_dir.as_ref().map(|d| cx.resolve(d.get_ref())),
            })
        }
        (Some(p), Some(_)) => Err(cx.err(
            Some(p.span()),
            "model.path",
            "give `path` or `repo`, not both",
        )),
        (None, None) => Err(cx.err(
            Some(raw.span()),
            "model",
            "give `repo` (a model fetched with `clipfilterd model fetch`) or `path` (a model folder)",
        )),
    }
}

fn variant(cx: &Ctx<'_>, m: &RawModel) -> Result<Variant> {
    match &m.variant {
        Some(v) => v.get_ref().parse::<Variant>().map_err(|_| {
            cx.err(
                Some(v.span()),
                "model.variant",
                format!("`{}`: expected fp32, fp16 or quantized", v.get_ref()),
            )
        }),
        None => Ok(Variant::Fp32),
    }
}

fn providers(cx: &Ctx<'_>, m: &RawModel) -> Result<Vec<Provider>> {
    match &m.providers {
        Some(p) if p.get_ref().is_empty() => {
            Err(cx.err(Some(p.span()), "model.providers", "the list is empty"))
        }
        Some(p) => p
            .get_ref()
            .iter()
            .map(|s| s.trim().parse::<Provider>())
            .collect::<Result<Vec<_>>>()
            .map_err(|e| cx.err(Some(p.span()), "model.providers", message_of(e))),
        None => Ok(vec![Provider::Cpu]),
    }
}

fn max_batch(cx: &Ctx<'_>, m: &RawModel) -> Result<u32> {
    match &m.max_batch {
        Some(b) if !limits::MAX_BATCH.contains(b.get_ref()) => Err(cx.err(
            Some(b.span()),
            "model.max_batch",
            format!("must be {}", limits::describe(&limits::MAX_BATCH)),
        )),
        Some(b) => Ok(*b.get_ref()),
        None => Ok(limits::DEFAULT_MAX_BATCH),
    }
}

fn threads(cx: &Ctx<'_>, m: &RawModel) -> Result<u32> {
    match &m.threads {
        Some(t) if !limits::THREADS.contains(t.get_ref()) => Err(cx.err(
            Some(t.span()),
            "model.threads",
            format!("must be at most {}", limits::THREADS.end()),
        )),
        Some(t) => Ok(*t.get_ref()),
        None => Ok(0),
    }
}

/// `onnxruntime`: the path of `libonnxruntime.so` (whether it exists is `check`'s question).
fn onnxruntime(cx: &Ctx<'_>, m: &RawModel) -> Result<Option<PathBuf>> {
    match &m.onnxruntime {
        Some(f) if f.get_ref().as_os_str().is_empty() => Err(cx.err(
            Some(f.span()),
            "model.onnxruntime",
            "must not be empty (leave `onnxruntime` out to use the library installed)",
        )),
        Some(f) => Ok(Some(cx.resolve(f.get_ref()))),
        None => Ok(None),
    }
}

/// `[model] backend` and the keys of `backend = "triton"`.
fn backend(cx: &Ctx<'_>, m: &RawModel) -> Result<Backend> {
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
        // Added to the clock: centuries would overflow it.
        if d > Duration::from_secs(24 * 3600) {
            return Err(cx.err(Some(raw.span()), field, "must be at most 24h"));
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
        ca_certificate: m.tls_ca.as_ref().map(|p| cx.resolve(p.get_ref())),
        client_certificate: m.tls_certificate.as_ref().map(|p| cx.resolve(p.get_ref())),
        client_key: m.tls_key.as_ref().map(|p| cx.resolve(p.get_ref())),
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
    Ok(Backend::Triton(Box::new(config)))
}
