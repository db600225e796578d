//! A label set with its text embeddings, ready to score frames.

use std::path::{Path, PathBuf};

use super::{Action, Label, LabelSet, LabelSetInfo, Threshold};
use crate::error::{Error, Result};
use crate::limits;
use crate::probe::{Probe, ProbeModel};
use crate::watch::Watch;
use crate::zeroshot::{ClassEmbeddings, Scores, ensemble, softmax_into};

/// What labels that do not set their own rules get (the element's properties).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompiledLabel {
    pub name: String,
    pub threshold: Threshold,
    pub action: Action,
    pub negative: bool,
    pub enter: u32,
    pub leave: u32,
    /// What identifies the label's class embedding: the key of its texts
    /// ([`super::texts_key`]), or for labels with pictures or a probe a hash of what scores
    /// them. Labels with equal keys score alike, so their stored scores can be reused
    /// (backtests do).
    pub key: String,
    /// Regions whose crops the label is limited to (empty: every crop).
    pub regions: Vec<String>,
    /// Matches only this many standard deviations above the stream's recent cosines of the
    /// label (the [`crate::matcher::Matcher`]'s baseline), besides `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_zscore: Option<f32>,
    /// Samples in that baseline (0 without `min_zscore`; left out of the JSON then, so that
    /// the versions of label sets without it stay what they were).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zscore_window: u32,
}

impl CompiledLabel {
    /// Whether `cosine`/`probability` pass this label's threshold (never for negatives). A
    /// probability must be greater than the threshold (or 1): with two labels a frame that fits
    /// neither gives each 0.5, which must not make both match at the default 0.5.
    pub fn passes(&self, cosine: f32, probability: f32) -> bool {
        !self.negative
            && match self.threshold {
                Threshold::Cosine(t) => cosine >= t,
                Threshold::Probability(t) => probability > t || probability >= 1.0,
            }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
            key: l.key(),
            regions: l.regions.clone(),
            min_zscore: l.min_zscore,
            zscore_window: match l.min_zscore {
                Some(_) => l.zscore_window.unwrap_or(limits::DEFAULT_ZSCORE_WINDOW),
                None => 0,
            },
        })
        .collect()
}

/// What compiling a label set needs from the engine.
pub trait Embedder {
    /// CLIP's logit scale (the zero-shot softmax's temperature).
    fn logit_scale(&self) -> f32;
    /// Raw text embeddings, one per text.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
    /// The normalised embedding of an image file (re-embedded only when the file changed).
    fn embed_image(&self, path: &Path) -> Result<Vec<f32>>;
    /// The identity of the image tower, which a probe must have been trained on.
    fn probe_model(&self) -> Result<ProbeModel>;
}

/// Where a label's score comes from.
#[derive(Debug, Clone, PartialEq)]
enum Slot {
    /// This row of the zero-shot class embeddings.
    ZeroShot(usize),
    /// A linear probe: its probability is both the cosine and the probability score.
    Probe(LabelProbe),
}

/// One class of a linear probe, ready to score.
#[derive(Debug, Clone, PartialEq)]
struct LabelProbe {
    /// K rows of D, flat.
    coef: Vec<f32>,
    intercept: Vec<f32>,
    class: usize,
}

impl LabelProbe {
    /// The probe's probability of its class for a normalised embedding: softmax over the
    /// probe's classes (two passes, no allocation).
    fn probability(&self, x: &[f32]) -> f32 {
        let d = x.len();
        let logit = |k: usize| {
            self.intercept[k]
                + self.coef[k * d..(k + 1) * d]
                    .iter()
                    .zip(x)
                    .map(|(w, v)| w * v)
                    .sum::<f32>()
        };
        let k = self.intercept.len();
        let max = (0..k).map(logit).fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = (0..k).map(|j| (logit(j) - max).exp()).sum();
        (logit(self.class) - max).exp() / total
    }
}

/// Labels and their scoring: zero-shot class embeddings (one ensembled, normalised row per
/// label scored that way) and linear probes.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledLabels {
    pub labels: Vec<CompiledLabel>,
    slots: Vec<Slot>,
    /// The zero-shot labels' rows, in label order; `None` when every label has a probe.
    zero_shot: Option<ClassEmbeddings>,
    dim: usize,
    /// CLIP's logit scale (the zero-shot softmax's temperature).
    logit_scale: f32,
    /// Example pictures that were skipped, with why (each also logged as a warning).
    pub skipped_images: Vec<(PathBuf, String)>,
    /// The defaults the rules were resolved with.
    pub defaults: LabelDefaults,
    /// Changes whenever a label, a rule, a text, a picture, a probe or the logit scale does
    /// ([`LabelSetInfo::version`]).
    pub version: String,
}

/// A key for a label scored by `row` (its ensembled texts and pictures) or by a probe.
fn scoring_key(label: &Label, row: Option<&[f32]>, probe: Option<&LabelProbe>) -> String {
    let mut parts = label.texts();
    if let Some(r) = row {
        parts.push(format!("row:{r:?}"));
    }
    if let Some(p) = probe {
        parts.push(format!("probe:{}:{:?}:{:?}", p.class, p.intercept, p.coef));
    }
    super::texts_key(&parts)
}

/// The regular files `patterns` match, sorted, each once.
fn expand_images(label: &Label, location: &dyn Fn(String) -> Error) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in &label.images {
        let paths = glob::glob(pattern).map_err(|e| {
            location(format!(
                "label `{}`: `{pattern}` is not a valid glob pattern: {e}",
                label.name
            ))
        })?;
        for p in paths.flatten() {
            if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
                files.push(p);
            }
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(location(format!(
            "label `{}`: no picture (regular file) matches {}",
            label.name,
            label
                .images
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if files.len() > limits::MAX_LABEL_IMAGES {
        return Err(location(format!(
            "label `{}`: {} pictures; at most {} are allowed",
            label.name,
            files.len(),
            limits::MAX_LABEL_IMAGES
        )));
    }
    Ok(files)
}

impl LabelSet {
    /// Loads the probe of `label` and checks that it has the label's class and, when `model` is
    /// given, that it was trained on that model.
    pub fn load_probe(
        &self,
        label: &Label,
        model: Option<&ProbeModel>,
    ) -> Result<Option<(Probe, usize)>> {
        let Some(path) = &label.probe else {
            return Ok(None);
        };
        let probe = Probe::from_file(path)?;
        if let Some(m) = model {
            probe.check_model(path, m)?;
        }
        let class = probe
            .classes
            .iter()
            .position(|c| *c == label.name)
            .ok_or_else(|| {
                self.error_at(
                    None,
                    "probe",
                    format!(
                        "label `{}`: the probe {} has no class of that name (its classes: {})",
                        label.name,
                        path.display(),
                        probe.classes.join(", ")
                    ),
                )
            })?;
        Ok(Some((probe, class)))
    }

    /// The other files the set's scores come from, to watch beside the label file: each
    /// probe, and the folders of each picture pattern (its literal folder and those of the
    /// pictures it matches now).
    pub fn dependencies(&self) -> Vec<Watch> {
        let mut out = Vec::new();
        for l in &self.labels {
            if let Some(p) = &l.probe {
                out.push(Watch::File(p.clone()));
            }
            for pattern in &l.images {
                let literal: PathBuf = Path::new(pattern)
                    .components()
                    .take_while(|c| {
                        !c.as_os_str()
                            .to_string_lossy()
                            .contains(['*', '?', '[', '{'])
                    })
                    .collect();
                if let Some(dir) = if Path::new(pattern) == literal {
                    literal.parent().map(Path::to_path_buf)
                } else {
                    Some(literal)
                } {
                    out.push(Watch::Folder(dir));
                }
                if let Ok(paths) = glob::glob(pattern) {
                    out.extend(
                        paths
                            .flatten()
                            .filter_map(|p| p.parent().map(|d| Watch::Folder(d.to_path_buf()))),
                    );
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Checks every label's probe (and, with `model`, that it belongs to that model) and that
    /// every label's picture patterns match a picture; reads no picture.
    pub fn check_files(&self, model: Option<&ProbeModel>) -> Result<()> {
        for l in &self.labels {
            self.load_probe(l, model)?;
            if !l.images.is_empty() {
                expand_images(l, &|m| self.error_at(None, "images", m))?;
            }
        }
        Ok(())
    }
}

impl CompiledLabels {
    /// Zero-shot labels over given class embeddings (one row per label, in order), for callers
    /// that don't start from a label file (tests, benchmarks).
    pub fn zero_shot(labels: Vec<CompiledLabel>, classes: ClassEmbeddings) -> Self {
        let defaults = LabelDefaults::default();
        CompiledLabels {
            version: LabelSetInfo::version_of(classes.logit_scale(), &defaults, &labels),
            slots: (0..labels.len()).map(Slot::ZeroShot).collect(),
            labels,
            dim: classes.dim(),
            logit_scale: classes.logit_scale(),
            zero_shot: Some(classes),
            skipped_images: Vec::new(),
            defaults,
        }
    }

    /// Embeds every label's texts and pictures with `embedder` and ensembles them; loads the
    /// labels' probes, checking that they belong to the embedder's model.
    pub fn compile(
        set: &LabelSet,
        defaults: &LabelDefaults,
        embedder: &dyn Embedder,
    ) -> Result<Self> {
        set.check_default_threshold(defaults.threshold)?;
        let texts: Vec<Vec<String>> = set.labels.iter().map(|l| l.texts()).collect();
        let flat: Vec<&str> = texts.iter().flatten().map(String::as_str).collect();
        let mut embeddings = if flat.is_empty() {
            Vec::new()
        } else {
            embedder.embed_texts(&flat)?
        }
        .into_iter();
        let mut rows = Vec::with_capacity(set.labels.len());
        let mut slots = Vec::with_capacity(set.labels.len());
        let mut skipped_images = Vec::new();
        let mut model = None;
        let mut dim = 0;
        let mut keys = Vec::with_capacity(set.labels.len());
        for (label, t) in set.labels.iter().zip(&texts) {
            let mut group: Vec<Vec<f32>> = embeddings.by_ref().take(t.len()).collect();
            if label.probe.is_some() {
                if model.is_none() {
                    model = Some(embedder.probe_model()?);
                }
                if let Some((probe, class)) = set.load_probe(label, model.as_ref())? {
                    dim = probe.model.dim;
                    let p = LabelProbe {
                        coef: probe.coef.concat().iter().map(|v| *v as f32).collect(),
                        intercept: probe.intercept.iter().map(|v| *v as f32).collect(),
                        class,
                    };
                    keys.push(Some(scoring_key(label, None, Some(&p))));
                    slots.push(Slot::Probe(p));
                    continue;
                }
            }
            if !label.images.is_empty() {
                let files = expand_images(label, &|m| set.error_at(None, "images", m))?;
                let mut bad = Vec::new();
                for f in &files {
                    match embedder.embed_image(f) {
                        Ok(e) => group.push(e),
                        Err(e) => {
                            tracing::warn!(label = %label.name, image = %f.display(), "skipping an example picture: {e}");
                            bad.push((f.clone(), e.to_string()));
                        }
                    }
                }
                if bad.len() == files.len() {
                    return Err(set.error_at(
                        None,
                        "images",
                        format!(
                            "label `{}`: none of its pictures could be used: {}",
                            label.name,
                            bad.iter()
                                .map(|(p, e)| format!("{} ({e})", p.display()))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    ));
                }
                skipped_images.extend(bad);
            }
            let row = ensemble(&group);
            keys.push((!label.images.is_empty()).then(|| scoring_key(label, Some(&row), None)));
            slots.push(Slot::ZeroShot(rows.len()));
            rows.push(row);
        }
        let zero_shot = if rows.is_empty() {
            None
        } else {
            let z = ClassEmbeddings::new(rows, embedder.logit_scale())?;
            if dim != 0 && z.dim() != dim {
                return Err(Error::invalid(
                    "label set",
                    format!(
                        "probes of width {dim} and text embeddings of width {}",
                        z.dim()
                    ),
                ));
            }
            dim = z.dim();
            Some(z)
        };
        let mut labels = resolve(set, defaults);
        for (l, k) in labels.iter_mut().zip(keys) {
            if let Some(k) = k {
                l.key = k;
            }
        }
        let logit_scale = embedder.logit_scale();
        Ok(CompiledLabels {
            version: LabelSetInfo::version_of(logit_scale, defaults, &labels),
            labels,
            slots,
            zero_shot,
            dim,
            logit_scale,
            skipped_images,
            defaults: *defaults,
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
            return Err(Error::invalid(
                "label defaults",
                "the label set differs from the one these labels were compiled from",
            ));
        }
        set.check_default_threshold(defaults.threshold)?;
        let mut labels = resolve(set, defaults);
        // The texts, pictures and probes did not change: keep the keys they were compiled with.
        for (l, old) in labels.iter_mut().zip(&self.labels) {
            l.key.clone_from(&old.key);
        }
        self.labels = labels;
        self.defaults = *defaults;
        self.version = LabelSetInfo::version_of(self.logit_scale, &self.defaults, &self.labels);
        Ok(())
    }

    /// The set as data: rules, keys, defaults, version (what the element's `label-set`
    /// property shows and what a sample history records).
    pub fn info(&self) -> LabelSetInfo {
        LabelSetInfo {
            version: self.version.clone(),
            logit_scale: self.logit_scale,
            defaults: self.defaults,
            labels: self.labels.clone(),
        }
    }

    /// CLIP's logit scale (the zero-shot softmax's temperature).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// The score of label `i` alone for a normalised image embedding: its cosine, or its
    /// probe's probability; `None` when `i` is out of range or the width differs.
    pub fn label_score(&self, i: usize, image: &[f32]) -> Option<f32> {
        match self.slots.get(i)? {
            Slot::ZeroShot(row) => self.zero_shot.as_ref()?.cosine(*row, image),
            Slot::Probe(p) => (image.len() == self.dim).then(|| p.probability(image)),
        }
    }

    /// Probabilities from per-label scores (as [`CompiledLabels::score_into`] gives them):
    /// the softmax over the zero-shot labels; probe labels keep their score.
    pub fn probabilities_into(&self, scores: &[f32], probability: &mut Vec<f32>) {
        if self.slots.iter().all(|s| matches!(s, Slot::ZeroShot(_))) {
            softmax_into(self.logit_scale, scores, probability);
            return;
        }
        let zero: Vec<f32> = scores
            .iter()
            .zip(&self.slots)
            .filter(|(_, s)| matches!(s, Slot::ZeroShot(_)))
            .map(|(c, _)| *c)
            .collect();
        let mut soft = Vec::new();
        softmax_into(self.logit_scale, &zero, &mut soft);
        let mut soft = soft.into_iter();
        probability.clear();
        for (c, s) in scores.iter().zip(&self.slots) {
            probability.push(match s {
                Slot::ZeroShot(_) => soft.next().unwrap_or(0.0),
                Slot::Probe(_) => *c,
            });
        }
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Whether label `i` is scored by a linear probe.
    pub fn is_probe(&self, i: usize) -> bool {
        matches!(self.slots.get(i), Some(Slot::Probe(_)))
    }

    /// Scores a normalised image embedding: per label, the cosine and the softmax probability
    /// among the zero-shot labels, or for a probe label its probe's probability in both.
    pub fn score_into(&self, image: &[f32], out: &mut Scores) -> Result<()> {
        match &self.zero_shot {
            Some(z) => z.score_into(image, out)?,
            None => {
                out.cosine.clear();
                out.probability.clear();
            }
        }
        if self.zero_shot.is_some() && out.cosine.len() == self.slots.len() {
            return Ok(());
        }
        if image.len() != self.dim {
            return Err(Error::invalid(
                "image embedding",
                format!(
                    "width {} differs from the probes' {}: the probe belongs to another model",
                    image.len(),
                    self.dim
                ),
            ));
        }
        // Zero-shot scores are in label order; the probes' go in between.
        for (i, slot) in self.slots.iter().enumerate() {
            if let Slot::Probe(p) = slot {
                let v = p.probability(image);
                out.cosine.insert(i, v);
                out.probability.insert(i, v);
            }
        }
        Ok(())
    }

    /// Scores a normalised image embedding.
    pub fn score(&self, image: &[f32]) -> Result<Scores> {
        let mut s = Scores::default();
        self.score_into(image, &mut s)?;
        Ok(s)
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

    struct Embed;

    impl Embedder for Embed {
        fn logit_scale(&self) -> f32 {
            100.0
        }
        fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
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
        fn embed_image(&self, path: &Path) -> Result<Vec<f32>> {
            Err(Error::invalid("image", path.display().to_string()))
        }
        fn probe_model(&self) -> Result<ProbeModel> {
            Err(Error::invalid("probe", "none"))
        }
    }

    /// Two labels and a frame that fits neither: each has probability 0.5, and neither matches
    /// at the default threshold 0.5 (issue 15); one that fits a little better does.
    #[test]
    fn a_tie_at_the_threshold_is_no_match() {
        let set = LabelSet::from_prompts(&["red".into(), "green".into()], Templates::None).unwrap();
        let compiled = CompiledLabels::compile(&set, &LabelDefaults::default(), &Embed).unwrap();
        let mut scores = Scores::default();
        let half = std::f32::consts::FRAC_1_SQRT_2;
        compiled.score_into(&[half, half], &mut scores).unwrap();
        assert_eq!(scores.probability, [0.5, 0.5]);
        for (i, label) in compiled.labels.iter().enumerate() {
            assert!(
                !label.passes(scores.cosine[i], scores.probability[i]),
                "{} matches at probability {}",
                label.name,
                scores.probability[i]
            );
        }
        compiled.score_into(&[0.72, 0.69], &mut scores).unwrap();
        assert!(compiled.labels[0].passes(scores.cosine[0], scores.probability[0]));
        assert!(!compiled.labels[1].passes(scores.cosine[1], scores.probability[1]));
        // A threshold of 1 is met by a probability of 1.
        let sure = CompiledLabel {
            threshold: Threshold::Probability(1.0),
            ..compiled.labels[0].clone()
        };
        assert!(sure.passes(1.0, 1.0) && !sure.passes(0.9, 0.99));
    }

    #[test]
    fn defaults_are_reapplied_without_embedding() {
        let set = LabelSet::from_prompts(&["red".into(), "green".into()], Templates::None).unwrap();
        let mut compiled =
            CompiledLabels::compile(&set, &LabelDefaults::default(), &Embed).unwrap();
        assert_eq!(compiled.labels[0].action, Action::None);
        let defaults = LabelDefaults {
            threshold: Threshold::Cosine(0.3),
            action: Action::Blank,
            enter: 2,
            leave: 3,
        };
        let before = compiled.version.clone();
        compiled.apply_defaults(&set, &defaults).unwrap();
        assert_ne!(compiled.version, before, "new rules, new version");
        assert_eq!(compiled.info().labels[0].key, set.labels[0].key());
        let red = &compiled.labels[0];
        assert_eq!(
            (red.threshold, red.action, red.enter, red.leave),
            (Threshold::Cosine(0.3), Action::Blank, 2, 3)
        );
        let other =
            LabelSet::from_prompts(&["blue".into(), "green".into()], Templates::None).unwrap();
        assert!(compiled.apply_defaults(&other, &defaults).is_err());
        let one = LabelSet::from_prompts(&["red".into()], Templates::None).unwrap();
        let mut single = CompiledLabels::compile(&one, &defaults, &Embed).unwrap();
        assert!(
            single
                .apply_defaults(&one, &LabelDefaults::default())
                .is_err()
        );
        assert_eq!(single.labels[0].threshold, Threshold::Cosine(0.3));
    }
}
