//! Turning per-sample scores into match episodes, with hysteresis: a label starts matching
//! after `enter` consecutive samples pass its threshold and stops after `leave` consecutive
//! samples fail it, so a flickering score gives one episode, not a storm.

use crate::labels::{Action, CompiledLabels};
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

/// Per-label hysteresis state for one stream.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    states: Vec<LabelState>,
    names: Vec<String>,
}

impl Matcher {
    /// A matcher for `labels`, with nothing active.
    pub fn new(labels: &CompiledLabels) -> Self {
        Matcher {
            states: vec![LabelState::default(); labels.labels.len()],
            names: labels.labels.iter().map(|l| l.name.clone()).collect(),
        }
    }

    /// Feeds one sample's scores; returns the labels that started or ended.
    pub fn update(&mut self, labels: &CompiledLabels, scores: &Scores) -> Vec<Change> {
        let mut changes = Vec::new();
        for (i, (label, state)) in labels.labels.iter().zip(self.states.iter_mut()).enumerate() {
            let hit = label.passes(scores.cosine[i], scores.probability[i]);
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

    /// Moves to a reloaded label set: labels that keep their name keep their state; active
    /// labels that disappeared end.
    pub fn rebind(&mut self, new: &CompiledLabels) -> Vec<Change> {
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
}
