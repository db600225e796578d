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
    /// Regions whose crops the label is limited to (empty: every crop).
    pub regions: Vec<String>,
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

/// Every label's rules, the caller's defaults filling what the set leaves open.
fn resolve(set: &LabelSet, defaults: &LabelDefaults) -> Vec<CompiledLabel> {
    set.labels
        .iter()
        .map(|l| CompiledLabel {
            name: l.name.clone(),
            threshold: l.threshold.unwrap_or(defaults.threshold),
            action: l.action.unwrap_or(defaults.action),
            negative: l.negative,
            enter: l.enter.unwrap_or(defaults.enter),
            leave: l.leave.unwrap_or(defaults.leave),
            regions: l.regions.clone(),
        })
        .collect()
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
        Ok(CompiledLabels {
            labels: resolve(set, defaults),
            classes: ClassEmbeddings::new(rows, logit_scale)?,
        })
    }

    /// Re-resolves the rules of labels that take the caller's defaults (threshold, action,
    /// hysteresis) without embedding anything again. `set` must be the set these labels were
    /// compiled from; on error nothing changes.
    pub fn apply_defaults(&mut self, set: &LabelSet, defaults: &LabelDefaults) -> Result<()> {
        let same_set = set.labels.len() == self.labels.len()
            && set
                .labels
                .iter()
                .zip(&self.labels)
                .all(|(l, c)| l.name == c.name);
        if !same_set {
            return Err(crate::error::Error::invalid(
                "label defaults",
                "the label set differs from the one these labels were compiled from",
            ));
        }
        set.check_default_threshold(defaults.threshold)?;
        self.labels = resolve(set, defaults);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zeroshot::Templates;

    fn embed(texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                if t.contains("red") {
                    vec![1.0, 0.0]
                } else {
                    vec![0.0, 1.0]
                }
            })
            .collect())
    }

    #[test]
    fn defaults_are_reapplied_without_embedding() {
        let set = LabelSet::from_prompts(&["red".into(), "green".into()], Templates::None).unwrap();
        let mut compiled =
            CompiledLabels::compile(&set, &LabelDefaults::default(), 100.0, embed).unwrap();
        assert_eq!(compiled.labels[0].action, Action::None);
        let defaults = LabelDefaults {
            threshold: Threshold::Cosine(0.3),
            action: Action::Blank,
            enter: 2,
            leave: 3,
        };
        compiled.apply_defaults(&set, &defaults).unwrap();
        let red = &compiled.labels[0];
        assert_eq!(
            (red.threshold, red.action, red.enter, red.leave),
            (Threshold::Cosine(0.3), Action::Blank, 2, 3)
        );
        let other =
            LabelSet::from_prompts(&["blue".into(), "green".into()], Templates::None).unwrap();
        assert!(compiled.apply_defaults(&other, &defaults).is_err());
        let one = LabelSet::from_prompts(&["red".into()], Templates::None).unwrap();
        let mut single = CompiledLabels::compile(&one, &defaults, 100.0, embed).unwrap();
        assert!(
            single
                .apply_defaults(&one, &LabelDefaults::default())
                .is_err()
        );
        assert_eq!(single.labels[0].threshold, Threshold::Cosine(0.3));
    }
}
