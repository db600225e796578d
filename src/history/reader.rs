//! Reading a history, also while the daemon writes it: SQLite's WAL gives each read a
//! consistent snapshot of the metadata, and segment files are only read up to the committed
//! size that snapshot names (the writer only appends past it).

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rusqlite::{Connection, OptionalExtension, params};

use super::format::{self, RowHeader};
use super::quant;
use super::record::Crop;
use super::store::{self, sql};
use crate::error::{Error, Result};

/// A model whose embeddings the history holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    pub id: i64,
    pub fingerprint: String,
    pub dir: String,
    pub variant: String,
    pub dim: usize,
}

/// A segment's committed rows, mapped into memory.
pub struct MappedSegment {
    pub id: i64,
    pub dim: usize,
    pub rows: usize,
    pub first_ms: i64,
    pub last_ms: i64,
    map: Mmap,
}

impl MappedSegment {
    /// The committed rows (`rows` of [`format::row_size`] bytes each).
    pub fn rows_bytes(&self) -> &[u8] {
        let len = self.rows * format::row_size(self.dim);
        &self.map[format::HEADER..format::HEADER + len]
    }
}

/// One stored sample's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub id: i64,
    pub pipeline: String,
    pub epoch: i64,
    pub time_ms: i64,
    pub pts: Option<i64>,
    pub stream_time: Option<i64>,
    pub running_time: Option<i64>,
    pub frame: u64,
    /// The sample whose embedding stands for this one (itself, unless the scene gate repeated
    /// an earlier verdict); `None` when that embedding is gone.
    pub embedded: Option<i64>,
    pub has_thumbnail: bool,
    pub crop: Option<Crop>,
}

/// A history opened for reading.
pub struct History {
    dir: PathBuf,
    conn: Connection,
    id: String,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl History {
    /// Opens the history in `dir` (a user error when there is none or its format differs).
    pub fn open(dir: &Path) -> Result<History> {
        let conn = store::open(dir, false)?;
        let id = store::info(&conn, dir, "id")?.unwrap_or_default();
        Ok(History {
            dir: dir.to_path_buf(),
            conn,
            id,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database connection (for the modules that query it).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Rows older than this were deleted by retention (ms; `i64::MIN` when nothing was).
    pub fn horizon_ms(&self) -> Result<i64> {
        Ok(store::info(&self.conn, &self.dir, "horizon_ms")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MIN))
    }

    /// The models the history holds embeddings of.
    pub fn models(&self) -> Result<Vec<StoredModel>> {
        let err = sql(&self.dir);
        let mut stmt = self
            .conn
            .prepare("SELECT id, fingerprint, dir, variant, dim FROM models ORDER BY id")
            .map_err(&err)?;
        stmt.query_map([], |r| {
            Ok(StoredModel {
                id: r.get(0)?,
                fingerprint: r.get(1)?,
                dir: r.get(2)?,
                variant: r.get(3)?,
                dim: r.get::<_, i64>(4)? as usize,
            })
        })
        .map_err(&err)?
        .collect::<std::result::Result<_, _>>()
        .map_err(&err)
    }

    /// The model with `fingerprint`.
    pub fn model(&self, fingerprint: &str) -> Result<Option<StoredModel>> {
        Ok(self
            .models()?
            .into_iter()
            .find(|m| m.fingerprint == fingerprint))
    }

    /// The model the newest samples were embedded with.
    pub fn latest_model(&self) -> Result<Option<StoredModel>> {
        let err = sql(&self.dir);
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT model FROM segments ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        let models = self.models()?;
        Ok(match id {
            Some(id) => models.into_iter().find(|m| m.id == id),
            None => models.into_iter().last(),
        })
    }

    /// Pipelines by id.
    pub fn pipelines(&self) -> Result<Vec<(i64, String)>> {
        let err = sql(&self.dir);
        let mut stmt = self
            .conn
            .prepare("SELECT id, name FROM pipelines ORDER BY name")
            .map_err(&err)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(&err)
    }

    /// The id of pipeline `name`; a user error naming the known ones when there is none.
    pub fn pipeline_id(&self, name: &str) -> Result<i64> {
        let all = self.pipelines()?;
        all.iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|(_, n)| n.as_str()).collect();
                Error::invalid(
                    "pipeline",
                    format!(
                        "`{name}` has no samples in the history at {} (pipelines: {})",
                        self.dir.display(),
                        if names.is_empty() {
                            "none yet".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                )
            })
    }

    /// The committed segments of `model`, mapped (segments deleted meanwhile are skipped).
    pub fn segments(&self, model: i64) -> Result<Vec<MappedSegment>> {
        let err = sql(&self.dir);
        type Listed = (i64, i64, i64, Option<i64>, Option<i64>, i64);
        let list: Vec<Listed> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT s.id, s.rows, s.emb_bytes, s.first_ms, s.last_ms, m.dim
                     FROM segments s JOIN models m ON m.id = s.model
                     WHERE s.model = ?1 AND s.rows > 0 ORDER BY s.id",
                )
                .map_err(&err)?;
            stmt.query_map([model], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(&err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(&err)?
        };
        let mut out = Vec::with_capacity(list.len());
        for (id, rows, bytes, first, last, dim) in list {
            let path = format::embedding_path(&self.dir, id);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            // SAFETY: the writer only appends past the committed size mapped here, and deletes
            // whole files (the mapping keeps the data of a deleted file).
            let map = unsafe { memmap2::MmapOptions::new().len(bytes as usize).map(&file) }
                .map_err(|e| Error::io(&path, e))?;
            let dim = dim as usize;
            format::read_header(&map).map_err(|m| Error::invalid(path.display().to_string(), m))?;
            let rows = rows as usize;
            if map.len() < format::HEADER + rows * format::row_size(dim) {
                tracing::warn!(file = %path.display(), "segment shorter than its committed rows: skipped");
                continue;
            }
            out.push(MappedSegment {
                id,
                dim,
                rows,
                first_ms: first.unwrap_or(i64::MIN),
                last_ms: last.unwrap_or(i64::MAX),
                map,
            });
        }
        Ok(out)
    }

    /// Samples of all models and of `model`.
    pub fn counts(&self, model: Option<i64>) -> Result<(u64, u64)> {
        let err = sql(&self.dir);
        let all: i64 = self
            .conn
            .query_row("SELECT coalesce(sum(rows), 0) FROM segments", [], |r| {
                r.get(0)
            })
            .map_err(&err)?;
        let of: i64 = match model {
            Some(m) => self
                .conn
                .query_row(
                    "SELECT coalesce(sum(rows), 0) FROM segments WHERE model = ?1",
                    [m],
                    |r| r.get(0),
                )
                .map_err(&err)?,
            None => 0,
        };
        Ok((all as u64, of as u64))
    }

    /// A stored sample.
    pub fn sample(&self, id: i64) -> Result<Option<SampleRow>> {
        let err = sql(&self.dir);
        self.conn
            .query_row(
                "SELECT s.id, p.name, s.epoch, s.time_ms, s.pts, s.stream_time, s.running_time, s.frame,
                        CASE WHEN s.segment IS NOT NULL THEN s.id
                             ELSE (SELECT r.id FROM samples r WHERE r.id = s.repeat_of AND r.segment IS NOT NULL) END,
                        s.thumb_len IS NOT NULL, s.crop, s.crop_x, s.crop_y, s.crop_w, s.crop_h
                 FROM samples s JOIN pipelines p ON p.id = s.pipeline WHERE s.id = ?1",
                [id],
                |r| {
                    let crop = r.get::<_, Option<String>>(10)?.map(|name| -> rusqlite::Result<Crop> {
                        Ok(Crop {
                            name,
                            x: r.get::<_, f64>(11)? as f32,
                            y: r.get::<_, f64>(12)? as f32,
                            w: r.get::<_, f64>(13)? as f32,
                            h: r.get::<_, f64>(14)? as f32,
                        })
                    });
                    Ok(SampleRow {
                        id: r.get(0)?,
                        pipeline: r.get(1)?,
                        epoch: r.get(2)?,
                        time_ms: r.get(3)?,
                        pts: r.get(4)?,
                        stream_time: r.get(5)?,
                        running_time: r.get(6)?,
                        frame: r.get::<_, i64>(7)? as u64,
                        embedded: r.get(8)?,
                        has_thumbnail: r.get(9)?,
                        crop: crop.transpose()?,
                    })
                },
            )
            .optional()
            .map_err(&err)
    }

    /// The embedding that stands for sample `id` (dequantized), with the fingerprint of its
    /// model; `None` when it is gone.
    pub fn embedding(&self, id: i64) -> Result<Option<(Vec<f32>, String)>> {
        let err = sql(&self.dir);
        let place: Option<(i64, i64, usize, String)> = self
            .conn
            .query_row(
                "SELECT e.segment, e.row, m.dim, m.fingerprint
                 FROM samples s
                 JOIN samples e ON e.id = CASE WHEN s.segment IS NOT NULL THEN s.id ELSE s.repeat_of END
                 JOIN segments g ON g.id = e.segment JOIN models m ON m.id = g.model
                 WHERE s.id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as usize, r.get(3)?)),
            )
            .optional()
            .map_err(&err)?;
        let Some((segment, row, dim, fingerprint)) = place else {
            return Ok(None);
        };
        let path = format::embedding_path(&self.dir, segment);
        let size = format::row_size(dim);
        let mut buf = vec![0u8; size];
        let read = (|| -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&path)?;
            f.read_exact_at(&mut buf, (format::HEADER + row as usize * size) as u64)
        })();
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        }
        let header = RowHeader::decode(&buf);
        let q = quant::bytemuck_i8(&buf[format::ROW_HEADER..format::ROW_HEADER + dim]);
        Ok(Some((quant::dequantize(q, header.scale), fingerprint)))
    }

    /// The JPEG thumbnail of sample `id`, if it has one.
    pub fn thumbnail(&self, id: i64) -> Result<Option<Vec<u8>>> {
        let err = sql(&self.dir);
        let place: Option<(i64, i64, i64)> = self
            .conn
            .query_row(
                "SELECT segment, thumb_off, thumb_len FROM samples
                 WHERE id = ?1 AND segment IS NOT NULL AND thumb_len IS NOT NULL",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(&err)?;
        let Some((segment, off, len)) = place else {
            return Ok(None);
        };
        let path = format::thumbnail_path(&self.dir, segment);
        let mut buf = vec![0u8; len as usize];
        let read = (|| -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            std::fs::File::open(&path)?.read_exact_at(&mut buf, off as u64)
        })();
        match read {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Writes the thumbnail of sample `id` into `dir` (once) and returns its path.
    pub fn export_thumbnail(&self, id: i64, dir: &Path) -> Result<Option<PathBuf>> {
        let name = format!(
            "{}-{id}.jpg",
            self.id.split('-').next_back().unwrap_or("history")
        );
        let path = dir.join(name);
        if path.is_file() {
            return Ok(Some(path));
        }
        let Some(jpeg) = self.thumbnail(id)? else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = path.with_extension("jpg.tmp");
        std::fs::write(&tmp, &jpeg)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Some(path))
    }

    /// The last sample that repeats (scene gate) sample `id`'s verdict, by time.
    pub fn last_repeat_ms(&self, id: i64) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT max(time_ms) FROM samples WHERE repeat_of = ?1",
                params![id],
                |r| r.get(0),
            )
            .map_err(sql(&self.dir))
    }
}
