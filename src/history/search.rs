//! Semantic search: every stored embedding of the query's model against one query vector, the
//! best hits merged into time ranges per pipeline.
//!
//! 1. The scan: the query is quantized like the rows and each row's cosine is an int8 dot
//!    product times the two scales; the segments are split between the cores; rows outside the
//!    time window or of other pipelines are skipped by their row header, whole segments by their
//!    time span.
//! 2. Hits: the rows scoring at least `min_score`, or, by default, at least halfway between the
//!    median score of the rows scanned and the best one (cosines are crowded and move from camera
//!    to camera: a fixed number would be wrong somewhere); at most [`MAX_HITS`] of them.
//! 3. Ranges: hits of one pipeline merge when they are neighbours among its stored samples (one
//!    sample below the cut between them is tolerated) and less than [`MERGE_GAP_MS`] apart; a
//!    range ends at its last hit or at the last sample the scene gate repeated it for. Ranges are
//!    ranked by their best score.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::format::{self, RowHeader};
use super::quant;
use super::reader::{History, MappedSegment};
use crate::error::{Error, Result};

/// Most hits considered for ranges.
pub const MAX_HITS: usize = 20_000;
/// Hits further apart than this never merge.
pub const MERGE_GAP_MS: i64 = 60_000;
/// Rows per unit of work handed to a thread.
const CHUNK_ROWS: usize = 8192;
/// Bins of the score histogram (median estimate) over [-1, 1].
const BINS: usize = 4096;

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query {
    /// Normalised query embedding.
    pub vector: Vec<f32>,
    /// Image-tower fingerprint of the model that made `vector`.
    pub model: String,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only these pipelines (`None`: all).
    pub pipelines: Option<Vec<String>>,
    /// Ranges to return.
    pub top: usize,
    /// Hits are rows scoring at least this (`None`: automatic, see the module documentation).
    pub min_score: Option<f32>,
    /// Threads for the scan (0: one per core).
    pub threads: usize,
}

/// Consecutive hits of one pipeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Range {
    pub pipeline: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub best_score: f32,
    /// The best-scoring sample.
    pub best_sample: i64,
    pub best_time_ms: i64,
    /// Stream time (ns) of the best sample, when known.
    pub best_stream_time: Option<i64>,
    /// Stream times (ns) of the first and last hit.
    pub start_stream_time: Option<i64>,
    pub end_stream_time: Option<i64>,
    /// Hits in the range.
    pub hits: usize,
}

/// A search's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    pub ranges: Vec<Range>,
    /// Rows scored.
    pub scanned: u64,
    /// Stored embeddings of other models (not comparable with the query).
    pub other_models: u64,
    /// Score a row needed to be a hit.
    pub cutoff: f32,
    #[serde(serialize_with = "as_ms")]
    pub took: Duration,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

#[derive(Debug, Clone, Copy)]
struct Hit {
    score: f32,
    sample: i64,
    time_ms: i64,
    seq: u32,
    pipeline: u32,
}

/// Best hits and a histogram of every score, from one thread.
struct Partial {
    hits: Vec<Hit>,
    histogram: Vec<u32>,
    best: f32,
    scanned: u64,
    /// Scores below this cannot make the kept hits any more.
    floor: f32,
}

impl Partial {
    fn new() -> Partial {
        Partial {
            hits: Vec::new(),
            histogram: vec![0; BINS],
            best: f32::NEG_INFINITY,
            scanned: 0,
            floor: f32::NEG_INFINITY,
        }
    }

    /// Keeps the best `keep` hits (in one pass once twice as many piled up).
    fn trim(&mut self, keep: usize) {
        if self.hits.len() > keep {
            self.hits
                .select_nth_unstable_by(keep, |a, b| b.score.total_cmp(&a.score));
            self.hits.truncate(keep);
            self.floor = self.hits.iter().fold(f32::INFINITY, |m, h| m.min(h.score));
        }
    }
}

fn bin(score: f32) -> usize {
    (((score + 1.0) * 0.5 * BINS as f32) as isize).clamp(0, BINS as isize - 1) as usize
}

/// Scans the history for `query` (see the module documentation).
pub fn search(history: &History, query: &Query) -> Result<Found> {
    let started = Instant::now();
    let model = history.model(&query.model)?.ok_or_else(|| {
        Error::invalid(
            "history",
            format!(
                "{}: no samples were embedded by this model (the history holds samples of: {})",
                history.dir().display(),
                history
                    .models()
                    .unwrap_or_default()
                    .iter()
                    .map(|m| format!("{} {}", m.dir, m.variant))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    if query.vector.len() != model.dim {
        return Err(Error::invalid(
            "query",
            format!(
                "embedding of width {} for stored embeddings of width {}",
                query.vector.len(),
                model.dim
            ),
        ));
    }
    let pipelines: Option<Vec<u32>> = match &query.pipelines {
        Some(names) => Some(
            names
                .iter()
                .map(|n| history.pipeline_id(n).map(|id| id as u32))
                .collect::<Result<_>>()?,
        ),
        None => None,
    };
    let since = query
        .since_ms
        .unwrap_or(i64::MIN)
        .max(history.horizon_ms()?);
    let until = query.until_ms.unwrap_or(i64::MAX);
    let segments: Vec<MappedSegment> = history
        .segments(model.id)?
        .into_iter()
        .filter(|s| s.last_ms >= since && s.first_ms <= until)
        .collect();
    let (all, ours) = history.counts(Some(model.id))?;
    let mut q = Vec::new();
    let q_scale = quant::quantize(&query.vector, &mut q);

    // Units of work: (segment, first row, rows).
    let units: Vec<(usize, usize, usize)> = segments
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            (0..s.rows)
                .step_by(CHUNK_ROWS)
                .map(move |r| (i, r, CHUNK_ROWS.min(s.rows - r)))
        })
        .collect();
    let threads = match query.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, units.len().max(1));
    let next = AtomicUsize::new(0);
    let keep = MAX_HITS;
    let scan = || {
        let mut part = Partial::new();
        loop {
            let u = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(si, first, n)) = units.get(u) else {
                break;
            };
            let seg = &segments[si];
            let stride = format::row_size(seg.dim);
            let bytes = &seg.rows_bytes()[first * stride..(first + n) * stride];
            let whole = seg.first_ms >= since && seg.last_ms <= until;
            quant::dot_rows(bytes, stride, format::ROW_HEADER, &q, |i, dot| {
                let row = &bytes[i * stride..(i + 1) * stride];
                if !whole {
                    let t = RowHeader::time_of(row);
                    if t < since || t > until {
                        return;
                    }
                }
                let h = RowHeader::decode(row);
                if let Some(p) = &pipelines
                    && !p.contains(&h.pipeline)
                {
                    return;
                }
                let score = dot as f32 * h.scale * q_scale;
                part.scanned += 1;
                part.histogram[bin(score)] += 1;
                part.best = part.best.max(score);
                if score < part.floor {
                    return;
                }
                part.hits.push(Hit {
                    score,
                    sample: h.sample,
                    time_ms: h.time_ms,
                    seq: h.seq,
                    pipeline: h.pipeline,
                });
                if part.hits.len() >= keep * 2 {
                    part.trim(keep);
                }
            });
        }
        part.trim(keep);
        part
    };
    let parts: Vec<Partial> = if threads == 1 {
        vec![scan()]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(scan)).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Partial::new()))
                .collect()
        })
    };
    let mut histogram = vec![0u64; BINS];
    let mut hits = Vec::new();
    let mut scanned = 0;
    let mut best = f32::NEG_INFINITY;
    for p in parts {
        for (h, n) in histogram.iter_mut().zip(&p.histogram) {
            *h += u64::from(*n);
        }
        hits.extend(p.hits);
        scanned += p.scanned;
        best = best.max(p.best);
    }
    let median = {
        let half = scanned.div_ceil(2);
        let mut seen = 0;
        let mut m = 0.0;
        for (i, n) in histogram.iter().enumerate() {
            seen += n;
            if seen >= half {
                m = (i as f32 + 0.5) / BINS as f32 * 2.0 - 1.0;
                break;
            }
        }
        // A bin's centre can lie above the best score in it: when most rows score the best
        // (one sample, or a scene that matches most of the time), the cut must still let the
        // best through.
        m.min(best)
    };
    let cutoff = query.min_score.unwrap_or_else(|| {
        if scanned == 0 {
            0.0
        } else {
            (best + median) / 2.0
        }
    });
    hits.retain(|h| h.score >= cutoff);
    if hits.len() > keep {
        hits.select_nth_unstable_by(keep, |a, b| b.score.total_cmp(&a.score));
        hits.truncate(keep);
    }
    let mut ranges = merge(&mut hits);
    ranges.sort_by(|a, b| b.best.score.total_cmp(&a.best.score));
    ranges.truncate(query.top.max(1));
    let names: HashMap<i64, String> = history.pipelines()?.into_iter().collect();
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let end = history
            .last_repeat_ms(r.last.sample)?
            .map_or(r.last.time_ms, |t| t.max(r.last.time_ms));
        let best = history.sample(r.best.sample)?;
        let first = history.sample(r.first.sample)?;
        let last = history.sample(r.last.sample)?;
        out.push(Range {
            pipeline: names
                .get(&i64::from(r.best.pipeline))
                .cloned()
                .unwrap_or_default(),
            start_ms: r.first.time_ms,
            end_ms: end,
            best_score: r.best.score,
            best_sample: r.best.sample,
            best_time_ms: r.best.time_ms,
            best_stream_time: best.and_then(|b| b.stream_time),
            start_stream_time: first.and_then(|b| b.stream_time),
            end_stream_time: last.and_then(|b| b.stream_time),
            hits: r.hits,
        });
    }
    Ok(Found {
        ranges: out,
        scanned,
        other_models: all - ours,
        cutoff,
        took: started.elapsed(),
    })
}

struct Run {
    first: Hit,
    last: Hit,
    best: Hit,
    hits: usize,
}

/// Merges hits into runs of neighbours per pipeline.
fn merge(hits: &mut [Hit]) -> Vec<Run> {
    hits.sort_by_key(|h| (h.pipeline, h.seq));
    let mut runs: Vec<Run> = Vec::new();
    for h in hits.iter().copied() {
        if let Some(r) = runs.last_mut()
            && r.last.pipeline == h.pipeline
            && h.seq.wrapping_sub(r.last.seq) <= 2
            && h.time_ms - r.last.time_ms <= MERGE_GAP_MS
        {
            r.last = h;
            r.hits += 1;
            if h.score > r.best.score {
                r.best = h;
            }
            continue;
        }
        runs.push(Run {
            first: h,
            last: h,
            best: h,
            hits: 1,
        });
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(pipeline: u32, seq: u32, time_ms: i64, score: f32) -> Hit {
        Hit {
            score,
            sample: i64::from(seq) + 1000 * i64::from(pipeline),
            time_ms,
            seq,
            pipeline,
        }
    }

    #[test]
    fn neighbours_merge_per_pipeline() {
        let mut hits = vec![
            hit(1, 10, 5000, 0.3),
            hit(1, 11, 5500, 0.35),
            hit(2, 11, 5500, 0.31),
            hit(1, 13, 6500, 0.32),
            hit(1, 20, 10_000, 0.4),
            hit(1, 21, 200_000, 0.4),
        ];
        let runs = merge(&mut hits);
        let spans: Vec<(u32, i64, i64, usize)> = runs
            .iter()
            .map(|r| (r.first.pipeline, r.first.time_ms, r.last.time_ms, r.hits))
            .collect();
        assert_eq!(
            spans,
            vec![
                (1, 5000, 6500, 3),
                (1, 10_000, 10_000, 1),
                (1, 200_000, 200_000, 1),
                (2, 5500, 5500, 1)
            ]
        );
        assert_eq!(runs[0].best.seq, 11);
    }
}
