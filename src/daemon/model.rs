//! The model the daemon runs: the folder `[model]` resolves to, the engine settings every
//! `clipfilter` element derives from it (equal for all, so that they share one engine), and the
//! ONNX Runtime library it names (`onnxruntime`, loaded once per process).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::daemon::config::{ModelConfig, ModelSource};
use crate::error::{Error, Result};
use crate::fetch::{self, FetchOptions};
use clipfilter::encoder::{Provider, SessionConfig};
use clipfilter::engine::{Engine, EngineConfig};
use clipfilter::worker::BatchConfig;

/// The model settings every `clipfilter` element of the daemon gets (identical for all, so that
/// they share one engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementModel {
    /// The resolved model folder.
    pub dir: PathBuf,
    /// The settings in effect (`onnxruntime` is the library loaded when the process started).
    pub config: ModelConfig,
}

impl ElementModel {
    /// The `execution-provider` property value: `cuda,cpu`.
    pub fn providers(&self) -> String {
        self.config
            .providers
            .iter()
            .map(|p: &Provider| p.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The model folder `[model]` names: the folder itself, or the snapshot of `repo` at `revision`
/// in the hub cache that `clipfilterd model fetch` fills (its default cache unless `cache_dir`
/// says otherwise). The daemon never downloads.
pub fn resolve_model(model: &ModelConfig) -> Result<PathBuf> {
    match &model.source {
        ModelSource::Path(p) => {
            if p.is_dir() {
                Ok(p.clone())
            } else {
                Err(Error::model(p, "not a folder (give a CLIP model folder)"))
            }
        }
        ModelSource::Repo {
            repo,
            revision,
            cache_dir,
        } => {
            let mut opts = FetchOptions::from_env(repo);
            opts.revision = revision.clone();
            opts.variant = model.variant;
            opts.offline = true;
            opts.progress = false;
            if let Some(dir) = cache_dir {
                opts.cache_dir = dir.clone();
            }
            fetch::fetch(&opts).map_err(|e| {
                let again = match cache_dir {
                    Some(dir) => format!(
                        "clipfilterd model fetch {repo} --revision {revision} --variant {} --cache-dir {}",
                        model.variant,
                        dir.display()
                    ),
                    None => format!(
                        "clipfilterd model fetch {repo} --revision {revision} --variant {}",
                        model.variant
                    ),
                };
                Error::model(&opts.cache_dir, format!("{e}; run `{again}` first"))
            })
        }
    }
}

/// Checks that the `onnxruntime` library of `model`, when it names one, is a file; the error
/// says what is wrong.
pub fn check_library(model: &ModelConfig) -> std::result::Result<(), String> {
    let Some(path) = &model.onnxruntime else {
        return Ok(());
    };
    let problem = if !path.exists() {
        "does not exist"
    } else if !path.is_file() {
        "is not a file"
    } else {
        return Ok(());
    };
    Err(format!(
        "{} {problem} (give the path of libonnxruntime.so, or leave `onnxruntime` out to use the library installed)",
        path.display()
    ))
}

/// The engine settings the `clipfilter` elements derive from the same model settings (they
/// must be equal for the elements to share the daemon's engine).
pub fn engine_config(model: &ElementModel) -> EngineConfig {
    EngineConfig {
        model_dir: model.dir.clone(),
        variant: model.config.variant,
        session: SessionConfig {
            providers: model.config.providers.clone(),
            require_provider: model.config.require_provider,
            intra_threads: model.config.threads as usize,
            tensorrt_cache: model.config.tensorrt_cache.clone(),
            ..SessionConfig::default()
        },
        batch: BatchConfig {
            max_batch: model.config.max_batch.max(1) as usize,
            ..BatchConfig::default()
        },
        backend: model.config.backend.clone(),
    }
}

/// Loads the model of `config` (shared with the elements). The first call sets the ONNX
/// Runtime library; a later `onnxruntime` that differs is logged as waiting for a restart.
pub fn load_engine(config: &ModelConfig) -> Result<(ElementModel, Arc<Engine>)> {
    let _span = tracing::info_span!("load_engine", model = %config.source).entered();
    let onnxruntime = use_library(config)?;
    let dir = resolve_model(config)?;
    let model = ElementModel {
        dir,
        config: ModelConfig {
            onnxruntime,
            ..config.clone()
        },
    };
    let engine = Engine::shared(&engine_config(&model))?;
    Ok((model, engine))
}

/// Hands `config`'s `onnxruntime` to the engine the first time (before any model loads);
/// returns the setting in effect, which later calls cannot change.
fn use_library(config: &ModelConfig) -> Result<Option<PathBuf>> {
    static IN_EFFECT: OnceLock<Option<PathBuf>> = OnceLock::new();
    if IN_EFFECT.get().is_none() {
        check_library(config).map_err(|m| Error::invalid("[model] onnxruntime", m))?;
    }
    let in_effect = IN_EFFECT.get_or_init(|| {
        if let Some(path) = &config.onnxruntime {
            tracing::info!(path = %path.display(), "ONNX Runtime library from the configuration");
            clipfilter::runtime::set_library_path(path);
        }
        config.onnxruntime.clone()
    });
    if *in_effect != config.onnxruntime {
        tracing::warn!(
            running = %shown(in_effect.as_deref()),
            configured = %shown(config.onnxruntime.as_deref()),
            "[model] onnxruntime changed: ONNX Runtime loads once per process, restart the daemon to use the new library"
        );
    }
    Ok(in_effect.clone())
}

fn shown(path: Option<&Path>) -> String {
    path.map_or_else(
        || "(the default search)".into(),
        |p| p.display().to_string(),
    )
}
