//! The `[model]` table: which CLIP model, how it runs, and which ONNX Runtime library loads it.

use std::path::PathBuf;

use toml::Spanned;

use super::raw::RawModel;
use super::{Ctx, message_of};
use clipfilter::encoder::Provider;
use clipfilter::error::Result;
use clipfilter::limits;
use clipfilter::model::Variant;

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
    Some(ModelConfig {
        source: source?,
        variant: variant?,
        providers: providers?,
        require_provider: m.require_provider,
        threads: threads?,
        max_batch: max_batch?,
        tensorrt_cache: m.tensorrt_cache.as_ref().map(|d| cx.resolve(d.get_ref())),
        onnxruntime: onnxruntime?,
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
