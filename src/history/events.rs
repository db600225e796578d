//! The events and samples of a history as the web console lists them: events (each start with
//! its end and the latest review mark), the samples around a time with their scores, a
//! pipeline's latest thumbnail.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::reader::History;
use super::store::sql;
use crate::error::Result;

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub pipeline: Option<String>,
    pub label: Option<String>,
    /// Starts at or after (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Starts at or before.
    pub until_ms: Option<i64>,
    pub limit: usize,
}

/// One match: its start event, its end when there is one, the latest review mark.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventRow {
    /// The start event's id.
    pub id: String,
    pub pipeline: String,
    pub label: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub score: f32,
    pub probability: f32,
    /// Stream time of the start, in seconds.
    pub stream_time: Option<f64>,
    /// Whether a snapshot was saved.
    pub has_snapshot: bool,
    /// The latest review mark's verdict (`true_positive`, ...).
    pub review: Option<String>,
}

/// Matches newest first.
pub fn list(history: &History, filter: &EventFilter) -> Result<Vec<EventRow>> {
    let err = sql(history.dir());
    let mut stmt = history
        .conn()
        .prepare(
            "SELECT e.id, p.name, e.label, e.time_ms,
                    (SELECT min(x.time_ms) FROM events x WHERE x.pipeline = e.pipeline
                        AND x.epoch = e.epoch AND x.label = e.label AND x.state = 'end'
                        AND x.time_ms >= e.time_ms),
                    e.score, e.probability, e.stream_time, e.snapshot IS NOT NULL,
                    (SELECT r.verdict FROM reviews r WHERE r.event = e.id ORDER BY r.id DESC LIMIT 1)
             FROM events e JOIN pipelines p ON p.id = e.pipeline
             WHERE e.state = 'start'
               AND (?1 IS NULL OR p.name = ?1) AND (?2 IS NULL OR e.label = ?2)
               AND (?3 IS NULL OR e.time_ms >= ?3) AND (?4 IS NULL OR e.time_ms <= ?4)
             ORDER BY e.time_ms DESC, e.id DESC LIMIT ?5",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map(
            params![
                filter.pipeline,
                filter.label,
                filter.since_ms,
                filter.until_ms,
                filter.limit as i64
            ],
            |r| {
                Ok(EventRow {
                    id: r.get(0)?,
                    pipeline: r.get(1)?,
                    label: r.get(2)?,
                    start_ms: r.get(3)?,
                    end_ms: r.get(4)?,
                    score: r.get::<_, f64>(5)? as f32,
                    probability: r.get::<_, f64>(6)? as f32,
                    stream_time: r.get::<_, Option<i64>>(7)?.map(|t| t as f64 / 1e9),
                    has_snapshot: r.get(8)?,
                    review: r.get(9)?,
                })
            },
        )
        .map_err(&err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
}

/// The snapshot file an event recorded, if any.
pub fn snapshot(history: &History, id: &str) -> Result<Option<String>> {
    let err = sql(history.dir());
    Ok(history
        .conn()
        .query_row("SELECT snapshot FROM events WHERE id = ?1", [id], |r| {
            r.get::<_, Option<String>>(0)
        })
        .optional()
        .map_err(&err)?
        .flatten())
}

/// The pipeline and time of event `id`.
pub fn event_time(history: &History, id: &str) -> Result<Option<(String, i64)>> {
    let err = sql(history.dir());
    history
        .conn()
        .query_row(
            "SELECT p.name, e.time_ms FROM events e JOIN pipelines p ON p.id = e.pipeline
             WHERE e.id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(&err)
}

/// A sample with the cosines of its labels.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoredSample {
    pub id: i64,
    pub time_ms: i64,
    pub has_thumbnail: bool,
    /// Label names, in the order of `scores` (empty when the label set is not known).
    pub labels: Vec<String>,
    pub scores: Vec<f32>,
}

/// The samples of `pipeline` from `from_ms` to `to_ms`, oldest first, at most `limit`.
pub fn samples(
    history: &History,
    pipeline: &str,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Vec<ScoredSample>> {
    let err = sql(history.dir());
    let mut stmt = history
        .conn()
        .prepare(
            "SELECT s.id, s.time_ms, s.thumb_len IS NOT NULL AND s.segment IS NOT NULL,
                    s.scores, l.info
             FROM samples s JOIN pipelines p ON p.id = s.pipeline
             LEFT JOIN labelsets l ON l.id = s.labelset
             WHERE p.name = ?1 AND s.time_ms >= ?2 AND s.time_ms <= ?3
             ORDER BY s.time_ms, s.id LIMIT ?4",
        )
        .map_err(&err)?;
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    let rows = stmt
        .query_map(params![pipeline, from_ms, to_ms, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(&err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, time_ms, has_thumbnail, blob, info) = row.map_err(&err)?;
        let labels = match info {
            Some(json) => names
                .entry(json)
                .or_insert_with_key(|json| {
                    serde_json::from_str::<clipfilter::labels::LabelSetInfo>(json)
                        .map(|i| i.labels.into_iter().map(|l| l.name).collect())
                        .unwrap_or_default()
                })
                .clone(),
            None => Vec::new(),
        };
        let scores = blob
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(ScoredSample {
            id,
            time_ms,
            has_thumbnail,
            labels,
            scores,
        });
    }
    Ok(out)
}

/// The newest sample of `pipeline` with a thumbnail.
pub fn latest_thumbnail(history: &History, pipeline: &str) -> Result<Option<i64>> {
    let err = sql(history.dir());
    history
        .conn()
        .query_row(
            "SELECT s.id FROM samples s JOIN pipelines p ON p.id = s.pipeline
             WHERE p.name = ?1 AND s.segment IS NOT NULL AND s.thumb_len IS NOT NULL
             ORDER BY s.time_ms DESC, s.id DESC LIMIT 1",
            [pipeline],
            |r| r.get(0),
        )
        .optional()
        .map_err(&err)
}
