//! The metadata database of a history folder: schema, opening, the format-version check.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::format::{FORMAT_VERSION, INDEX, SEGMENTS};
use crate::error::{Error, Result};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, dir TEXT NOT NULL,
    variant TEXT NOT NULL, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pipelines (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, next_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS labelsets (
    id INTEGER PRIMARY KEY, pipeline INTEGER NOT NULL, version TEXT NOT NULL,
    info TEXT, first_ms INTEGER NOT NULL, UNIQUE (pipeline, version));
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, model INTEGER NOT NULL, rows INTEGER NOT NULL DEFAULT 0,
    emb_bytes INTEGER NOT NULL, thumb_bytes INTEGER NOT NULL DEFAULT 0,
    first_ms INTEGER, last_ms INTEGER, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    id INTEGER PRIMARY KEY, pipeline INTEGER NOT NULL, start_ms INTEGER NOT NULL,
    end_ms INTEGER, end_pts INTEGER, end_stream INTEGER, end_running INTEGER, end_frame INTEGER);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY, pipeline INTEGER NOT NULL, epoch INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, pts INTEGER, stream_time INTEGER, running_time INTEGER,
    frame INTEGER NOT NULL, segment INTEGER, row INTEGER, repeat_of INTEGER,
    labelset INTEGER NOT NULL, scores BLOB NOT NULL, thumb_off INTEGER, thumb_len INTEGER,
    crop TEXT, crop_x REAL, crop_y REAL, crop_w REAL, crop_h REAL);
CREATE INDEX IF NOT EXISTS samples_time ON samples (pipeline, time_ms);
CREATE INDEX IF NOT EXISTS samples_age ON samples (time_ms);
CREATE INDEX IF NOT EXISTS samples_frame ON samples (pipeline, epoch, frame);
CREATE INDEX IF NOT EXISTS samples_repeat ON samples (repeat_of) WHERE repeat_of IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, pipeline INTEGER NOT NULL, epoch INTEGER NOT NULL, label TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL, time_ms INTEGER NOT NULL, pts INTEGER,
    stream_time INTEGER, running_time INTEGER, frame INTEGER NOT NULL, score REAL NOT NULL,
    probability REAL NOT NULL, snapshot TEXT);
CREATE INDEX IF NOT EXISTS events_time ON events (pipeline, time_ms);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, sample INTEGER, event TEXT,
    pipeline TEXT, label TEXT NOT NULL, verdict TEXT NOT NULL, note TEXT,
    sample_time_ms INTEGER, model TEXT, embedding BLOB);
";

/// An SQLite error on the history at `dir`.
pub fn sql(dir: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |cause| Error::History {
        path: dir.to_path_buf(),
        cause,
    }
}

/// Opens the database of the history in `dir`: creating it (and the folders) when `create`, else
/// failing with a user error when there is none. Checks the format version either way.
pub fn open(dir: &Path, create: bool) -> Result<Connection> {
    let path = dir.join(INDEX);
    if !create && !path.is_file() {
        return Err(Error::invalid(
            "history",
            format!(
                "{}: no sample history here (clipfilterd run writes one into <state_dir>/history unless [history] enabled = false)",
                dir.display()
            ),
        ));
    }
    if create {
        std::fs::create_dir_all(dir.join(SEGMENTS)).map_err(|e| Error::io(dir, e))?;
    }
    let err = sql(dir);
    let conn = Connection::open(&path).map_err(&err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    if create {
        // Takes effect only on a new, empty database: deleted pages are handed back to the
        // file system (`PRAGMA incremental_vacuum`) instead of staying in the file.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(&err)?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(&err)?;
    let has_info: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'info'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(&err)?
        > 0;
    let version: Option<String> = if has_info {
        conn.query_row("SELECT value FROM info WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(&err)?
    } else {
        None
    };
    match version {
        Some(v) if v.parse::<i64>().ok() == Some(FORMAT_VERSION) => {}
        Some(v) => {
            let which = match v.parse::<i64>() {
                Ok(n) if n < FORMAT_VERSION => "an older",
                Ok(_) => "a newer",
                Err(_) => "an unknown",
            };
            return Err(Error::invalid(
                "history",
                format!(
                    "{}: written by {which} clipfilterd (history format version {v}); this one reads version {FORMAT_VERSION}: move the folder away to start a new history",
                    dir.display()
                ),
            ));
        }
        None if create => {
            conn.execute_batch(SCHEMA).map_err(&err)?;
            conn.execute(
                "INSERT OR IGNORE INTO info (key, value) VALUES ('format', ?1), ('id', ?2)",
                params![FORMAT_VERSION.to_string(), uuid::Uuid::now_v7().to_string()],
            )
            .map_err(&err)?;
        }
        None => {
            return Err(Error::invalid(
                "history",
                format!(
                    "{}: not a sample history (no format version)",
                    dir.display()
                ),
            ));
        }
    }
    Ok(conn)
}

/// A value of the `info` table.
pub fn info(conn: &Connection, dir: &Path, key: &str) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM info WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(sql(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let missing = open(dir.path(), false).unwrap_err().to_string();
        assert!(missing.contains("no sample history"), "{missing}");
        let conn = open(dir.path(), true).unwrap();
        assert_eq!(
            info(&conn, dir.path(), "format").unwrap().as_deref(),
            Some("1")
        );
        drop(conn);
        open(dir.path(), false).unwrap();
        for (v, word) in [("0", "older"), ("7", "newer")] {
            let c = Connection::open(dir.path().join(INDEX)).unwrap();
            c.execute("UPDATE info SET value = ?1 WHERE key = 'format'", [v])
                .unwrap();
            drop(c);
            let e = open(dir.path(), false).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(word)
                    && text.contains(&format!("version {v}"))
                    && text.contains("reads version 1"),
                "{text}"
            );
            assert!(e.is_user_error());
        }
    }
}
