//! A label set with its text embeddings, ready to score frames.

use super::{Action, LabelSet, Threshold};
use crate::error::Result;
use crate::zeroshot::{ClassEmbeddings, Scores, ensemble};

/// What labels that do not set their own rules get (the element's properties).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelDefaults {
    pub threshold: Threshold,
    pub action: Action,
    pub enter: u32,
    pub leave: u32,
}

impl Default for LabelDefaults {
    fn default() -> Self {
        LabelDefaults {
            threshold: Threshold::Probability(0.5),
            action: Action::None,
            enter: 1,
            leave: 1,
        }
    }
}

/// One label with every rule resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledLabel {
    pub name: String,
    pub threshold: Threshold,
    pub action: Action,
    pub negative: bool,
    pub enter: u32,
    pub leave: u32,
}

impl CompiledLabel {
    /// Whether `cosine`/`probability` pass this label's threshold (never for negatives).
    pub fn passes(&self, cosine: f32, probability: f32) -> bool {
        !self.negative
            && match self.threshold {
                Threshold::Cosine(t) => cosine >= t,
                Threshold::Probability(t) => probability >= t,
            }
    }
}

/// Labels and their class embeddings (one ensembled, normalised row per label).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledLabels {
    pub labels: Vec<CompiledLabel>,
    pub classes: ClassEmbeddings,
}

impl CompiledLabels {
    /// Embeds every label's texts with `embed` (raw embeddings, one per text) and ensembles
    /// them.
    pub fn compile(
        set: &LabelSet,
        defaults: &LabelDefaults,
        logit_scale: f32,
        mut embed: impl FnMut(&[&str]) -> Result<Vec<Vec<f32>>>,
    ) -> Result<Self> {
        set.check_default_threshold(defaults.threshold)?;
        let texts: Vec<Vec<String>> = set.labels.iter().map(|l| l.texts()).collect();
        let flat: Vec<&str> = texts.iter().flatten().map(String::as_str).collect();
        let mut embeddings = embed(&flat)?.into_iter();
        let mut rows = Vec::with_capacity(set.labels.len());
        for t in &texts {
            let group: Vec<Vec<f32>> = embeddings.by_ref().take(t.len()).collect();
            rows.push(ensemble(&group));
        }
        let labels = set
            .labels
            .iter()
            .map(|l| CompiledLabel {
                name: l.name.clone(),
                threshold: l.threshold.unwrap_or(defaults.threshold),
                action: l.action.unwrap_or(defaults.action),
                negative: l.negative,
                enter: l.enter.unwrap_or(defaults.enter),
                leave: l.leave.unwrap_or(defaults.leave),
            })
            .collect();
        Ok(CompiledLabels {
            labels,
            classes: ClassEmbeddings::new(rows, logit_scale)?,
        })
    }

    /// Scores a normalised image embedding.
    pub fn score_into(&self, image: &[f32], out: &mut Scores) -> Result<()> {
        self.classes.score_into(image, out)
    }

    /// Index of the label called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.labels.iter().position(|l| l.name == name)
    }
}
