//! Zero-shot scoring exactly as CLIP does it: L2-normalised embeddings, cosine similarity,
//! logits = logit_scale x cosine, softmax over the label set; prompt ensembles average the
//! normalised embeddings of every (template, prompt) pair and renormalise.

pub mod templates;

use std::str::FromStr;

use crate::encoder::l2_normalize;
use crate::error::{Error, Result};

/// Which templates turn a prompt into the texts that are embedded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Templates {
    /// The prompt as written.
    #[default]
    None,
    /// OpenAI's "a photo of a {}.".
    Single,
    /// The 7 templates OpenAI selected.
    Ensemble7,
    /// The 80 ImageNet templates.
    Imagenet80,
    /// The user's own; each contains `{}`.
    Custom(Vec<String>),
}

impl Templates {
    /// Names accepted by [`FromStr`].
    pub const NAMES: [&'static str; 4] = ["none", "single", "ensemble7", "imagenet80"];

    /// A custom list, checked for the `{}` placeholder.
    pub fn custom(list: Vec<String>) -> Result<Self> {
        if list.is_empty() {
            return Err(Error::invalid("templates", "the list is empty"));
        }
        if let Some(t) = list.iter().find(|t| t.contains('\0')) {
            return Err(Error::invalid(
                "templates",
                format!("{t:?} contains a NUL byte (GStreamer properties end a string at it)"),
            ));
        }
        if let Some(t) = list.iter().find(|t| !t.contains("{}")) {
            return Err(Error::invalid(
                "templates",
                format!("`{t}` has no `{{}}` placeholder for the prompt"),
            ));
        }
        Ok(Templates::Custom(list))
    }

    /// The texts to embed for `prompt`.
    pub fn expand(&self, prompt: &str) -> Vec<String> {
        let fill = |t: &str| t.replace("{}", prompt);
        match self {
            Templates::None => vec![prompt.to_string()],
            Templates::Single => templates::SINGLE.iter().map(|t| fill(t)).collect(),
            Templates::Ensemble7 => templates::ENSEMBLE7.iter().map(|t| fill(t)).collect(),
            Templates::Imagenet80 => templates::IMAGENET80.iter().map(|t| fill(t)).collect(),
            Templates::Custom(list) => list.iter().map(|t| fill(t)).collect(),
        }
    }
}

impl FromStr for Templates {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Templates::None),
            "single" => Ok(Templates::Single),
            "ensemble7" => Ok(Templates::Ensemble7),
            "imagenet80" => Ok(Templates::Imagenet80),
            other => Err(Error::invalid(
                "template set",
                format!(
                    "unknown template set `{other}`: expected one of {}",
                    Templates::NAMES.join(", ")
                ),
            )),
        }
    }
}

/// Normalises each embedding, averages them and renormalises (CLIP's prompt ensemble).
pub fn ensemble(embeddings: &[Vec<f32>]) -> Vec<f32> {
    let dim = embeddings.first().map_or(0, Vec::len);
    let mut sum = vec![0f32; dim];
    for e in embeddings {
        let mut e = e.clone();
        l2_normalize(&mut e);
        sum.iter_mut().zip(&e).for_each(|(s, x)| *s += x);
    }
    let n = embeddings.len().max(1) as f32;
    sum.iter_mut().for_each(|s| *s /= n);
    l2_normalize(&mut sum);
    sum
}

/// Normalised class embeddings, one row per label, and the logit scale.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassEmbeddings {
    dim: usize,
    rows: Vec<f32>,
    logit_scale: f32,
}

/// Scores of one image against every class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    /// Cosine similarity per class.
    pub cosine: Vec<f32>,
    /// Softmax of logit_scale x cosine over the classes.
    pub probability: Vec<f32>,
}

impl ClassEmbeddings {
    /// Builds from already normalised rows of equal width.
    pub fn new(rows: Vec<Vec<f32>>, logit_scale: f32) -> Result<Self> {
        let dim = rows.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(Error::invalid("label set", "no labels to score against"));
        }
        if rows.iter().any(|r| r.len() != dim) {
            return Err(Error::invalid(
                "label set",
                "class embeddings differ in width",
            ));
        }
        Ok(ClassEmbeddings {
            dim,
            rows: rows.concat(),
            logit_scale,
        })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    /// True when there are no classes (never, once built).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The logit scale.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Scores a normalised image embedding into `out` (reusing its buffers).
    pub fn score_into(&self, image: &[f32], out: &mut Scores) -> Result<()> {
        if image.len() != self.dim {
            return Err(Error::invalid(
                "image embedding",
                format!(
                    "width {} differs from the text embeddings' {}: the two towers do not belong together",
                    image.len(),
                    self.dim
                ),
            ));
        }
        out.cosine.clear();
        out.cosine.extend(
            self.rows
                .chunks_exact(self.dim)
                .map(|row| row.iter().zip(image).map(|(a, b)| a * b).sum::<f32>()),
        );
        out.probability.clear();
        let max = out
            .cosine
            .iter()
            .fold(f32::NEG_INFINITY, |m, c| m.max(self.logit_scale * c));
        out.probability.extend(
            out.cosine
                .iter()
                .map(|c| (self.logit_scale * c - max).exp()),
        );
        let total: f32 = out.probability.iter().sum();
        out.probability.iter_mut().for_each(|p| *p /= total);
        Ok(())
    }

    /// Scores a normalised image embedding.
    pub fn score(&self, image: &[f32]) -> Result<Scores> {
        let mut s = Scores::default();
        self.score_into(image, &mut s)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_counts_and_expansion() {
        assert_eq!(templates::IMAGENET80.len(), 80);
        assert!(
            templates::IMAGENET80
                .iter()
                .chain(&templates::ENSEMBLE7)
                .all(|t| t.matches("{}").count() == 1)
        );
        assert_eq!(Templates::Single.expand("cat"), vec!["a photo of a cat."]);
        assert_eq!(
            Templates::Ensemble7.expand("van")[4],
            "a van in a video game."
        );
        assert!(
            "imagenet81"
                .parse::<Templates>()
                .unwrap_err()
                .to_string()
                .contains("ensemble7")
        );
        assert!(Templates::custom(vec!["no placeholder".into()]).is_err());
    }

    #[test]
    fn softmax_of_scaled_cosines() {
        let classes = ClassEmbeddings::new(vec![vec![1.0, 0.0], vec![0.0, 1.0]], 100.0).unwrap();
        let s = classes.score(&[0.6, 0.8]).unwrap();
        assert!((s.cosine[0] - 0.6).abs() < 1e-6 && (s.cosine[1] - 0.8).abs() < 1e-6);
        let expect = 1.0 / (1.0 + (20.0f32).exp());
        assert!((s.probability[0] - expect).abs() < 1e-9);
        assert!(classes.score(&[1.0, 0.0, 0.0]).is_err());
    }

    #[test]
    fn ensemble_is_mean_of_normalised() {
        let e = ensemble(&[vec![2.0, 0.0], vec![0.0, 5.0]]);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((e[0] - h).abs() < 1e-6 && (e[1] - h).abs() < 1e-6);
    }
}
