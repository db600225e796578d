//! The `[history]` table: the sample history (see `crate::history`), where it is and how much
//! it keeps. Changes apply at the next start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Ctx;
use super::raw::{RawHistory, RawSize};
use super::snapshots::parse_size;
use clipfilter::error::Result;

/// Default age limit of the sample history.
pub const DEFAULT_HISTORY_KEEP: Duration = Duration::from_secs(7 * 86400);
/// Default size limit of the sample history.
pub const DEFAULT_HISTORY_BYTES: u64 = 2 << 30;
/// Default thumbnail size (pixels on the longer side).
pub const DEFAULT_THUMBNAIL_SIZE: u32 = 160;
/// Default length of the history's sample queue.
pub const DEFAULT_HISTORY_QUEUE: usize = 4096;

/// The `[history]` table: the sample history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    pub enabled: bool,
    /// Its folder (default `<state_dir>/history`).
    pub dir: PathBuf,
    /// Samples older than this are deleted (`None`: only `max_bytes` bounds it).
    pub keep: Option<Duration>,
    pub max_bytes: u64,
    pub thumbnails: bool,
    /// Pixels on the longer side of a thumbnail.
    pub thumbnail_size: u32,
    /// Samples that may wait for the writer before new ones are dropped.
    pub queue: usize,
}

/// Validates `[history]` (`state_dir` gives the default folder), recording every problem.
pub(super) fn history(cx: &Ctx<'_>, raw: &RawHistory, state_dir: &Path) -> Option<HistoryConfig> {
    let keep = cx.keep(keep(cx, raw));
    let max_bytes = cx.keep(max_bytes(cx, raw));
    let thumbnail_size = cx.keep(thumbnail_size(cx, raw));
    let queue = cx.keep(queue(cx, raw));
    Some(HistoryConfig {
        enabled: raw.enabled.unwrap_or(true),
        dir: raw.dir.as_ref().map_or_else(
            || state_dir.join(crate::history::DIR_NAME),
            |d| cx.resolve(d.get_ref()),
        ),
        keep: keep?,
        max_bytes: max_bytes?,
        thumbnails: raw.thumbnails.unwrap_or(true),
        thumbnail_size: thumbnail_size?,
        queue: queue?,
    })
}

fn keep(cx: &Ctx<'_>, raw: &RawHistory) -> Result<Option<Duration>> {
    let Some(k) = &raw.keep else {
        return Ok(Some(DEFAULT_HISTORY_KEEP));
    };
    if k.get_ref().trim() == "forever" {
        return Ok(None);
    }
    let d = crate::history::time::parse_age(k.get_ref())
        .map_err(|m| cx.err(Some(k.span()), "history.keep", m))?;
    if d < Duration::from_secs(60) {
        return Err(cx.err(
            Some(k.span()),
            "history.keep",
            "must be at least 1m (or \"forever\")",
        ));
    }
    Ok(Some(d))
}

fn max_bytes(cx: &Ctx<'_>, raw: &RawHistory) -> Result<u64> {
    let Some(s) = &raw.max_bytes else {
        return Ok(DEFAULT_HISTORY_BYTES);
    };
    let bytes = match s.get_ref() {
        RawSize::Bytes(b) => *b,
        RawSize::Text(t) => {
            parse_size(t).map_err(|m| cx.err(Some(s.span()), "history.max_bytes", m))?
        }
    };
    if bytes < 1 << 20 {
        return Err(cx.err(
            Some(s.span()),
            "history.max_bytes",
            "must be at least 1 MiB",
        ));
    }
    Ok(bytes)
}

fn thumbnail_size(cx: &Ctx<'_>, raw: &RawHistory) -> Result<u32> {
    match &raw.thumbnail_size {
        Some(n) if !(16..=1024).contains(n.get_ref()) => Err(cx.err(
            Some(n.span()),
            "history.thumbnail_size",
            "must be between 16 and 1024",
        )),
        Some(n) => Ok(*n.get_ref()),
        None => Ok(DEFAULT_THUMBNAIL_SIZE),
    }
}

fn queue(cx: &Ctx<'_>, raw: &RawHistory) -> Result<usize> {
    match &raw.queue {
        Some(n) if !(1..=1_000_000).contains(n.get_ref()) => Err(cx.err(
            Some(n.span()),
            "history.queue",
            "must be between 1 and 1000000",
        )),
        Some(n) => Ok(*n.get_ref()),
        None => Ok(DEFAULT_HISTORY_QUEUE),
    }
}
