//! The `[snapshots]` table: where the JPEGs of the frames that start matches go, and how many
//! are kept.

use std::path::{Path, PathBuf};

use super::Ctx;
use super::raw::{RawSize, RawSnapshots};
use clipfilter::error::Result;

/// Default bound on the number of snapshot files.
pub const DEFAULT_SNAPSHOT_FILES: u64 = 1000;
/// Default bound on the bytes of snapshot files (256 MiB).
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 256 << 20;
/// Default JPEG quality of snapshots.
pub const DEFAULT_SNAPSHOT_QUALITY: u8 = 85;
/// The smallest `max_bytes`.
const MIN_SNAPSHOT_BYTES: u64 = 4096;

/// The `[snapshots]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Folder of the JPEG files (default `<state_dir>/snapshots`).
    pub dir: PathBuf,
    pub max_files: u64,
    pub max_bytes: u64,
    pub quality: u8,
    /// Outline the crop whose score started the match (a tile, a region, the `crops` square or
    /// what `fit` showed the model of the frame).
    pub draw_box: bool,
}

/// Validates `[snapshots]` (`state_dir` gives the default folder), recording every problem.
pub(super) fn snapshots(
    cx: &Ctx<'_>,
    raw: &RawSnapshots,
    state_dir: &Path,
) -> Option<SnapshotConfig> {
    let max_files = cx.keep(max_files(cx, raw));
    let max_bytes = cx.keep(max_bytes(cx, raw));
    let quality = cx.keep(quality(cx, raw));
    Some(SnapshotConfig {
        dir: raw
            .dir
            .as_ref()
            .map_or_else(|| state_dir.join("snapshots"), |d| cx.resolve(d.get_ref())),
        max_files: max_files?,
        max_bytes: max_bytes?,
        quality: quality?,
        draw_box: raw.draw_box.unwrap_or(true),
    })
}

fn max_files(cx: &Ctx<'_>, raw: &RawSnapshots) -> Result<u64> {
    match &raw.max_files {
        Some(n) if *n.get_ref() == 0 => {
            Err(cx.err(Some(n.span()), "snapshots.max_files", "must be at least 1"))
        }
        Some(n) => Ok(*n.get_ref()),
        None => Ok(DEFAULT_SNAPSHOT_FILES),
    }
}

fn max_bytes(cx: &Ctx<'_>, raw: &RawSnapshots) -> Result<u64> {
    let Some(s) = &raw.max_bytes else {
        return Ok(DEFAULT_SNAPSHOT_BYTES);
    };
    let bytes = match s.get_ref() {
        RawSize::Bytes(b) => *b,
        RawSize::Text(t) => {
            parse_size(t).map_err(|m| cx.err(Some(s.span()), "snapshots.max_bytes", m))?
        }
    };
    if bytes < MIN_SNAPSHOT_BYTES {
        return Err(cx.err(
            Some(s.span()),
            "snapshots.max_bytes",
            "must be at least 4 KiB",
        ));
    }
    Ok(bytes)
}

fn quality(cx: &Ctx<'_>, raw: &RawSnapshots) -> Result<u8> {
    match &raw.quality {
        Some(q) if !(1..=100).contains(q.get_ref()) => Err(cx.err(
            Some(q.span()),
            "snapshots.quality",
            "must be between 1 and 100",
        )),
        Some(q) => Ok(*q.get_ref()),
        None => Ok(DEFAULT_SNAPSHOT_QUALITY),
    }
}

/// A size in bytes: an integer, or a string such as `"256MiB"`, `"1.5 GB"`, `"800k"`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?} (expected e.g. \"256MiB\" or 1000000)"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    Ok((number * factor).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("800k"), Ok(800_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1 parsec").is_err());
    }
}
