//! Review marks: a person's verdict on a sample or an event ("this was / was not a van"), kept
//! with the history and across restarts, for `clipfilterd calibrate --from-reviews`.
//!
//! A mark keeps a copy of the embedding of its sample (the start sample of an event), so that it
//! stays usable after retention deleted the sample.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use super::reader::History;
use super::record::now_ms;
use super::store::{self, sql};
use crate::error::{Error, Result};

/// A person's verdict on a label firing (or not) on a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The label was right.
    TruePositive,
    /// The label fired but should not have.
    FalsePositive,
    /// The label should have fired here and did not.
    FalseNegative,
    /// The label rightly stayed quiet here.
    TrueNegative,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::TruePositive => "true_positive",
            Verdict::FalsePositive => "false_positive",
            Verdict::FalseNegative => "false_negative",
            Verdict::TrueNegative => "true_negative",
        }
    }

    /// The label should fire on this sample (true positive, false negative): a positive example
    /// of the label for calibration; else a negative one.
    pub fn is_positive(self) -> bool {
        matches!(self, Verdict::TruePositive | Verdict::FalseNegative)
    }

    fn from_name(name: &str) -> Option<Verdict> {
        match name {
            "true_positive" => Some(Verdict::TruePositive),
            "false_positive" => Some(Verdict::FalsePositive),
            "false_negative" => Some(Verdict::FalseNegative),
            "true_negative" => Some(Verdict::TrueNegative),
            _ => None,
        }
    }
}

/// What `POST /api/review` takes: a sample id or an event id, the label and the verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewReview {
    #[serde(default)]
    pub sample: Option<i64>,
    #[serde(default)]
    pub event: Option<String>,
    pub label: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub note: Option<String>,
}

/// A stored mark.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Review {
    pub id: i64,
    /// When it was marked (ms since the Unix epoch).
    pub time_ms: i64,
    pub sample: Option<i64>,
    pub event: Option<String>,
    pub pipeline: Option<String>,
    pub label: String,
    pub verdict: Verdict,
    pub note: Option<String>,
    /// When the sample was taken.
    pub sample_time_ms: Option<i64>,
    /// Image-tower fingerprint of the model of `embedding`.
    pub model: Option<String>,
    /// The sample's image embedding (normalised, dequantized), when it was still stored.
    #[serde(skip)]
    pub embedding: Option<Vec<f32>>,
}

/// Stores a mark in the history at `dir`.
pub fn add(dir: &Path, new: &NewReview) -> Result<Review> {
    let label = new.label.trim();
    if label.is_empty() {
        return Err(Error::invalid("review", "`label` must not be empty"));
    }
    let history = History::open(dir)?;
    let err = sql(dir);
    let sample = match (new.sample, &new.event) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "review",
                "give `sample` or `event`, not both",
            ));
        }
        (None, None) => return Err(Error::invalid("review", "give a `sample` or an `event` id")),
        (Some(id), None) => {
            if history.sample(id)?.is_none() {
                return Err(Error::invalid(
                    "review",
                    format!(
                        "no sample {id} in the history (deleted by retention, or never stored)"
                    ),
                ));
            }
            Some(id)
        }
        (None, Some(event)) => {
            let found: Option<Option<i64>> = history
                .conn()
                .query_row(
                    "SELECT (SELECT s.id FROM samples s WHERE s.pipeline = e.pipeline
                                AND s.epoch = e.epoch AND s.frame = e.frame LIMIT 1)
                     FROM events e WHERE e.id = ?1",
                    [event],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&err)?;
            match found {
                None => {
                    return Err(Error::invalid(
                        "review",
                        format!("no event {event} in the history"),
                    ));
                }
                Some(sample) => sample,
            }
        }
    };
    let row = match sample {
        Some(id) => history.sample(id)?,
        None => None,
    };
    let embedding = match sample {
        Some(id) => history.embedding(id)?,
        None => None,
    };
    let pipeline = match (&row, &new.event) {
        (Some(r), _) => Some(r.pipeline.clone()),
        (None, Some(event)) => history
            .conn()
            .query_row(
                "SELECT p.name FROM events e JOIN pipelines p ON p.id = e.pipeline WHERE e.id = ?1",
                [event],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?,
        _ => None,
    };
    drop(history);
    let conn = store::open(dir, false)?;
    let time_ms = now_ms();
    let blob: Option<Vec<u8>> = embedding
        .as_ref()
        .map(|(e, _)| e.iter().flat_map(|x| x.to_le_bytes()).collect());
    conn.execute(
        "INSERT INTO reviews (time_ms, sample, event, pipeline, label, verdict, note, sample_time_ms, model, embedding)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            time_ms,
            sample,
            new.event,
            pipeline,
            label,
            new.verdict.name(),
            new.note,
            row.as_ref().map(|r| r.time_ms),
            embedding.as_ref().map(|(_, fp)| fp.clone()),
            blob,
        ],
    )
    .map_err(&err)?;
    Ok(Review {
        id: conn.last_insert_rowid(),
        time_ms,
        sample,
        event: new.event.clone(),
        pipeline,
        label: label.to_string(),
        verdict: new.verdict,
        note: new.note.clone(),
        sample_time_ms: row.map(|r| r.time_ms),
        model: embedding.as_ref().map(|(_, fp)| fp.clone()),
        embedding: embedding.map(|(e, _)| e),
    })
}

/// The marks made since `since_ms` (all when `None`), oldest first, with their embeddings: what
/// `calibrate --from-reviews` reads.
pub fn list(history: &History, since_ms: Option<i64>) -> Result<Vec<Review>> {
    let err = sql(history.dir());
    let mut stmt = history
        .conn()
        .prepare(
            "SELECT id, time_ms, sample, event, pipeline, label, verdict, note, sample_time_ms, model, embedding
             FROM reviews WHERE time_ms >= ?1 ORDER BY id",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([since_ms.unwrap_or(i64::MIN)], |r| {
            let verdict: String = r.get(6)?;
            let blob: Option<Vec<u8>> = r.get(10)?;
            Ok(Review {
                id: r.get(0)?,
                time_ms: r.get(1)?,
                sample: r.get(2)?,
                event: r.get(3)?,
                pipeline: r.get(4)?,
                label: r.get(5)?,
                // A mark this version does not know is an error, not silently another verdict.
                verdict: Verdict::from_name(&verdict).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        6,
                        rusqlite::types::Type::Text,
                        format!("unknown review verdict `{verdict}`").into(),
                    )
                })?,
                note: r.get(7)?,
                sample_time_ms: r.get(8)?,
                model: r.get(9)?,
                embedding: blob.map(|b| {
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }),
            })
        })
        .map_err(&err)?;
    rows.collect::<std::result::Result<_, _>>().map_err(&err)
}

/// The marks `calibrate --from-reviews` can use, and why the others cannot.
#[derive(Debug, Clone, Default)]
pub struct Usable {
    /// The latest mark of each (sample or event, label), with an embedding of the model asked for.
    pub marks: Vec<Review>,
    /// Marks in the window, before anything was left out.
    pub total: usize,
    /// Earlier marks of the same sample and label that a later one replaced.
    pub replaced: usize,
    /// Marks without an embedding (an event whose start sample was never stored).
    pub without_embedding: usize,
    /// Marks of samples embedded by other models: their image-tower fingerprints, with counts.
    pub other_models: Vec<(String, usize)>,
}

/// The marks made since `since_ms` whose embedding `model` (an image-tower fingerprint) made; of
/// several marks of the same sample (or event) and label, the latest counts (a person changed
/// their mind).
pub fn usable(history: &History, since_ms: Option<i64>, model: &str) -> Result<Usable> {
    let all = list(history, since_ms)?;
    let mut out = Usable {
        total: all.len(),
        ..Usable::default()
    };
    let mut latest: std::collections::HashMap<(Option<i64>, Option<String>, String), usize> =
        std::collections::HashMap::new();
    let mut kept: Vec<Option<Review>> = Vec::new();
    for r in all {
        match (&r.model, &r.embedding) {
            (Some(m), Some(_)) if m == model => {}
            (Some(m), Some(_)) => {
                match out.other_models.iter_mut().find(|(f, _)| f == m) {
                    Some((_, n)) => *n += 1,
                    None => out.other_models.push((m.clone(), 1)),
                }
                continue;
            }
            _ => {
                out.without_embedding += 1;
                continue;
            }
        }
        // A mark of an event is a mark of its start sample.
        let key = (
            r.sample,
            r.sample.is_none().then(|| r.event.clone()).flatten(),
            r.label.clone(),
        );
        if let Some(&i) = latest.get(&key) {
            kept[i] = None;
            out.replaced += 1;
        }
        latest.insert(key, kept.len());
        kept.push(Some(r));
    }
    out.marks = kept.into_iter().flatten().collect();
    Ok(out)
}
