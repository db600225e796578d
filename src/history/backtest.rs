//! Backtests: the episodes a label set would have produced over the stored samples, next to the
//! episodes the live label sets did produce (the stored events).
//!
//! The replay uses the engine's code, nothing of its own: each sample's cosines go through
//! [`CompiledLabels::probabilities_into`] (what `CompiledLabels::score_into` does after the
//! per-label scores) and the
//! [`Matcher`] (the element's hysteresis), in the order the element saw them; a stream that
//! ended or restarted (an epoch) ends its episodes there, as the element does at EOS, flush and
//! stop. Samples the scene gate repeated count as samples, as they do live.
//!
//! Where a cosine comes from: a label whose texts (prompts expanded with templates) have the same
//! key as a label of the set that scored the sample live reuses the cosine computed then, bit
//! for bit; other labels are scored on the stored (int8) embedding with
//! [`ClassEmbeddings::cosine`]. So replaying the live set reproduces the live events exactly, and
//! a changed threshold or hysteresis changes only what it should.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::reader::History;
use super::store::sql;
use crate::error::Result;
use clipfilter::labels::{CompiledLabels, LabelDefaults, LabelSetInfo};
use clipfilter::matcher::{Matcher, Transition};
use clipfilter::zeroshot::Scores;

/// Which part of the history to replay.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Pipelines (`None`: every pipeline with samples).
    pub pipelines: Option<Vec<String>>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// A start or an end of an episode.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Boundary {
    pub time_ms: i64,
    pub epoch: i64,
    pub frame: u64,
    pub pts: Option<i64>,
    pub stream_time: Option<i64>,
    /// The sample that decided it (for thumbnails), when there is one.
    pub sample: Option<i64>,
    pub score: f32,
    pub probability: f32,
    /// "sample" (decided by a score), or what ended the stream ("eos", "flush", "stop",
    /// "reload", "stream end").
    pub reason: String,
}

impl Boundary {
    fn same_place(&self, other: &Boundary) -> bool {
        self.epoch == other.epoch && self.frame == other.frame
    }
}

/// One match episode of one label.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Episode {
    pub pipeline: String,
    pub label: String,
    pub start: Boundary,
    /// `None`: still open at the end of the history (or of the window).
    pub end: Option<Boundary>,
}

/// How an episode of the new set compares with the live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Difference {
    Same,
    Changed,
    Added,
    Removed,
}

impl Difference {
    pub fn name(self) -> &'static str {
        match self {
            Difference::Same => "same",
            Difference::Changed => "changed",
            Difference::Added => "added",
            Difference::Removed => "removed",
        }
    }
}

/// An episode of the new set next to the live one it corresponds to.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Compared {
    pub difference: Difference,
    pub pipeline: String,
    pub label: String,
    pub new: Option<Episode>,
    pub live: Option<Episode>,
}

/// What a backtest found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub episodes: Vec<Episode>,
    pub live: Vec<Episode>,
    pub compared: Vec<Compared>,
    /// Samples replayed.
    pub samples: u64,
    /// Cosines reused from the live scores, and computed from stored embeddings.
    pub reused: u64,
    pub rescored: u64,
    /// Samples skipped: embedded by another model, or without the embedding a new label needs.
    pub skipped: u64,
}

impl Report {
    /// Counts of each difference.
    pub fn counts(&self) -> HashMap<Difference, usize> {
        let mut m = HashMap::new();
        for c in &self.compared {
            *m.entry(c.difference).or_insert(0) += 1;
        }
        m
    }
}

/// The defaults the pipeline's live label set was compiled with (the newest known), for
/// compiling the set under test the same way.
pub fn pipeline_defaults(history: &History, pipeline: &str) -> Result<Option<LabelDefaults>> {
    Ok(latest_info(history, pipeline)?.map(|i| i.defaults))
}

fn latest_info(history: &History, pipeline: &str) -> Result<Option<LabelSetInfo>> {
    let pid = history.pipeline_id(pipeline)?;
    let text: Option<String> = history
        .conn()
        .query_row(
            "SELECT info FROM labelsets WHERE pipeline = ?1 AND info IS NOT NULL ORDER BY id DESC LIMIT 1",
            [pid],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()
        .map_err(sql(history.dir()))?
        .flatten();
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Replays `window` of the history with the label set `compile` gives for a pipeline's defaults,
/// and compares with the live events. `model`: the image-tower fingerprint of the engine that
/// compiled the set (samples of other models are skipped).
pub fn backtest(
    history: &History,
    model: &str,
    window: &Window,
    compile: &dyn Fn(&LabelDefaults) -> Result<CompiledLabels>,
) -> Result<Report> {
    let names: Vec<String> = match &window.pipelines {
        Some(p) => {
            for n in p {
                history.pipeline_id(n)?;
            }
            p.clone()
        }
        None => history.pipelines()?.into_iter().map(|(_, n)| n).collect(),
    };
    let mut report = Report::default();
    let mut compiled_for: Vec<(LabelDefaults, CompiledLabels)> = Vec::new();
    for name in &names {
        let defaults = pipeline_defaults(history, name)?.unwrap_or_default();
        let labels = match compiled_for.iter().find(|(d, _)| *d == defaults) {
            Some((_, l)) => l.clone(),
            None => {
                let l = compile(&defaults)?;
                compiled_for.push((defaults, l.clone()));
                l
            }
        };
        let episodes = replay(history, model, name, window, &labels, &mut report)?;
        let live = live_episodes(history, name, window)?;
        report.compared.extend(compare(name, &episodes, &live));
        report.episodes.extend(episodes);
        report.live.extend(live);
    }
    Ok(report)
}

/// The end of a stream at its last sample.
fn stream_end(last: &Boundary) -> Boundary {
    Boundary {
        sample: None,
        reason: "stream end".into(),
        ..last.clone()
    }
}

struct Stored {
    id: i64,
    epoch: i64,
    time_ms: i64,
    pts: Option<i64>,
    stream_time: Option<i64>,
    frame: u64,
    embedded: Option<i64>,
    labelset: i64,
    scores: Vec<f32>,
}

fn replay(
    history: &History,
    model: &str,
    pipeline: &str,
    window: &Window,
    labels: &CompiledLabels,
    report: &mut Report,
) -> Result<Vec<Episode>> {
    let err = sql(history.dir());
    let pid = history.pipeline_id(pipeline)?;
    let since = window.since_ms.unwrap_or(i64::MIN);
    let until = window.until_ms.unwrap_or(i64::MAX);
    let conn = history.conn();
    let mut infos: HashMap<i64, Option<LabelSetInfo>> = HashMap::new();
    let mut ends: HashMap<i64, Option<Option<Boundary>>> = HashMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT id, epoch, time_ms, pts, stream_time, frame,
                    CASE WHEN segment IS NOT NULL THEN id ELSE repeat_of END, labelset, scores
             FROM samples WHERE pipeline = ?1 AND time_ms >= ?2 AND time_ms <= ?3 ORDER BY id",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map(params![pid, since, until], |r| {
            let blob: Vec<u8> = r.get(8)?;
            Ok(Stored {
                id: r.get(0)?,
                epoch: r.get(1)?,
                time_ms: r.get(2)?,
                pts: r.get(3)?,
                stream_time: r.get(4)?,
                frame: r.get::<_, i64>(5)? as u64,
                embedded: r.get(6)?,
                labelset: r.get(7)?,
                scores: blob
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            })
        })
        .map_err(&err)?;
    let n = labels.labels.len();
    let mut matcher = Matcher::new(labels);
    let mut open: Vec<Option<Boundary>> = vec![None; n];
    let mut episodes = Vec::new();
    let mut scores = Scores::default();
    let mut epoch: Option<(i64, Boundary)> = None;
    let mut embedding: Option<(i64, Option<Vec<f32>>)> = None;
    let close_all = |matcher: &mut Matcher,
                     open: &mut Vec<Option<Boundary>>,
                     episodes: &mut Vec<Episode>,
                     end: Option<Boundary>| {
        for change in matcher.end_all() {
            if let Some(i) = change.index
                && let Some(start) = open[i].take()
            {
                episodes.push(Episode {
                    pipeline: pipeline.to_string(),
                    label: labels.labels[i].name.clone(),
                    start,
                    end: end.clone(),
                });
            }
        }
    };
    for row in rows {
        let s = row.map_err(&err)?;
        // A new stream: the element ended every episode where the previous one ended.
        if let Some((e, last)) = &epoch
            && *e != s.epoch
        {
            let end = epoch_end(history, *e, &mut ends)?
                .flatten()
                .unwrap_or_else(|| stream_end(last));
            close_all(&mut matcher, &mut open, &mut episodes, Some(end));
        }
        let info = match infos.get(&s.labelset) {
            Some(i) => i.clone(),
            None => {
                let text: Option<String> = conn
                    .query_row(
                        "SELECT info FROM labelsets WHERE id = ?1",
                        [s.labelset],
                        |r| r.get(0),
                    )
                    .map_err(&err)?;
                let info: Option<LabelSetInfo> = text.and_then(|t| serde_json::from_str(&t).ok());
                infos.insert(s.labelset, info.clone());
                info
            }
        };
        // Cosines of the set under test.
        scores.cosine.clear();
        let mut usable = true;
        for label in &labels.labels {
            let reused = info
                .as_ref()
                .and_then(|i| i.index_of_key(&label.key))
                .and_then(|i| s.scores.get(i).copied());
            if let Some(c) = reused {
                scores.cosine.push(c);
                report.reused += 1;
                continue;
            }
            let e = match &embedding {
                Some((id, e)) if Some(*id) == s.embedded => e.clone(),
                _ => {
                    let e = match s.embedded {
                        Some(id) => history
                            .embedding(id)?
                            .filter(|(_, fp)| fp == model)
                            .map(|(e, _)| e),
                        None => None,
                    };
                    if let Some(id) = s.embedded {
                        embedding = Some((id, e.clone()));
                    }
                    e
                }
            };
            let i = scores.cosine.len();
            match e.and_then(|e| labels.label_score(i, &e)) {
                Some(c) => {
                    scores.cosine.push(c);
                    report.rescored += 1;
                }
                None => {
                    usable = false;
                    break;
                }
            }
        }
        let here = Boundary {
            time_ms: s.time_ms,
            epoch: s.epoch,
            frame: s.frame,
            pts: s.pts,
            stream_time: s.stream_time,
            sample: Some(s.id),
            score: 0.0,
            probability: 0.0,
            reason: "sample".into(),
        };
        epoch = Some((s.epoch, here.clone()));
        if !usable {
            report.skipped += 1;
            continue;
        }
        report.samples += 1;
        labels.probabilities_into(&scores.cosine, &mut scores.probability);
        for change in matcher.update(labels, &scores) {
            let Some(i) = change.index else { continue };
            let b = Boundary {
                score: scores.cosine[i],
                probability: scores.probability[i],
                ..here.clone()
            };
            match change.transition {
                Transition::Start => open[i] = Some(b),
                Transition::End => {
                    if let Some(start) = open[i].take() {
                        episodes.push(Episode {
                            pipeline: pipeline.to_string(),
                            label: labels.labels[i].name.clone(),
                            start,
                            end: Some(b),
                        });
                    }
                }
            }
        }
    }
    // The last stream: ended if the history says where; else its episodes are still open.
    if let Some((e, last)) = epoch {
        let end = epoch_end(history, e, &mut ends)?.map(|b| b.unwrap_or_else(|| stream_end(&last)));
        close_all(&mut matcher, &mut open, &mut episodes, end);
    }
    episodes.sort_by_key(|e| (e.start.time_ms, e.label.clone()));
    Ok(episodes)
}

/// Where epoch `id` ended: `None` while it runs (or when the daemon died with it);
/// `Some(None)` when it ended without an end-of-stream event saying where (its last sample
/// stands for the end); `Some(Some(b))` from its end-of-stream events.
fn epoch_end(
    history: &History,
    id: i64,
    cache: &mut HashMap<i64, Option<Option<Boundary>>>,
) -> Result<Option<Option<Boundary>>> {
    if let Some(b) = cache.get(&id) {
        return Ok(b.clone());
    }
    // end_ms, end_pts, end_stream, end_frame
    type EndRow = (i64, Option<i64>, Option<i64>, Option<i64>);
    let row: Option<EndRow> = history
        .conn()
        .query_row(
            "SELECT end_ms, end_pts, end_stream, end_frame FROM epochs WHERE id = ?1 AND end_ms IS NOT NULL",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(sql(history.dir()))?;
    let b = row.map(|(time_ms, pts, stream_time, frame)| {
        frame.map(|frame| Boundary {
            time_ms,
            epoch: id,
            frame: frame as u64,
            pts,
            stream_time,
            sample: None,
            score: 0.0,
            probability: 0.0,
            reason: "stream end".into(),
        })
    });
    cache.insert(id, b.clone());
    Ok(b)
}

/// The episodes the live label sets produced: the stored start and end events, paired.
pub fn live_episodes(history: &History, pipeline: &str, window: &Window) -> Result<Vec<Episode>> {
    let err = sql(history.dir());
    let pid = history.pipeline_id(pipeline)?;
    let since = window.since_ms.unwrap_or(i64::MIN);
    let until = window.until_ms.unwrap_or(i64::MAX);
    let conn = history.conn();
    let mut stmt = conn
        .prepare(
            "SELECT e.label, e.state, e.reason, e.time_ms, e.epoch, e.frame, e.pts, e.stream_time,
                    e.score, e.probability,
                    (SELECT s.id FROM samples s WHERE s.pipeline = e.pipeline AND s.epoch = e.epoch
                        AND s.frame = e.frame LIMIT 1)
             FROM events e WHERE e.pipeline = ?1 AND e.time_ms >= ?2 AND e.time_ms <= ?3
             ORDER BY e.rowid",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map(params![pid, since, until], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                Boundary {
                    reason: r.get(2)?,
                    time_ms: r.get(3)?,
                    epoch: r.get(4)?,
                    frame: r.get::<_, i64>(5)? as u64,
                    pts: r.get(6)?,
                    stream_time: r.get(7)?,
                    score: r.get::<_, f64>(8)? as f32,
                    probability: r.get::<_, f64>(9)? as f32,
                    sample: r.get(10)?,
                },
            ))
        })
        .map_err(&err)?;
    let mut open: HashMap<String, Boundary> = HashMap::new();
    let mut out = Vec::new();
    for row in rows {
        let (label, state, b) = row.map_err(&err)?;
        match state.as_str() {
            "start" => {
                open.insert(label, b);
            }
            "end" => {
                if let Some(start) = open.remove(&label) {
                    out.push(Episode {
                        pipeline: pipeline.to_string(),
                        label,
                        start,
                        end: Some(b),
                    });
                }
            }
            _ => {}
        }
    }
    for (label, start) in open {
        out.push(Episode {
            pipeline: pipeline.to_string(),
            label,
            start,
            end: None,
        });
    }
    out.sort_by_key(|e| (e.start.time_ms, e.label.clone()));
    Ok(out)
}

fn overlaps(a: &Episode, b: &Episode) -> bool {
    let end = |e: &Episode| e.end.as_ref().map_or(i64::MAX, |b| b.time_ms);
    a.start.time_ms <= end(b) && b.start.time_ms <= end(a)
}

/// Pairs the new set's episodes with the live ones, label by label.
pub fn compare(pipeline: &str, new: &[Episode], live: &[Episode]) -> Vec<Compared> {
    let mut out = Vec::new();
    let mut used = vec![false; live.len()];
    let mut pending: Vec<&Episode> = Vec::new();
    for e in new {
        let exact = live
            .iter()
            .enumerate()
            .position(|(i, l)| !used[i] && l.label == e.label && l.start.same_place(&e.start));
        match exact {
            Some(i) => {
                used[i] = true;
                let l = &live[i];
                let same_end = match (&e.end, &l.end) {
                    (Some(a), Some(b)) => a.same_place(b),
                    (None, None) => true,
                    _ => false,
                };
                out.push(Compared {
                    difference: if same_end {
                        Difference::Same
                    } else {
                        Difference::Changed
                    },
                    pipeline: pipeline.to_string(),
                    label: e.label.clone(),
                    new: Some(e.clone()),
                    live: Some(l.clone()),
                });
            }
            None => pending.push(e),
        }
    }
    for e in pending {
        let near = live
            .iter()
            .enumerate()
            .position(|(i, l)| !used[i] && l.label == e.label && overlaps(l, e));
        match near {
            Some(i) => {
                used[i] = true;
                out.push(Compared {
                    difference: Difference::Changed,
                    pipeline: pipeline.to_string(),
                    label: e.label.clone(),
                    new: Some(e.clone()),
                    live: Some(live[i].clone()),
                });
            }
            None => out.push(Compared {
                difference: Difference::Added,
                pipeline: pipeline.to_string(),
                label: e.label.clone(),
                new: Some(e.clone()),
                live: None,
            }),
        }
    }
    for (i, l) in live.iter().enumerate() {
        if !used[i] {
            out.push(Compared {
                difference: Difference::Removed,
                pipeline: pipeline.to_string(),
                label: l.label.clone(),
                new: None,
                live: Some(l.clone()),
            });
        }
    }
    out.sort_by_key(|c| {
        let e = c.new.as_ref().or(c.live.as_ref());
        (e.map_or(0, |e| e.start.time_ms), c.label.clone())
    });
    out
}
