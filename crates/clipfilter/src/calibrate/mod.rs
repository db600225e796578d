//! Thresholds from examples: precision/recall curves and the threshold a user asks for.
//!
//! The pure part: given one label's scores on its positive examples and on everything else
//! (the scores the live matcher computes, see [`score_examples`]), [`pr_curve`] lists precision
//! and recall at every candidate threshold and [`choose`] picks the threshold that reaches an
//! asked precision with the most recall (or the best F1). [`examples`] reads the folder of
//! example pictures.

pub mod examples;

use crate::engine::Engine;
use crate::error::Result;
use crate::labels::{CompiledLabels, Threshold};
use crate::zeroshot::Scores;

pub use examples::{Example, Examples};

/// What the chosen threshold optimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The most recall with at least this precision on the examples.
    Precision(f32),
    /// The best F1 (harmonic mean of precision and recall).
    MaxF1,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Precision(p) => write!(f, "precision >= {p}"),
            Target::MaxF1 => f.write_str("max F1"),
        }
    }
}

impl Target {
    /// Positive examples needed to calibrate for this target: at least
    /// [`crate::limits::MIN_CALIBRATION_POSITIVES`], and for a precision p at least 1/(1-p), the
    /// number of hits that can afford a single false positive (with fewer, the precision measured
    /// on the examples jumps from 1 to below p and says nothing about p).
    pub fn positives_needed(self) -> usize {
        let floor = crate::limits::MIN_CALIBRATION_POSITIVES;
        match self {
            Target::Precision(p) if p < 1.0 => {
                floor.max((1.0 / (1.0 - f64::from(p))).round().max(1.0) as usize)
            }
            Target::Precision(_) => usize::MAX,
            Target::MaxF1 => floor,
        }
    }
}

/// Counts and rates at one threshold (score >= threshold fires).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrPoint {
    pub threshold: f32,
    /// Positives at or above the threshold.
    pub tp: usize,
    /// Negatives at or above the threshold.
    pub fp: usize,
    /// tp / (tp + fp); 1 when nothing fires.
    pub precision: f64,
    /// tp / positives.
    pub recall: f64,
}

impl PrPoint {
    /// F1 score.
    pub fn f1(&self) -> f64 {
        if self.precision + self.recall == 0.0 {
            0.0
        } else {
            2.0 * self.precision * self.recall / (self.precision + self.recall)
        }
    }
}

/// Precision and recall of `threshold` on scores of positives and negatives.
pub fn evaluate(positives: &[f32], negatives: &[f32], threshold: f32) -> PrPoint {
    let tp = positives.iter().filter(|s| **s >= threshold).count();
    let fp = negatives.iter().filter(|s| **s >= threshold).count();
    PrPoint {
        threshold,
        tp,
        fp,
        precision: if tp + fp == 0 {
            1.0
        } else {
            tp as f64 / (tp + fp) as f64
        },
        recall: if positives.is_empty() {
            0.0
        } else {
            tp as f64 / positives.len() as f64
        },
    }
}

/// The precision/recall curve: one point per distinct score (positives and negatives), from the
/// highest threshold to the lowest.
pub fn pr_curve(positives: &[f32], negatives: &[f32]) -> Vec<PrPoint> {
    let mut all: Vec<f32> = positives
        .iter()
        .chain(negatives)
        .copied()
        .filter(|s| s.is_finite())
        .collect();
    all.sort_by(|a, b| b.total_cmp(a));
    all.dedup();
    all.iter()
        .map(|t| evaluate(positives, negatives, *t))
        .collect()
}

/// Why a label could not be calibrated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error(
        "too few examples: {positives} positive and {negatives} negative, it needs at least {needed_positives} positive and {needed_negatives} negative ({why})"
    )]
    TooFew {
        positives: usize,
        negatives: usize,
        needed_positives: usize,
        needed_negatives: usize,
        why: String,
    },
    #[error(
        "no threshold reaches {target} on these examples: the best precision with any recall is {best_precision:.3} (recall {recall:.3} at threshold {threshold:.4}); add examples, improve the prompts, or ask for less"
    )]
    Unreachable {
        target: Target,
        best_precision: f64,
        recall: f64,
        threshold: f32,
    },
}

/// The threshold [`choose`] picked and how it does on the examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Rounded to 4 decimals where that changes no count on the examples.
    pub point: PrPoint,
}

/// Picks the threshold for `target`: among the thresholds at positive scores, the one with the
/// most recall whose precision reaches the target (ties: the higher threshold, fewer false
/// positives), or the best F1. The threshold is then put halfway down to the next lower score,
/// so that examples sitting exactly on it do not decide, and rounded to 4 decimals when that
/// changes no count. `floor` is the smallest valid threshold of the score's kind.
pub fn choose(
    positives: &[f32],
    negatives: &[f32],
    target: Target,
    floor: f32,
) -> std::result::Result<Choice, CalibrationError> {
    let needed_positives = target.positives_needed();
    let needed_negatives = crate::limits::MIN_CALIBRATION_NEGATIVES;
    if positives.len() < needed_positives || negatives.len() < needed_negatives {
        let why = match target {
            Target::Precision(p) => format!(
                "precision {p} allows one false positive per {} hits, so fewer positives cannot measure it; fewer than {needed_negatives} negatives cannot show false positives",
                (1.0 / (1.0 - f64::from(p))).round()
            ),
            Target::MaxF1 => format!(
                "fewer than {needed_positives} positives or {needed_negatives} negatives give a curve of a few steps"
            ),
        };
        return Err(CalibrationError::TooFew {
            positives: positives.len(),
            negatives: negatives.len(),
            needed_positives: needed_positives.min(100_000),
            needed_negatives,
            why,
        });
    }
    let mut at_positives: Vec<f32> = positives
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .collect();
    at_positives.sort_by(|a, b| b.total_cmp(a));
    at_positives.dedup();
    let points: Vec<PrPoint> = at_positives
        .iter()
        .map(|t| evaluate(positives, negatives, *t))
        .collect();
    // Points run from the highest threshold down; `>` keeps the first (higher) on ties.
    let best = match target {
        Target::Precision(p) => {
            let mut best: Option<PrPoint> = None;
            for pt in points.iter().filter(|pt| pt.precision >= f64::from(p)) {
                if best.is_none_or(|b| pt.tp > b.tp) {
                    best = Some(*pt);
                }
            }
            match best {
                Some(b) => b,
                None => {
                    let top = points
                        .iter()
                        .copied()
                        .fold(None::<PrPoint>, |acc, pt| match acc {
                            Some(a) if a.precision >= pt.precision => Some(a),
                            _ => Some(pt),
                        });
                    let top = top.unwrap_or_else(|| evaluate(positives, negatives, 1.0));
                    return Err(CalibrationError::Unreachable {
                        target,
                        best_precision: top.precision,
                        recall: top.recall,
                        threshold: top.threshold,
                    });
                }
            }
        }
        Target::MaxF1 => {
            let mut best = points[0];
            for pt in &points[1..] {
                if pt.f1() > best.f1() {
                    best = *pt;
                }
            }
            best
        }
    };
    let below = positives
        .iter()
        .chain(negatives)
        .copied()
        .filter(|s| s.is_finite() && *s < best.threshold)
        .fold(f32::NEG_INFINITY, f32::max);
    let mid = if below.is_finite() {
        (best.threshold + below) / 2.0
    } else {
        best.threshold
    }
    .max(floor);
    let rounded = ((f64::from(mid) * 1e4).round() / 1e4) as f32;
    let point = [rounded, mid]
        .into_iter()
        .map(|t| evaluate(positives, negatives, t))
        .find(|pt| pt.tp == best.tp && pt.fp == best.fp && pt.threshold >= floor)
        .unwrap_or_else(|| evaluate(positives, negatives, best.threshold.max(floor)));
    Ok(Choice { point })
}

/// A label's score of the kind its threshold uses.
pub fn score_of(threshold: Threshold, scores: &Scores, i: usize) -> f32 {
    match threshold {
        Threshold::Cosine(_) => scores.cosine[i],
        Threshold::Probability(_) => scores.probability[i],
    }
}

/// The smallest valid threshold of a kind (probabilities must be above 0).
pub fn floor_of(threshold: Threshold) -> f32 {
    match threshold {
        Threshold::Cosine(_) => -1.0,
        Threshold::Probability(_) => 1e-6,
    }
}

/// The same kind of threshold with another value.
pub fn with_value(threshold: Threshold, value: f32) -> Threshold {
    match threshold {
        Threshold::Cosine(_) => Threshold::Cosine(value),
        Threshold::Probability(_) => Threshold::Probability(value),
    }
}

/// One label's scores on the examples: those of its own folder and those of every other folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelScores {
    pub positives: Vec<f32>,
    pub negatives: Vec<f32>,
}

/// Scores every example against the compiled labels (the live matcher's scoring) and splits
/// them, per label, into positives (its folder) and negatives (every other folder), each of the
/// kind of the label's threshold. `embeddings[i]` belongs to `examples[i]`.
pub fn split_scores(
    labels: &CompiledLabels,
    examples: &[Example],
    embeddings: &[Vec<f32>],
) -> Result<Vec<LabelScores>> {
    let mut out = vec![LabelScores::default(); labels.labels.len()];
    let mut scores = Scores::default();
    for (ex, emb) in examples.iter().zip(embeddings) {
        labels.score_into(emb, &mut scores)?;
        for (i, l) in labels.labels.iter().enumerate() {
            let s = score_of(l.threshold, &scores, i);
            if ex.label == l.name {
                out[i].positives.push(s);
            } else {
                out[i].negatives.push(s);
            }
        }
    }
    Ok(out)
}

/// One marked embedding: a person said whether `label` should fire on it (review marks).
#[derive(Debug, Clone, Copy)]
pub struct Marked<'a> {
    pub label: &'a str,
    /// It should fire here (the label's positive), or it should not (its negative).
    pub positive: bool,
    /// The normalised image embedding.
    pub embedding: &'a [f32],
}

/// Scores every marked embedding against the compiled labels (the live matcher's scoring, as
/// [`split_scores`]) and adds the score of its label to that label's positives or negatives;
/// other labels do not see it (a mark says nothing about them). A mark of a label the set does
/// not have is ignored (callers check the names first).
pub fn split_marked(labels: &CompiledLabels, marked: &[Marked<'_>]) -> Result<Vec<LabelScores>> {
    let mut out = vec![LabelScores::default(); labels.labels.len()];
    let mut scores = Scores::default();
    for m in marked {
        let Some(i) = labels.index_of(m.label) else {
            continue;
        };
        labels.score_into(m.embedding, &mut scores)?;
        let s = score_of(labels.labels[i].threshold, &scores, i);
        if m.positive {
            out[i].positives.push(s);
        } else {
            out[i].negatives.push(s);
        }
    }
    Ok(out)
}

/// Normalised embeddings of example pictures through `engine`, `chunk` at a time, calling
/// `progress` with the number done; a picture that cannot be decoded is an error naming it.
pub fn embed_examples(
    engine: &Engine,
    examples: &[Example],
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(32) {
        let mut pixels = Vec::new();
        for ex in chunk {
            pixels.extend(engine.preprocess_file(&ex.path)?);
        }
        out.extend(engine.embed_pixels(&pixels)?);
        progress(out.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_counts_at_each_distinct_score() {
        let pos = [0.9, 0.8, 0.8, 0.4];
        let neg = [0.85, 0.3, 0.1];
        let c = pr_curve(&pos, &neg);
        assert_eq!(c.len(), 6);
        assert_eq!((c[0].threshold, c[0].tp, c[0].fp), (0.9, 1, 0));
        assert_eq!((c[1].tp, c[1].fp), (1, 1));
        assert_eq!((c[2].tp, c[2].fp, c[2].precision), (3, 1, 0.75));
        assert_eq!((c[5].tp, c[5].fp, c[5].recall), (4, 3, 1.0));
    }

    fn spread(n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    #[test]
    fn most_recall_at_the_asked_precision() {
        // positives 0.50..0.95, negatives 0.05..0.60: overlap in 0.50..0.60.
        let pos = spread(20, 0.5, 0.95);
        let neg = spread(40, 0.05, 0.6);
        let c = choose(&pos, &neg, Target::Precision(0.9), -1.0).unwrap();
        let p = c.point;
        assert!(p.precision >= 0.9, "{p:?}");
        // No lower threshold at a positive keeps precision >= 0.9.
        for t in pos.iter().filter(|t| **t < p.threshold) {
            assert!(evaluate(&pos, &neg, *t).precision < 0.9, "{t}");
        }
        // Halfway down to the next score, 4 decimals.
        assert_eq!(p.threshold, (p.threshold * 1e4).round() / 1e4);
        let strict = choose(&pos, &neg, Target::Precision(0.95), -1.0).unwrap();
        assert!(strict.point.recall <= p.recall && strict.point.precision >= 0.95);
        let f1 = choose(&pos, &neg, Target::MaxF1, -1.0).unwrap();
        assert!(f1.point.f1() >= p.f1());
    }

    #[test]
    fn too_few_and_unreachable_say_why() {
        let e = choose(
            &spread(9, 0.5, 0.9),
            &spread(20, 0.0, 0.4),
            Target::MaxF1,
            0.0,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            CalibrationError::TooFew {
                positives: 9,
                needed_positives: 10,
                ..
            }
        ));
        assert_eq!(Target::Precision(0.95).positives_needed(), 20);
        let e = choose(
            &spread(15, 0.5, 0.9),
            &spread(20, 0.0, 0.4),
            Target::Precision(0.95),
            0.0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least 20 positive"), "{e}");
        // Negatives above every positive: precision never reaches 0.9.
        let e = choose(
            &spread(20, 0.1, 0.5),
            &spread(20, 0.6, 0.9),
            Target::Precision(0.9),
            0.0,
        )
        .unwrap_err();
        assert!(matches!(e, CalibrationError::Unreachable { .. }), "{e}");
    }

    #[test]
    fn probability_thresholds_stay_positive() {
        let pos = vec![0.0f32; 20];
        let neg = vec![0.0f32; 20];
        let c = choose(&pos, &neg, Target::MaxF1, 1e-6).unwrap();
        assert!(c.point.threshold > 0.0);
    }
}
