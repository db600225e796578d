//! A CLIP model folder in the Hugging Face / transformers.js ONNX export layout:
//!
//! ```text
//! config.json  preprocessor_config.json  tokenizer.json  [clipfilter.toml]
//! onnx/vision_model{,_fp16,_quantized}.onnx   -> image_embeds
//! onnx/text_model{,_fp16,_quantized}.onnx     -> text_embeds
//! ```
//!
//! Everything that shapes the computation is read from these files (and from the ONNX graphs
//! when the sessions are created): image size, crop, resize rule, mean/std, context length. The
//! logit scale is a trained weight that `config.json` does not carry; it defaults to OpenAI's 100
//! and `clipfilter.toml` in the folder may override it.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Location, Result};
use crate::preprocess::PreprocessConfig;

/// OpenAI's trained logit scale (exp of the clamped parameter).
pub const DEFAULT_LOGIT_SCALE: f32 = 100.0;

/// Which weights of a model folder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Variant {
    /// `*_model.onnx`, float32 weights.
    #[default]
    Fp32,
    /// `*_model_fp16.onnx`, half-precision weights (for GPUs).
    Fp16,
    /// `*_model_quantized.onnx`, dynamic int8 quantisation (fast on CPUs).
    Quantized,
}

impl Variant {
    /// File-name suffix of the variant.
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Fp32 => "",
            Variant::Fp16 => "_fp16",
            Variant::Quantized => "_quantized",
        }
    }

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Fp32 => "fp32",
            Variant::Fp16 => "fp16",
            Variant::Quantized => "quantized",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Variant::Fp32),
            "fp16" => Ok(Variant::Fp16),
            "quantized" | "int8" => Ok(Variant::Quantized),
            other => Err(Error::invalid(
                "model variant",
                format!("`{other}`: expected fp32, fp16 or quantized"),
            )),
        }
    }
}

/// Our own optional file in a model folder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelOverrides {
    /// The trained logit scale (exp of `logit_scale`), e.g. 100 for OpenAI's models.
    logit_scale: Option<f32>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTextConfig {
    max_position_embeddings: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    projection_dim: Option<usize>,
    text_config: Option<RawTextConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTokenizerConfig {
    pad_token: Option<serde_json::Value>,
    model_max_length: Option<f64>,
}

/// The files and settings of a model folder, validated but not loaded.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub variant: Variant,
    pub vision_onnx: PathBuf,
    pub text_onnx: PathBuf,
    pub tokenizer_json: PathBuf,
    pub preprocess: PreprocessConfig,
    pub logit_scale: f32,
    /// `projection_dim` from config.json, when given (checked against the graphs).
    pub projection_dim: Option<usize>,
    /// Context length when the text graph does not fix it (config.json / tokenizer_config.json).
    pub context_length: usize,
    /// Padding token text from tokenizer_config.json, if any.
    pub pad_token: Option<String>,
}

fn find_onnx(dir: &Path, stem: &str, variant: Variant) -> Option<PathBuf> {
    let name = format!("{stem}{}.onnx", variant.suffix());
    [dir.join("onnx").join(&name), dir.join(&name)]
        .into_iter()
        .find(|p| p.is_file())
}

fn available_variants(dir: &Path) -> Vec<&'static str> {
    [Variant::Fp32, Variant::Fp16, Variant::Quantized]
        .into_iter()
        .filter(|v| {
            find_onnx(dir, "vision_model", *v).is_some()
                && find_onnx(dir, "text_model", *v).is_some()
        })
        .map(Variant::name)
        .collect()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = crate::input::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, &e))
}

impl ModelDir {
    /// Checks a model folder and reads its small config files.
    pub fn open(dir: impl AsRef<Path>, variant: Variant) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.exists() {
            return Err(Error::model(
                dir,
                "no such folder (fetch one with `clipfilterd model fetch`)",
            ));
        }
        if !dir.is_dir() {
            return Err(Error::model(dir, "not a folder"));
        }
        let require = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::model(dir, format!("{name} is missing")))
            }
        };
        let onnx =
            |stem: &str| -> Result<PathBuf> {
                find_onnx(dir, stem, variant).ok_or_else(|| {
                let have = available_variants(dir);
                Error::model(
                    dir,
                    format!(
                        "onnx/{stem}{}.onnx is missing (variant {variant}); variants present: {}",
                        variant.suffix(),
                        if have.is_empty() { "none".to_string() } else { have.join(", ") }
                    ),
                )
            })
            };
        let vision_onnx = onnx("vision_model")?;
        let text_onnx = onnx("text_model")?;
        let tokenizer_json = require("tokenizer.json")?;
        let preprocess = PreprocessConfig::from_json_file(&require("preprocessor_config.json")?)?;

        let config_path = dir.join("config.json");
        let config: RawConfig = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            RawConfig::default()
        };
        if let Some(t) = &config.model_type
            && !t.contains("clip")
            && !t.contains("siglip")
        {
            tracing::warn!(model = %dir.display(), model_type = %t, "config.json names a model type that is not CLIP");
        }
        let tok_cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg: RawTokenizerConfig = if tok_cfg_path.is_file() {
            read_json(&tok_cfg_path)?
        } else {
            RawTokenizerConfig::default()
        };
        let context_length = config
            .text_config
            .as_ref()
            .and_then(|t| t.max_position_embeddings)
            .or_else(|| {
                tok_cfg
                    .model_max_length
                    .filter(|n| *n >= 2.0 && *n < 100_000.0)
                    .map(|n| n as usize)
            })
            .unwrap_or(77);
        let pad_token = match tok_cfg.pad_token {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };

        let overrides_path = dir.join("clipfilter.toml");
        let overrides: ModelOverrides = if overrides_path.is_file() {
            let text = crate::input::read_to_string(&overrides_path)?;
            toml::from_str(&text).map_err(|e| {
                let loc = e
                    .span()
                    .map(|s| Location::from_offset(&text, s.start, None))
                    .unwrap_or_default();
                Error::config(&overrides_path, loc, e.message().to_string())
            })?
        } else {
            ModelOverrides::default()
        };
        let logit_scale = overrides.logit_scale.unwrap_or(DEFAULT_LOGIT_SCALE);
        if !(logit_scale.is_finite() && logit_scale > 0.0) {
            return Err(Error::config(
                &overrides_path,
                Location::field("logit_scale"),
                "must be a positive number",
            ));
        }
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            variant,
            vision_onnx,
            text_onnx,
            tokenizer_json,
            preprocess,
            logit_scale,
            projection_dim: config.projection_dim,
            context_length,
            pad_token,
        })
    }
}
