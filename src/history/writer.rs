//! Writing a history: batches of records, each in one transaction, and retention.
//!
//! A batch appends its embedding rows and thumbnails to the open segment's files, syncs them
//! (`fdatasync`), then commits the metadata (samples, events, the segment's new committed size)
//! in one SQLite transaction. A crash (`kill -9`, power cut) between the two leaves bytes past
//! the committed size, which readers never look at and the next writer cuts off; the database
//! itself is never half-written (SQLite, WAL). A failed batch (full disk, read-only folder) is
//! rolled back the same way and leaves the writer as it was before the batch.
//!
//! Retention moves a horizon forward: everything older than `keep`, and the oldest segments
//! while the folder is over `max_bytes`, is deleted (files, rows, events); readers ignore rows
//! older than the horizon that a segment still holds.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::format::{self, RowHeader};
use super::quant;
use super::record::{EventRecord, ModelInfo, Record, SampleRecord, now_ms};
use super::store::{self, sql};
use crate::error::{Error, Result};

/// How much a history may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Samples older than this are deleted (`None`: kept until `max_bytes` needs the room).
    pub keep: Option<Duration>,
    /// Bound on the folder's bytes (segments, thumbnails and database).
    pub max_bytes: u64,
}

impl Limits {
    /// Size at which a segment is closed and the next one started: small against `max_bytes`,
    /// so that deleting the oldest segment frees little more than needed.
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 32).clamp(32 << 10, 64 << 20)
    }
}

/// What a history holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub samples: u64,
    pub bytes: u64,
    /// Wall-clock ms of the oldest sample kept.
    pub oldest_ms: Option<i64>,
}

/// The segment samples are appended to.
struct Segment {
    id: i64,
    dim: usize,
    emb: File,
    thumb: File,
    rows: i64,
    emb_bytes: u64,
    thumb_bytes: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

/// What a batch changed, applied to the writer only once committed.
#[derive(Default)]
struct Staged {
    seq: HashMap<i64, u32>,
    last_inferred: HashMap<i64, i64>,
    pipelines: HashMap<String, i64>,
    labelsets: HashMap<(i64, String), i64>,
    samples: u64,
}

/// What a segment held before a batch: id, rows, bytes of embeddings and thumbnails, first and
/// last time.
type Committed = (i64, i64, u64, u64, Option<i64>, Option<i64>);

/// Bytes appended to one segment by the batch in progress.
struct Appended {
    id: i64,
    emb: Vec<u8>,
    thumb: Vec<u8>,
}

/// The only writer of a history folder (the daemon's recorder thread).
pub struct Writer {
    dir: PathBuf,
    conn: Connection,
    limits: Limits,
    model: Option<(i64, usize)>,
    segment: Option<Segment>,
    pipelines: HashMap<String, i64>,
    seq: HashMap<i64, u32>,
    labelsets: HashMap<(i64, String), i64>,
    last_inferred: HashMap<i64, i64>,
    next_sample: i64,
    samples: u64,
    horizon_ms: i64,
    quantized: Vec<i8>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

impl Writer {
    /// Opens (creating) the history in `dir`, cutting off what a crash left uncommitted.
    pub fn open(dir: &Path, limits: Limits) -> Result<Writer> {
        let conn = store::open(dir, true)?;
        let err = sql(dir);
        // Segment files past their committed size, or that no committed row names.
        let mut known = Vec::new();
        {
            let mut stmt = conn
                .prepare("SELECT id, emb_bytes, thumb_bytes FROM segments")
                .map_err(&err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(&err)?;
            for row in rows {
                known.push(row.map_err(&err)?);
            }
        }
        for (id, emb, thumb) in &known {
            for (path, len) in [
                (format::embedding_path(dir, *id), *emb),
                (format::thumbnail_path(dir, *id), *thumb),
            ] {
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.len() > len as u64
                {
                    tracing::info!(file = %path.display(), committed = len, found = meta.len(), "cutting off an uncommitted tail");
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(len as u64))
                        .map_err(io(&path))?;
                }
            }
        }
        let seg_dir = dir.join(format::SEGMENTS);
        for entry in std::fs::read_dir(&seg_dir).map_err(io(&seg_dir))? {
            let entry = entry.map_err(io(&seg_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.split('.').next().and_then(|n| n.parse::<i64>().ok());
            if id.is_some_and(|id| !known.iter().any(|(k, _, _)| *k == id)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut pipelines = HashMap::new();
        let mut seq = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT id, name, next_seq FROM pipelines")
                .map_err(&err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(&err)?;
            for row in rows {
                let (id, name, next) = row.map_err(&err)?;
                pipelines.insert(name, id);
                seq.insert(id, next as u32);
            }
        }
        let next_sample: i64 = conn
            .query_row("SELECT coalesce(max(id), 0) + 1 FROM samples", [], |r| {
                r.get(0)
            })
            .map_err(&err)?;
        let samples: i64 = conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .map_err(&err)?;
        let horizon_ms = store::info(&conn, dir, "horizon_ms")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MIN);
        Ok(Writer {
            dir: dir.to_path_buf(),
            conn,
            limits,
            model: None,
            segment: None,
            pipelines,
            seq,
            labelsets: HashMap::new(),
            last_inferred: HashMap::new(),
            next_sample: next_sample.max(1),
            samples: samples as u64,
            horizon_ms,
            quantized: Vec::new(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes the bounds (applied at the next [`Writer::retain`]).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Writes `records` in one transaction (see the module documentation); on error nothing of
    /// the batch is kept and the writer is as before.
    pub fn write(&mut self, records: &[Record]) -> Result<()> {
        let mut staged = Staged::default();
        let mut appended: Vec<Appended> = Vec::new();
        let before = self.segment_state();
        let result = self.write_inner(records, &mut staged, &mut appended);
        match result {
            Ok(()) => {
                self.seq.extend(staged.seq);
                self.last_inferred.extend(staged.last_inferred);
                self.pipelines.extend(staged.pipelines);
                self.labelsets.extend(staged.labelsets);
                self.samples += staged.samples;
                Ok(())
            }
            Err(e) => {
                self.undo(before, &appended);
                Err(e)
            }
        }
    }

    fn segment_state(&self) -> Option<Committed> {
        self.segment.as_ref().map(|s| {
            (
                s.id,
                s.rows,
                s.emb_bytes,
                s.thumb_bytes,
                s.first_ms,
                s.last_ms,
            )
        })
    }

    /// Puts the files back to their committed sizes after a failed batch.
    fn undo(&mut self, before: Option<Committed>, appended: &[Appended]) {
        for a in appended {
            let committed = match before {
                Some((id, _, emb, thumb, _, _)) if id == a.id => Some((emb, thumb)),
                _ => None,
            };
            let (emb_path, thumb_path) = (
                format::embedding_path(&self.dir, a.id),
                format::thumbnail_path(&self.dir, a.id),
            );
            match committed {
                Some((emb, thumb)) => {
                    for (path, len) in [(emb_path, emb), (thumb_path, thumb)] {
                        let _ = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .and_then(|f| f.set_len(len));
                    }
                }
                // A segment the failed batch created.
                None => {
                    let _ = std::fs::remove_file(emb_path);
                    let _ = std::fs::remove_file(thumb_path);
                }
            }
        }
        match (before, self.segment.as_mut()) {
            (Some((id, rows, emb, thumb, first, last)), Some(s)) if s.id == id => {
                s.rows = rows;
                s.emb_bytes = emb;
                s.thumb_bytes = thumb;
                s.first_ms = first;
                s.last_ms = last;
            }
            // The segment the batch started is gone; the next batch starts another one.
            _ => self.segment = None,
        }
    }

    fn write_inner(
        &mut self,
        records: &[Record],
        staged: &mut Staged,
        appended: &mut Vec<Appended>,
    ) -> Result<()> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        // BEGIN/COMMIT by hand: the helpers below use the connection through `self`.
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(&err)?;
        let result = self.write_records(records, staged, appended);
        match result {
            Ok(next_sample) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => {
                    self.next_sample = next_sample;
                    Ok(())
                }
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(err(e))
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn write_records(
        &mut self,
        records: &[Record],
        staged: &mut Staged,
        appended: &mut Vec<Appended>,
    ) -> Result<i64> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        let mut next_sample = self.next_sample;
        for record in records {
            match record {
                Record::Model(m) => {
                    let id = upsert_model(&self.conn, &dir, m)?;
                    if self.model.map(|(i, _)| i) != Some(id) {
                        self.model = Some((id, m.dim));
                        // Rows of one segment come from one model.
                        if self.segment.is_some() {
                            flush_segment(&self.conn, &dir, self.segment.as_mut(), appended)?;
                            self.segment = None;
                        }
                    }
                }
                Record::LabelSet {
                    pipeline,
                    version,
                    info,
                } => {
                    let pid = self.pipeline_id(pipeline, staged)?;
                    self.conn.execute(
                        "INSERT INTO labelsets (pipeline, version, info, first_ms) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (pipeline, version) DO UPDATE SET info = coalesce(labelsets.info, excluded.info)",
                        params![pid, version, info, now_ms()],
                    )
                    .map_err(&err)?;
                }
                Record::Epoch {
                    pipeline,
                    id,
                    start_ms,
                } => {
                    let pid = self.pipeline_id(pipeline, staged)?;
                    self.conn.execute(
                        "INSERT OR IGNORE INTO epochs (id, pipeline, start_ms) VALUES (?1, ?2, ?3)",
                        params![id, pid, start_ms],
                    )
                    .map_err(&err)?;
                }
                Record::EpochEnd { id, end_ms } => {
                    self.conn
                        .execute(
                            "UPDATE epochs SET end_ms = coalesce(end_ms, ?2) WHERE id = ?1",
                            params![id, end_ms],
                        )
                        .map_err(&err)?;
                }
                Record::Sample(s) => {
                    let id = next_sample;
                    next_sample += 1;
                    self.sample(s, id, staged, appended)?;
                }
                Record::Event(e) => self.event(e, staged)?,
            }
        }
        flush_segment(&self.conn, &dir, self.segment.as_mut(), appended)?;
        for (pid, seq) in &staged.seq {
            self.conn
                .execute(
                    "UPDATE pipelines SET next_seq = ?1 WHERE id = ?2",
                    params![i64::from(*seq), pid],
                )
                .map_err(&err)?;
        }
        Ok(next_sample)
    }

    fn pipeline_id(&self, name: &str, staged: &mut Staged) -> Result<i64> {
        if let Some(id) = self
            .pipelines
            .get(name)
            .or_else(|| staged.pipelines.get(name))
        {
            return Ok(*id);
        }
        let dir = self.dir.clone();
        let err = sql(&dir);
        self.conn
            .execute("INSERT OR IGNORE INTO pipelines (name) VALUES (?1)", [name])
            .map_err(&err)?;
        let id: i64 = self
            .conn
            .query_row("SELECT id FROM pipelines WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .map_err(&err)?;
        staged.pipelines.insert(name.to_string(), id);
        Ok(id)
    }

    fn labelset_id(&self, pid: i64, version: &str, staged: &mut Staged) -> Result<i64> {
        let key = (pid, version.to_string());
        if let Some(id) = self
            .labelsets
            .get(&key)
            .or_else(|| staged.labelsets.get(&key))
        {
            return Ok(*id);
        }
        let dir = self.dir.clone();
        let err = sql(&dir);
        self.conn.execute(
            "INSERT OR IGNORE INTO labelsets (pipeline, version, info, first_ms) VALUES (?1, ?2, NULL, ?3)",
            params![pid, version, now_ms()],
        )
        .map_err(&err)?;
        let id: i64 = self
            .conn
            .query_row(
                "SELECT id FROM labelsets WHERE pipeline = ?1 AND version = ?2",
                params![pid, version],
                |r| r.get(0),
            )
            .map_err(&err)?;
        staged.labelsets.insert(key, id);
        Ok(id)
    }

    fn sample(
        &mut self,
        s: &SampleRecord,
        id: i64,
        staged: &mut Staged,
        appended: &mut Vec<Appended>,
    ) -> Result<()> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        let pid = self.pipeline_id(&s.pipeline, staged)?;
        let labelset = self.labelset_id(pid, &s.labels_version, staged)?;
        let mut place: Option<(i64, i64)> = None;
        let mut thumb: Option<(i64, i64)> = None;
        let mut repeat_of = None;
        match &s.embedding {
            Some(e) => {
                let Some((_, dim)) = self.model else {
                    return Err(Error::invalid(
                        "history",
                        "a sample came before its model was recorded",
                    ));
                };
                if e.len() != dim {
                    return Err(Error::invalid(
                        "history",
                        format!("embedding of width {} for a model of width {dim}", e.len()),
                    ));
                }
                let limit = self.limits.segment_bytes();
                let full = self
                    .segment
                    .as_ref()
                    .is_some_and(|seg| seg.emb_bytes + seg.thumb_bytes >= limit);
                if full {
                    flush_segment(&self.conn, &self.dir, self.segment.as_mut(), appended)?;
                    self.segment = None;
                }
                if self.segment.is_none() {
                    self.segment = Some(self.new_segment(appended)?);
                }
                let seg = self.segment.as_mut().expect("opened above");
                if !appended.iter().any(|a| a.id == seg.id) {
                    appended.push(Appended {
                        id: seg.id,
                        emb: Vec::new(),
                        thumb: Vec::new(),
                    });
                }
                let a = appended
                    .iter_mut()
                    .find(|a| a.id == seg.id)
                    .expect("pushed above");
                let seq_now = staged
                    .seq
                    .get(&pid)
                    .or_else(|| self.seq.get(&pid))
                    .copied()
                    .unwrap_or(0);
                staged.seq.insert(pid, seq_now.wrapping_add(1));
                let scale = quant::quantize(e, &mut self.quantized);
                RowHeader {
                    sample: id,
                    time_ms: s.time_ms,
                    scale,
                    seq: seq_now,
                    pipeline: pid as u32,
                }
                .encode(&self.quantized, &mut a.emb);
                place = Some((seg.id, seg.rows));
                seg.rows += 1;
                seg.emb_bytes += format::row_size(dim) as u64;
                if let Some(jpeg) = &s.thumbnail {
                    thumb = Some((seg.thumb_bytes as i64, jpeg.len() as i64));
                    a.thumb.extend_from_slice(jpeg);
                    seg.thumb_bytes += jpeg.len() as u64;
                }
                seg.first_ms = Some(seg.first_ms.map_or(s.time_ms, |t| t.min(s.time_ms)));
                seg.last_ms = Some(seg.last_ms.map_or(s.time_ms, |t| t.max(s.time_ms)));
                staged.last_inferred.insert(pid, id);
            }
            None => {
                repeat_of = staged
                    .last_inferred
                    .get(&pid)
                    .or_else(|| self.last_inferred.get(&pid))
                    .copied();
            }
        }
        let scores: Vec<u8> = s.scores.iter().flat_map(|x| x.to_le_bytes()).collect();
        let crop = s.crop.as_ref();
        self.conn.prepare_cached(
            "INSERT INTO samples (id, pipeline, epoch, time_ms, pts, stream_time, running_time, frame,
                 segment, row, repeat_of, labelset, scores, thumb_off, thumb_len,
                 crop, crop_x, crop_y, crop_w, crop_h)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                id,
                pid,
                s.epoch,
                s.time_ms,
                s.pts,
                s.stream_time,
                s.running_time,
                s.frame as i64,
                place.map(|p| p.0),
                place.map(|p| p.1),
                repeat_of,
                labelset,
                scores,
                thumb.map(|t| t.0),
                thumb.map(|t| t.1),
                crop.map(|c| c.name.as_str()),
                crop.map(|c| f64::from(c.x)),
                crop.map(|c| f64::from(c.y)),
                crop.map(|c| f64::from(c.w)),
                crop.map(|c| f64::from(c.h)),
            ])
        })
        .map_err(&err)?;
        staged.samples += 1;
        Ok(())
    }

    fn event(&self, e: &EventRecord, staged: &mut Staged) -> Result<()> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        let pid = self.pipeline_id(&e.pipeline, staged)?;
        self.conn.prepare_cached(
            "INSERT OR IGNORE INTO events (id, pipeline, epoch, label, state, reason, time_ms, pts,
                 stream_time, running_time, frame, score, probability, snapshot)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                e.id,
                pid,
                e.epoch,
                e.label,
                e.state,
                e.reason,
                e.time_ms,
                e.pts,
                e.stream_time,
                e.running_time,
                e.frame as i64,
                f64::from(e.score),
                f64::from(e.probability),
                e.snapshot,
            ])
        })
        .map_err(&err)?;
        if e.reason != "sample" && e.reason != "reload" {
            // Where the stream ended: what ends a backtest's open episodes at this epoch's end.
            self.conn.execute(
                "UPDATE epochs SET end_ms = ?2, end_pts = ?3, end_stream = ?4, end_running = ?5, end_frame = ?6
                 WHERE id = ?1",
                params![e.epoch, e.time_ms, e.pts, e.stream_time, e.running_time, e.frame as i64],
            )
            .map_err(&err)?;
        }
        Ok(())
    }

    fn new_segment(&self, appended: &mut Vec<Appended>) -> Result<Segment> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        let (model, dim) = self.model.ok_or_else(|| {
            Error::invalid("history", "a sample came before its model was recorded")
        })?;
        self.conn.execute(
            "INSERT INTO segments (model, rows, emb_bytes, thumb_bytes, created_ms) VALUES (?1, 0, ?2, 0, ?3)",
            params![model, format::HEADER as i64, now_ms()],
        )
        .map_err(&err)?;
        let id = self.conn.last_insert_rowid();
        let emb_path = format::embedding_path(&self.dir, id);
        let thumb_path = format::thumbnail_path(&self.dir, id);
        // Append mode: after a failed batch cuts a file back, the next write goes to its end.
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(p)
                .and_then(|f| {
                    drop(f);
                    OpenOptions::new().append(true).open(p)
                })
                .map_err(io(p))
        };
        let emb = open(&emb_path)?;
        let thumb = open(&thumb_path)?;
        appended.push(Appended {
            id,
            emb: format::header(dim).to_vec(),
            thumb: Vec::new(),
        });
        Ok(Segment {
            id,
            dim,
            emb,
            thumb,
            rows: 0,
            emb_bytes: format::HEADER as u64,
            thumb_bytes: 0,
            first_ms: None,
            last_ms: None,
        })
    }

    /// Applies the limits at `now_ms`: moves the horizon past what is too old and, while the
    /// folder is over `max_bytes`, past the oldest segment; deletes what is behind it.
    pub fn retain(&mut self, now_ms: i64) -> Result<Usage> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        if let Some(keep) = self.limits.keep {
            let cutoff = now_ms - keep.as_millis() as i64;
            if cutoff > self.horizon_ms {
                self.advance(cutoff)?;
            }
        }
        let mut guard = 0;
        while self.bytes()? > self.limits.max_bytes && guard < 10_000 {
            guard += 1;
            let oldest: Option<(i64, Option<i64>)> = self
                .conn
                .query_row(
                    "SELECT id, last_ms FROM segments ORDER BY id LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(&err)?;
            let Some((id, last)) = oldest else { break };
            if self.segment.as_ref().is_some_and(|s| s.id == id) {
                self.segment = None;
            }
            let to = last.map_or(self.horizon_ms, |l| l + 1).max(self.horizon_ms);
            self.drop_segment(id)?;
            self.advance(to)?;
        }
        self.usage()
    }

    /// Deletes what is older than `horizon` (and segments wholly behind it).
    fn advance(&mut self, horizon: i64) -> Result<()> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        let old: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM segments WHERE last_ms < ?1")
                .map_err(&err)?;
            stmt.query_map([horizon], |r| r.get(0))
                .map_err(&err)?
                .collect::<std::result::Result<_, _>>()
                .map_err(&err)?
        };
        for id in old {
            if self.segment.as_ref().is_some_and(|s| s.id == id) {
                self.segment = None;
            }
            self.drop_segment(id)?;
        }
        let tx = self.conn.transaction().map_err(&err)?;
        let deleted = tx
            .execute("DELETE FROM samples WHERE time_ms < ?1", [horizon])
            .map_err(&err)?;
        tx.execute("DELETE FROM events WHERE time_ms < ?1", [horizon])
            .map_err(&err)?;
        tx.execute(
            "DELETE FROM epochs WHERE end_ms IS NOT NULL AND end_ms < ?1",
            [horizon],
        )
        .map_err(&err)?;
        tx.execute(
            "INSERT OR REPLACE INTO info (key, value) VALUES ('horizon_ms', ?1)",
            [horizon.to_string()],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        self.samples = self.samples.saturating_sub(deleted as u64);
        self.horizon_ms = horizon;
        self.conn
            .execute_batch("PRAGMA incremental_vacuum;")
            .map_err(&err)?;
        // The WAL grows with big deletions; give it back (when no reader holds it).
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(())
    }

    fn drop_segment(&mut self, id: i64) -> Result<()> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        self.conn
            .execute("DELETE FROM segments WHERE id = ?1", [id])
            .map_err(&err)?;
        self.conn
            .execute(
                "UPDATE samples SET segment = NULL, row = NULL, thumb_off = NULL, thumb_len = NULL WHERE segment = ?1",
                [id],
            )
            .map_err(&err)?;
        for path in [
            format::embedding_path(&self.dir, id),
            format::thumbnail_path(&self.dir, id),
        ] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(Error::io(&path, e));
            }
        }
        Ok(())
    }

    /// Bytes of the folder: segment files (committed), database and its journal.
    pub fn bytes(&self) -> Result<u64> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        let segments: i64 = self
            .conn
            .query_row(
                "SELECT coalesce(sum(emb_bytes + thumb_bytes), 0) FROM segments",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let db = |name: &str| {
            std::fs::metadata(self.dir.join(name))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let index = format::INDEX;
        Ok(segments as u64 + db(index) + db(&format!("{index}-wal")) + db(&format!("{index}-shm")))
    }

    /// Samples, bytes and the oldest sample's time.
    pub fn usage(&self) -> Result<Usage> {
        let dir = self.dir.clone();
        let err = sql(&dir);
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT min(time_ms) FROM samples", [], |r| r.get(0))
            .map_err(&err)?;
        Ok(Usage {
            samples: self.samples,
            bytes: self.bytes()?,
            oldest_ms: oldest,
        })
    }
}

fn upsert_model(tx: &Connection, dir: &Path, m: &ModelInfo) -> Result<i64> {
    let err = sql(dir);
    tx.execute(
        "INSERT INTO models (fingerprint, dir, variant, dim) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (fingerprint) DO UPDATE SET dir = excluded.dir",
        params![m.fingerprint, m.dir, m.variant, m.dim as i64],
    )
    .map_err(&err)?;
    tx.query_row(
        "SELECT id FROM models WHERE fingerprint = ?1",
        [&m.fingerprint],
        |r| r.get(0),
    )
    .map_err(&err)
}

/// Appends the batch's bytes for the open segment to its files, syncs them and records the
/// segment's new committed size (in `tx`).
fn flush_segment(
    tx: &Connection,
    dir: &Path,
    segment: Option<&mut Segment>,
    appended: &mut [Appended],
) -> Result<()> {
    let Some(seg) = segment else { return Ok(()) };
    let Some(a) = appended.iter_mut().find(|a| a.id == seg.id) else {
        return Ok(());
    };
    let emb_path = format::embedding_path(dir, seg.id);
    let thumb_path = format::thumbnail_path(dir, seg.id);
    if !a.emb.is_empty() {
        seg.emb.write_all(&a.emb).map_err(io(&emb_path))?;
        seg.emb.sync_data().map_err(io(&emb_path))?;
        a.emb.clear();
    }
    if !a.thumb.is_empty() {
        seg.thumb.write_all(&a.thumb).map_err(io(&thumb_path))?;
        seg.thumb.sync_data().map_err(io(&thumb_path))?;
        a.thumb.clear();
    }
    tx.execute(
        "UPDATE segments SET rows = ?2, emb_bytes = ?3, thumb_bytes = ?4, first_ms = ?5, last_ms = ?6 WHERE id = ?1",
        params![
            seg.id,
            seg.rows,
            seg.emb_bytes as i64,
            seg.thumb_bytes as i64,
            seg.first_ms,
            seg.last_ms
        ],
    )
    .map_err(sql(dir))?;
    let _ = seg.dim;
    Ok(())
}
