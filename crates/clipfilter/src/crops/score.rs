//! A sample's crops to label scores: each crop is scored as CLIP scores one image (cosine,
//! softmax over the set), and each label takes its best crop among those it may use.
//!
//! The element, the daemon and the sample history's backtest all score through
//! [`score_crops`], so that a replayed sample gets exactly the verdict the live one got.
//!
//! Why the best and not the mean over crops: a small object shows in one crop; the mean divides
//! its score by the number of crops and hides it, which defeats the purpose of cropping
//! (`clipfilterd bench --sections crops` measures both, with what each costs in false alarms).

use super::plan::{CropId, CropKind};
use crate::error::{Error, Result};
use crate::labels::{CompiledLabel, CompiledLabels, Threshold};
use crate::zeroshot::Scores;

/// A sample's verdict over its crops.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CropScores {
    /// Per label: the scores of its winning crop (what the matcher sees).
    pub scores: Scores,
    /// Per label: the index of its winning crop, `None` when it may use none of them.
    pub winner: Vec<Option<usize>>,
    /// Per crop: every label's scores.
    pub per_crop: Vec<Scores>,
}

/// Whether `label` may use crop `id`: labels limited to regions use only those regions' crops;
/// others use every crop.
pub fn may_use(label: &CompiledLabel, id: &CropId) -> bool {
    label.regions.is_empty() || (id.kind == CropKind::Region && label.regions.contains(&id.name))
}

/// The value a label's threshold compares (what "best" maximises).
fn key(label: &CompiledLabel, s: &Scores, i: usize) -> f32 {
    match label.threshold {
        Threshold::Cosine(_) => s.cosine[i],
        Threshold::Probability(_) => s.probability[i],
    }
}

/// Scores the normalised `embeddings` (one per crop, `crops.len()` x dim, flat) of one sample
/// into `out`, reusing its buffers.
pub fn score_crops(
    labels: &CompiledLabels,
    crops: &[impl AsRef<CropId>],
    embeddings: &[f32],
    out: &mut CropScores,
) -> Result<()> {
    let dim = labels.dim();
    if crops.is_empty() || embeddings.len() != crops.len() * dim {
        return Err(Error::invalid(
            "crop embeddings",
            format!(
                "{} floats for {} crops of width {dim}",
                embeddings.len(),
                crops.len()
            ),
        ));
    }
    out.per_crop.resize_with(crops.len(), Scores::default);
    for (e, s) in embeddings.chunks_exact(dim).zip(out.per_crop.iter_mut()) {
        labels.score_into(e, s)?;
    }
    let n = labels.labels.len();
    out.scores.cosine.clear();
    out.scores.probability.clear();
    out.winner.clear();
    for (i, label) in labels.labels.iter().enumerate() {
        let best = crops
            .iter()
            .enumerate()
            .filter(|(_, c)| may_use(label, c.as_ref()))
            .map(|(k, _)| k)
            .fold(None::<usize>, |best, k| match best {
                Some(b) if key(label, &out.per_crop[b], i) >= key(label, &out.per_crop[k], i) => {
                    Some(b)
                }
                _ => Some(k),
            });
        let (cosine, probability) = match best {
            Some(k) => (out.per_crop[k].cosine[i], out.per_crop[k].probability[i]),
            None => (-1.0, 0.0),
        };
        out.scores.cosine.push(cosine);
        out.scores.probability.push(probability);
        out.winner.push(best);
    }
    debug_assert_eq!(out.winner.len(), n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{Action, CompiledLabel};
    use crate::zeroshot::ClassEmbeddings;

    fn label(name: &str, threshold: Threshold, regions: &[&str]) -> CompiledLabel {
        CompiledLabel {
            name: name.into(),
            threshold,
            action: Action::None,
            negative: false,
            enter: 1,
            leave: 1,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            key: crate::labels::texts_key(&[name.to_string()]),
            min_zscore: None,
            zscore_window: 0,
        }
    }

    fn id(kind: CropKind, name: &str) -> CropId {
        CropId {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn each_label_takes_its_best_allowed_crop() {
        let labels = CompiledLabels::zero_shot(
            vec![
                label("red", Threshold::Cosine(0.5), &[]),
                label("green", Threshold::Probability(0.5), &["gate"]),
            ],
            ClassEmbeddings::new(vec![vec![1.0, 0.0], vec![0.0, 1.0]], 100.0).unwrap(),
        );
        let crops = [
            id(CropKind::Frame, "frame"),
            id(CropKind::Tile, "r1c1"),
            id(CropKind::Region, "gate"),
        ];
        // Frame: mostly green; tile: red; gate: a little green.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let e = [0.1, 0.995, 1.0, 0.0, s, s];
        let mut out = CropScores::default();
        score_crops(&labels, &crops, &e, &mut out).unwrap();
        assert_eq!(out.winner, vec![Some(1), Some(2)]);
        assert_eq!(out.scores.cosine[0], 1.0);
        // Green may only use the gate, where it ties with red.
        assert!((out.scores.probability[1] - 0.5).abs() < 1e-6);
        assert_eq!(out.per_crop.len(), 3);

        let only_frame = [id(CropKind::Frame, "frame")];
        score_crops(&labels, &only_frame, &e[..2], &mut out).unwrap();
        assert_eq!(out.winner, vec![Some(0), None]);
        assert_eq!(out.scores.probability[1], 0.0);
        assert!(score_crops(&labels, &only_frame, &e, &mut out).is_err());
    }
}
