//! Turning per-sample scores into match episodes, with hysteresis: a label starts matching
//! after `enter` consecutive samples pass its threshold and stops after `leave` consecutive
//! samples fail it, so a flickering score gives one episode, not a storm.
//!
//! A label with `min_zscore` passes only when its cosine is that many standard deviations above
//! the stream's own recent cosines of the label: a [`Baseline`] of its last `zscore_window`
//! samples (the standard deviation floored at [`limits::ZSCORE_MIN_STD`]). Until the window is
//! full the label does not match. Baselines outlive episodes (end of stream, flush), follow a
//! label across reloads while its texts stay the same ([`Matcher::rebind`]), and can be saved
//! and restored ([`Matcher::baselines`], [`Matcher::restore`], [`save_baselines`],
//! [`load_baselines`]) so that a restart does not start them afresh. One matcher is one
//! pipeline's stream: the element, the daemon and backtests all keep one per pipeline.

use std::collections::VecDeque;
use std::path::Path;

use crate::error::{Error, Result};
use crate::labels::{Action, CompiledLabels};
use crate::limits;
use crate::zeroshot::Scores;

/// Start or end of a match episode (`"start"` or `"end"` in messages and events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    Start,
    End,
}

impl Transition {
    /// "start" or "end".
    pub fn name(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::End => "end",
        }
    }

    /// The transition called `name` ("start" or "end").
    pub fn from_name(name: &str) -> Option<Transition> {
        [Transition::Start, Transition::End]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A label changing state.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Index in the current label set (`None` for a label that a reload removed).
    pub index: Option<usize>,
    pub label: String,
    pub transition: Transition,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LabelState {
    active: bool,
    /// Consecutive samples on the other side of the threshold.
    streak: u32,
}

/// One label's recent cosines on one stream.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    pub label: String,
    /// The label's key ([`crate::labels::CompiledLabel::key`]): another key, another score.
    pub key: String,
    /// Oldest first.
    pub scores: VecDeque<f32>,
}

impl Baseline {
    fn new(label: &str, key: &str) -> Self {
        Baseline {
            label: label.to_string(),
            key: key.to_string(),
            scores: VecDeque::new(),
        }
    }

    /// How many standard deviations `score` is above the mean of the window (the deviation
    /// floored at [`limits::ZSCORE_MIN_STD`]); 0 for an empty window.
    pub fn zscore(&self, score: f32) -> f32 {
        if self.scores.is_empty() {
            return 0.0;
        }
        let n = self.scores.len() as f64;
        let mean = self.scores.iter().map(|s| f64::from(*s)).sum::<f64>() / n;
        let var = self
            .scores
            .iter()
            .map(|s| (f64::from(*s) - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt().max(f64::from(limits::ZSCORE_MIN_STD));
        ((f64::from(score) - mean) / std) as f32
    }

    fn push(&mut self, score: f32, window: usize) {
        if !score.is_finite() {
            return;
        }
        while self.scores.len() >= window.max(1) {
            self.scores.pop_front();
        }
        self.scores.push_back(score);
    }
}

/// Per-label hysteresis state for one stream.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    states: Vec<LabelState>,
    names: Vec<String>,
    /// Per label: its baseline when it has `min_zscore`.
    baselines: Vec<Option<Baseline>>,
}

/// A label whose baseline is not full yet (it does not match until it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warming {
    pub label: String,
    pub samples: usize,
    pub needed: usize,
}

impl Matcher {
    /// A matcher for `labels`, with nothing active and empty baselines.
    pub fn new(labels: &CompiledLabels) -> Self {
        Matcher {
            states: vec![LabelState::default(); labels.labels.len()],
            names: labels.labels.iter().map(|l| l.name.clone()).collect(),
            baselines: labels
                .labels
                .iter()
                .map(|l| l.min_zscore.map(|_| Baseline::new(&l.name, &l.key)))
                .collect(),
        }
    }

    /// The baselines of the labels with `min_zscore` (what [`save_baselines`] writes).
    pub fn baselines(&self) -> Vec<Baseline> {
        self.baselines.iter().flatten().cloned().collect()
    }

    /// Takes saved baselines: each label with `min_zscore` gets the one of its name, if that
    /// was of the same key (at most its window's newest scores). Returns how many were taken.
    pub fn restore(&mut self, labels: &CompiledLabels, saved: Vec<Baseline>) -> usize {
        let mut taken = 0;
        for mut b in saved {
            let Some(i) = labels.index_of(&b.label) else {
                continue;
            };
            let label = &labels.labels[i];
            if label.min_zscore.is_none() || label.key != b.key {
                continue;
            }
            let window = label.zscore_window as usize;
            while b.scores.len() > window {
                b.scores.pop_front();
            }
            b.scores.retain(|s| s.is_finite());
            if let Some(slot) = self.baselines.get_mut(i) {
                *slot = Some(b);
                taken += 1;
            }
        }
        taken
    }

    /// The labels with `min_zscore` whose baseline is not full yet.
    pub fn warming(&self, labels: &CompiledLabels) -> Vec<Warming> {
        labels
            .labels
            .iter()
            .zip(&self.baselines)
            .filter_map(|(l, b)| {
                let b = b.as_ref()?;
                let needed = l.zscore_window as usize;
                (b.scores.len() < needed).then(|| Warming {
                    label: l.name.clone(),
                    samples: b.scores.len(),
                    needed,
                })
            })
            .collect()
    }

    /// Feeds one sample's scores; returns the labels that started or ended.
    pub fn update(&mut self, labels: &CompiledLabels, scores: &Scores) -> Vec<Change> {
        let mut changes = Vec::new();
        for (i, (label, state)) in labels.labels.iter().zip(self.states.iter_mut()).enumerate() {
            let mut hit = label.passes(scores.cosine[i], scores.probability[i]);
            if let (Some(min), Some(Some(b))) = (label.min_zscore, self.baselines.get_mut(i)) {
                let window = label.zscore_window as usize;
                let full = b.scores.len() >= window;
                hit = hit && full && b.zscore(scores.cosine[i]) >= min;
                b.push(scores.cosine[i], window);
            }
            if hit != state.active {
                state.streak += 1;
                let needed = if state.active {
                    label.leave
                } else {
                    label.enter
                };
                if state.streak >= needed {
                    state.active = hit;
                    state.streak = 0;
                    let transition = if hit {
                        Transition::Start
                    } else {
                        Transition::End
                    };
                    changes.push(Change {
                        index: Some(i),
                        label: label.name.clone(),
                        transition,
                    });
                }
            } else {
                state.streak = 0;
            }
        }
        changes
    }

    /// Whether label `i` is in a match episode.
    pub fn is_active(&self, i: usize) -> bool {
        self.states.get(i).is_some_and(|s| s.active)
    }

    /// Names of the active labels.
    pub fn active_labels(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .zip(&self.states)
            .filter(|(_, s)| s.active)
            .map(|(n, _)| n.as_str())
    }

    /// The action to apply now: the strongest among active labels (drop > blank > pixelate).
    pub fn action(&self, labels: &CompiledLabels) -> Action {
        let rank = |a: Action| match a {
            Action::None => 0,
            Action::Pixelate => 1,
            Action::Blank => 2,
            Action::Drop => 3,
        };
        labels
            .labels
            .iter()
            .zip(&self.states)
            .filter(|(_, s)| s.active)
            .map(|(l, _)| l.action)
            .max_by_key(|a| rank(*a))
            .unwrap_or(Action::None)
    }

    /// Ends every active episode (end of stream, flush, stop).
    pub fn end_all(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        for (i, state) in self.states.iter_mut().enumerate() {
            if state.active {
                changes.push(Change {
                    index: Some(i),
                    label: self.names[i].clone(),
                    transition: Transition::End,
                });
            }
            *state = LabelState::default();
        }
        changes
    }

    /// Moves to a reloaded label set: labels that keep their name keep their state (and their
    /// baseline, while their key stays the same); active labels that disappeared end.
    pub fn rebind(&mut self, new: &CompiledLabels) -> Vec<Change> {
        let saved = self.baselines();
        self.baselines = new
            .labels
            .iter()
            .map(|l| l.min_zscore.map(|_| Baseline::new(&l.name, &l.key)))
            .collect();
        self.restore(new, saved);
        let mut changes = Vec::new();
        let mut states = vec![LabelState::default(); new.labels.len()];
        for (name, state) in self.names.iter().zip(&self.states) {
            match new.index_of(name) {
                Some(j) => states[j] = *state,
                None if state.active => changes.push(Change {
                    index: None,
                    label: name.clone(),
                    transition: Transition::End,
                }),
                None => {}
            }
        }
        self.states = states;
        self.names = new.labels.iter().map(|l| l.name.clone()).collect();
        changes
    }
}

/// What a baselines file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct BaselineFile {
    version: u32,
    baselines: Vec<Baseline>,
}

const BASELINE_FILE_VERSION: u32 = 1;

/// Writes `baselines` to `path` (JSON, through a temporary file renamed over it, so that a
/// crash leaves the old file or the new one).
pub fn save_baselines(path: &Path, baselines: &[Baseline]) -> Result<()> {
    let text = serde_json::to_string(&BaselineFile {
        version: BASELINE_FILE_VERSION,
        baselines: baselines.to_vec(),
    })
    .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads the baselines [`save_baselines`] wrote; none when there is no file yet.
pub fn load_baselines(path: &Path) -> Result<Vec<Baseline>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = crate::input::read_to_string(path)?;
    let file: BaselineFile = serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            path.display().to_string(),
            format!("not a baselines file: {e}"),
        )
    })?;
    if file.version != BASELINE_FILE_VERSION {
        return Err(Error::invalid(
            path.display().to_string(),
            format!(
                "baselines file version {} (this build reads {BASELINE_FILE_VERSION})",
                file.version
            ),
        ));
    }
    Ok(file.baselines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{CompiledLabel, Threshold};
    use crate::zeroshot::ClassEmbeddings;

    fn labels(enter: u32, leave: u32) -> CompiledLabels {
        let l = |name: &str, negative| CompiledLabel {
            name: name.into(),
            threshold: Threshold::Cosine(0.5),
            action: Action::Blank,
            negative,
            enter,
            leave,
            key: name.into(),
            regions: Vec::new(),
            min_zscore: None,
            zscore_window: 0,
        };
        CompiledLabels::zero_shot(
            vec![l("smoke", false), l("sky", true)],
            ClassEmbeddings::new(vec![vec![1.0, 0.0], vec![0.0, 1.0]], 100.0).unwrap(),
        )
    }

    fn sample(cos: f32) -> Scores {
        Scores {
            cosine: vec![cos, 0.9],
            probability: vec![0.5, 0.5],
        }
    }

    #[test]
    fn flicker_gives_one_episode() {
        let set = labels(2, 3);
        let mut m = Matcher::new(&set);
        let seq = [
            0.6, 0.2, 0.6, 0.6, 0.2, 0.6, 0.2, 0.2, 0.6, 0.2, 0.2, 0.2, 0.2,
        ];
        let changes: Vec<(usize, Transition)> = seq
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                m.update(&set, &sample(*c))
                    .into_iter()
                    .map(move |ch| (i, ch.transition))
            })
            .collect();
        assert_eq!(changes, vec![(3, Transition::Start), (11, Transition::End)]);
        assert_eq!(m.action(&set), Action::None);
    }

    #[test]
    fn negatives_never_fire_and_reload_keeps_state() {
        let set = labels(1, 1);
        let mut m = Matcher::new(&set);
        assert_eq!(m.update(&set, &sample(0.7)).len(), 1);
        assert!(m.is_active(0) && !m.is_active(1));
        assert_eq!(m.action(&set), Action::Blank);
        let mut renamed = set.clone();
        renamed.labels[0].name = "fire".into();
        let ended = m.rebind(&renamed);
        assert_eq!(
            ended,
            vec![Change {
                index: None,
                label: "smoke".into(),
                transition: Transition::End
            }]
        );
        assert!(m.rebind(&set).is_empty());
        assert_eq!(m.end_all().len(), 0);
    }

    #[test]
    fn zscore_labels_match_above_their_own_baseline() {
        let mut set = labels(1, 1);
        set.labels[0].threshold = Threshold::Cosine(-1.0);
        set.labels[0].min_zscore = Some(3.0);
        set.labels[0].zscore_window = 10;
        let mut m = Matcher::new(&set);
        // Warming up: no match, even far above.
        for _ in 0..9 {
            assert!(m.update(&set, &sample(0.2)).is_empty());
        }
        assert_eq!(m.warming(&set)[0].samples, 9);
        assert!(
            m.update(&set, &sample(0.9)).is_empty(),
            "window not full yet"
        );
        assert!(m.warming(&set).is_empty());
        // The 0.9 is in the window now: mean 0.27, std 0.21; 0.95 is 3.2 std above.
        let changes = m.update(&set, &sample(0.95));
        assert_eq!(changes.len(), 1, "{changes:?}");
        // Saved and restored (a restart), the baseline goes on; another key starts afresh.
        let saved = m.baselines();
        let dir = std::env::temp_dir().join(format!("clipfilter-baselines-{}", std::process::id()));
        let path = dir.join("p.json");
        save_baselines(&path, &saved).unwrap();
        let loaded = load_baselines(&path).unwrap();
        assert_eq!(loaded, saved);
        let mut again = Matcher::new(&set);
        assert_eq!(again.restore(&set, loaded.clone()), 1);
        assert!(again.warming(&set).is_empty());
        let mut other = set.clone();
        other.labels[0].key = "other".into();
        assert_eq!(Matcher::new(&other).restore(&other, loaded), 0);
        // A reload keeps it; the end of a stream keeps it.
        m.end_all();
        assert!(m.rebind(&set).is_empty());
        assert_eq!(m.baselines(), saved);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load_baselines(&path).unwrap().is_empty());
    }
}
