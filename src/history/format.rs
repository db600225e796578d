//! The files of a history folder and the layout of its segment files.
//!
//! ```text
//! <dir>/index.sqlite3     metadata (SQLite, WAL): format version, models, pipelines, label sets,
//!                         segments, samples, stream epochs, events, review marks
//! <dir>/seg/000001.emb    embedding rows of segment 1 (append-only)
//! <dir>/seg/000001.jpg    thumbnails of the samples of segment 1 (concatenated JPEG files)
//! ```
//!
//! A segment file starts with a 64-byte header (magic, format version, width, row size,
//! encoding), then fixed-size rows: a 32-byte row header (sample id, wall-clock time in ms,
//! scale, per-pipeline sequence number, pipeline id) and the int8 vector, padded to 8 bytes.
//! Rows of one segment come from one model. The database says how many rows of each segment are
//! committed; bytes past that (a write cut short by a crash) are ignored by readers and cut off
//! when a writer opens the folder.

use std::path::{Path, PathBuf};

/// Version of the folder layout and file formats. A folder of another version is refused with
/// both versions named.
pub const FORMAT_VERSION: i64 = 1;
/// The metadata database.
pub const INDEX: &str = "index.sqlite3";
/// Folder of the segment files.
pub const SEGMENTS: &str = "seg";
/// Magic bytes at the start of a segment file.
pub const MAGIC: &[u8; 8] = b"CFHSEG\0\x01";
/// Bytes of the segment header.
pub const HEADER: usize = 64;
/// Bytes of a row header.
pub const ROW_HEADER: usize = 32;
/// The only encoding so far: int8 vector with a float32 scale in the row header.
pub const ENCODING_INT8: u32 = 1;

/// Bytes of one row for vectors of width `dim`.
pub fn row_size(dim: usize) -> usize {
    (ROW_HEADER + dim).div_ceil(8) * 8
}

/// The embedding file of segment `id`.
pub fn embedding_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(SEGMENTS).join(format!("{id:06}.emb"))
}

/// The thumbnail file of segment `id`.
pub fn thumbnail_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(SEGMENTS).join(format!("{id:06}.jpg"))
}

/// The header of a segment file.
pub fn header(dim: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&(FORMAT_VERSION as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(dim as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(row_size(dim) as u32).to_le_bytes());
    h[20..24].copy_from_slice(&ENCODING_INT8.to_le_bytes());
    h
}

/// Checks a segment header; returns the vector width.
pub fn read_header(bytes: &[u8]) -> Result<usize, String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not a history segment file".into());
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let version = i64::from(u32_at(8));
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment of format version {version}, this clipfilterd reads version {FORMAT_VERSION}"
        ));
    }
    let dim = u32_at(12) as usize;
    if u32_at(16) as usize != row_size(dim) || u32_at(20) != ENCODING_INT8 {
        return Err("segment header does not match its width".into());
    }
    Ok(dim)
}

/// The header of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowHeader {
    pub sample: i64,
    pub time_ms: i64,
    pub scale: f32,
    /// Position among the pipeline's stored embeddings (consecutive rows of a pipeline have
    /// consecutive numbers, whatever other pipelines wrote in between).
    pub seq: u32,
    pub pipeline: u32,
}

impl RowHeader {
    /// Writes the header and the vector into `out` (one row, zero-padded).
    pub fn encode(&self, q: &[i8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.sample.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.scale.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.pipeline.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend(q.iter().map(|v| *v as u8));
        out.resize(start + row_size(q.len()), 0);
    }

    /// Reads the header of `row`.
    #[inline]
    pub fn decode(row: &[u8]) -> RowHeader {
        let b8 = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&row[i..i + 8]);
            a
        };
        let b4 = |i: usize| [row[i], row[i + 1], row[i + 2], row[i + 3]];
        RowHeader {
            sample: i64::from_le_bytes(b8(0)),
            time_ms: i64::from_le_bytes(b8(8)),
            scale: f32::from_le_bytes(b4(16)),
            seq: u32::from_le_bytes(b4(20)),
            pipeline: u32::from_le_bytes(b4(24)),
        }
    }

    /// The wall-clock time of `row` only (what time filters read).
    #[inline]
    pub fn time_of(row: &[u8]) -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&row[8..16]);
        i64::from_le_bytes(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_headers_round_trip() {
        assert_eq!(row_size(512), 544);
        assert_eq!(row_size(10), 48);
        let h = RowHeader {
            sample: 42,
            time_ms: 1_700_000_000_123,
            scale: 0.25,
            seq: 7,
            pipeline: 3,
        };
        let mut row = Vec::new();
        h.encode(&[1, -2, 3], &mut row);
        assert_eq!(row.len(), row_size(3));
        assert_eq!(RowHeader::decode(&row), h);
        assert_eq!(RowHeader::time_of(&row), h.time_ms);
        assert_eq!(row[ROW_HEADER + 1] as i8, -2);
        assert_eq!(read_header(&header(512)), Ok(512));
        let mut newer = header(512);
        newer[8] = 9;
        assert!(read_header(&newer).unwrap_err().contains("version 9"));
        assert!(read_header(b"nonsense").is_err());
    }
}
