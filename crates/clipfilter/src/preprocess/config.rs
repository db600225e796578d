//! The image preprocessing a model expects, read from its `preprocessor_config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Location, Result};

/// OpenAI CLIP's normalisation mean (also `CLIPImageProcessor`'s default).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

/// How the image is resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Keep the size.
    None,
    /// Scale so that the shorter side has this length, keeping the aspect ratio (CLIP's rule).
    ShortestEdge(u32),
    /// Scale to exactly this height and width.
    Exact { height: u32, width: u32 },
}

/// The resampling filter, as PIL numbers them in `preprocessor_config.json` (`resample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos,
    Box,
    Hamming,
}

impl Filter {
    fn from_pil(code: i64) -> Option<Self> {
        Some(match code {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }
}

/// Everything needed to turn an image into the model's input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    pub resize: Resize,
    pub filter: Filter,
    /// Centre crop to (height, width); `None` keeps the resized image.
    pub crop: Option<(u32, u32)>,
    /// Multiply 8-bit values by this (1/255 for CLIP); `None` keeps 0..255.
    pub rescale: Option<f64>,
    /// Per-channel (mean, std) applied after rescaling.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl Default for PreprocessConfig {
    /// OpenAI CLIP at 224 pixels.
    fn default() -> Self {
        PreprocessConfig {
            resize: Resize::ShortestEdge(224),
            filter: Filter::Bicubic,
            crop: Some((224, 224)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Int(u32),
    Dict {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

#[derive(Deserialize)]
struct RawConfig {
    do_resize: Option<bool>,
    size: Option<SizeSpec>,
    resample: Option<i64>,
    do_center_crop: Option<bool>,
    crop_size: Option<SizeSpec>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

impl PreprocessConfig {
    /// The same resize and crop without rescale and normalisation: the output holds the 8-bit
    /// RGB values themselves (0..=255, exact in float32), for a server whose model normalises
    /// (the uint8 wire format).
    pub fn unnormalised(&self) -> Self {
        PreprocessConfig {
            rescale: None,
            normalize: None,
            ..self.clone()
        }
    }

    /// The output tensor's (height, width) for an input of any size, when the config fixes it.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        match (self.crop, self.resize) {
            (Some(crop), _) => Some(crop),
            (None, Resize::Exact { height, width }) => Some((height, width)),
            _ => None,
        }
    }

    /// The size after resizing an image of `width` x `height`, as (width, height), following
    /// `transformers.image_transforms.get_resize_output_image_size`.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize {
            Resize::None => (width, height),
            Resize::Exact {
                height: h,
                width: w,
            } => (w, h),
            Resize::ShortestEdge(short) => {
                let (s, l) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (f64::from(short) * f64::from(l) / f64::from(s.max(1))) as u32;
                if width <= height {
                    (short, new_long)
                } else {
                    (new_long, short)
                }
            }
        }
    }

    /// Reads a `preprocessor_config.json` as transformers' `CLIPImageProcessor` does.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = crate::input::read_to_string(path)?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `preprocessor_config.json`; `path` is used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::json(path, &e))?;
        let bad =
            |field: &str, message: String| Error::config(path, Location::field(field), message);

        let resize = if raw.do_resize.unwrap_or(true) {
            match raw.size {
                None => Resize::ShortestEdge(224),
                Some(SizeSpec::Int(n)) => Resize::ShortestEdge(n),
                Some(SizeSpec::Dict {
                    shortest_edge: Some(n),
                    ..
                }) => Resize::ShortestEdge(n),
                Some(SizeSpec::Dict {
                    shortest_edge: None,
                    height: Some(h),
                    width: Some(w),
                }) => Resize::Exact {
                    height: h,
                    width: w,
                },
                Some(SizeSpec::Dict { .. }) => {
                    return Err(bad(
                        "size",
                        "expected an integer, {\"shortest_edge\"} or {\"height\", \"width\"}"
                            .into(),
                    ));
                }
            }
        } else {
            Resize::None
        };
        if matches!(
            resize,
            Resize::ShortestEdge(0)
                | Resize::Exact { height: 0, .. }
                | Resize::Exact { width: 0, .. }
        ) {
            return Err(bad("size", "must be positive".into()));
        }
        let filter = match raw.resample {
            None => Filter::Bicubic,
            Some(code) => Filter::from_pil(code)
                .ok_or_else(|| bad("resample", format!("unknown PIL resampling filter {code}")))?,
        };
        let crop = if raw.do_center_crop.unwrap_or(true) {
            match raw.crop_size {
                None => Some((224, 224)),
                Some(SizeSpec::Int(n)) => Some((n, n)),
                Some(SizeSpec::Dict {
                    height: Some(h),
                    width: Some(w),
                    ..
                }) => Some((h, w)),
                Some(SizeSpec::Dict { .. }) => {
                    return Err(bad(
                        "crop_size",
                        "expected an integer or {\"height\", \"width\"}".into(),
                    ));
                }
            }
        } else {
            None
        };
        if matches!(crop, Some((0, _)) | Some((_, 0))) {
            return Err(bad("crop_size", "must be positive".into()));
        }
        let rescale = if raw.do_rescale.unwrap_or(true) {
            Some(raw.rescale_factor.unwrap_or(1.0 / 255.0))
        } else {
            None
        };
        let normalize = if raw.do_normalize.unwrap_or(true) {
            let triple =
                |v: Option<Vec<f32>>, default: [f32; 3], field: &str| -> Result<[f32; 3]> {
                    match v {
                        None => Ok(default),
                        Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                        Some(v) if v.len() == 1 => Ok([v[0]; 3]),
                        Some(v) => Err(bad(field, format!("expected 3 values, found {}", v.len()))),
                    }
                };
            let mean = triple(raw.image_mean, CLIP_MEAN, "image_mean")?;
            let std = triple(raw.image_std, CLIP_STD, "image_std")?;
            if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
                return Err(bad(
                    "image_std",
                    "values must be finite and non-zero".into(),
                ));
            }
            Some((mean, std))
        } else {
            None
        };
        Ok(PreprocessConfig {
            resize,
            filter,
            crop,
            rescale,
            normalize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_size_spellings() {
        let old = r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": 224}"#;
        let new = r#"{"crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224},
            "do_rescale": true, "rescale_factor": 0.00392156862745098}"#;
        let a = PreprocessConfig::from_json_str(old, Path::new("a.json")).unwrap();
        let b = PreprocessConfig::from_json_str(new, Path::new("b.json")).unwrap();
        assert_eq!(a, PreprocessConfig::default());
        assert_eq!(b, PreprocessConfig::default());
    }

    #[test]
    fn resized_size_truncates_like_transformers() {
        let c = PreprocessConfig::default();
        assert_eq!(c.resized_size(1920, 1080), (398, 224));
        assert_eq!(c.resized_size(768, 576), (298, 224));
        assert_eq!(c.resized_size(100, 300), (224, 672));
        assert_eq!(c.resized_size(224, 224), (224, 224));
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let err =
            PreprocessConfig::from_json_str(r#"{"resample": 9}"#, Path::new("p.json")).unwrap_err();
        assert!(err.to_string().contains("field `resample`"), "{err}");
        let err =
            PreprocessConfig::from_json_str(r#"{"image_std": [0, 1, 1]}"#, Path::new("p.json"))
                .unwrap_err();
        assert!(err.to_string().contains("image_std"), "{err}");
        let err =
            PreprocessConfig::from_json_str("{\n\"size\": [", Path::new("p.json")).unwrap_err();
        assert!(err.to_string().starts_with("p.json: line 2"), "{err}");
    }
}
