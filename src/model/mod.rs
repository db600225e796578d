//! A CLIP model folder in the Hugging Face / transformers.js ONNX export layout, and getting one.

pub mod fetch;

use std::fmt;
use std::str::FromStr;

/// Which precision of the exported ONNX towers to use.
///
/// transformers.js exports keep every variant side by side in `onnx/`, told apart by a suffix:
/// `onnx/vision_model.onnx` (fp32), `onnx/vision_model_fp16.onnx`,
/// `onnx/vision_model_quantized.onnx` (dynamic int8/uint8), and the same for `text_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Variant {
    /// Full precision (`*.onnx`).
    #[default]
    Fp32,
    /// Half precision (`*_fp16.onnx`).
    Fp16,
    /// Dynamically quantised 8-bit weights (`*_quantized.onnx`).
    Quantized,
}

impl Variant {
    /// The file-name suffix before `.onnx`: `""`, `"_fp16"` or `"_quantized"`.
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Fp32 => "",
            Variant::Fp16 => "_fp16",
            Variant::Quantized => "_quantized",
        }
    }

    /// The name used on the command line and in configuration: `fp32`, `fp16` or `quantized`.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Fp32 => "fp32",
            Variant::Fp16 => "fp16",
            Variant::Quantized => "quantized",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model variant name that is not `fp32`, `fp16` or `quantized`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model variant `{given}` (expected fp32, fp16 or quantized)")]
pub struct ParseVariantError {
    /// What was given.
    pub given: String,
}

impl FromStr for Variant {
    type Err = ParseVariantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" => Ok(Variant::Fp32),
            "fp16" => Ok(Variant::Fp16),
            "quantized" => Ok(Variant::Quantized),
            _ => Err(ParseVariantError {
                given: s.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_round_trip() {
        for v in [Variant::Fp32, Variant::Fp16, Variant::Quantized] {
            assert_eq!(v.name().parse::<Variant>(), Ok(v));
            assert_eq!(v.to_string(), v.name());
        }
        assert_eq!("FP16".parse::<Variant>(), Ok(Variant::Fp16));
        assert_eq!(Variant::Quantized.suffix(), "_quantized");
        let err = "int8".parse::<Variant>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown model variant `int8` (expected fp32, fp16 or quantized)"
        );
    }
}
