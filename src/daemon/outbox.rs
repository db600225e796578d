//! The durable event outbox: nothing is lost between a match and its acknowledgement.
//!
//! Events live in an SQLite database, `<state_dir>/outbox.sqlite3`, in WAL mode with
//! `synchronous=FULL`: when [`Outbox::enqueue`] returns, the event is on disk and survives a
//! `kill -9` or a power cut.
//!
//! # Model
//! - An event is written once per target output, for all its outputs in one transaction, before
//!   any delivery is attempted. Each row gets a sequence number from an `AUTOINCREMENT` key, so
//!   sequence numbers only grow, even across restarts and deletions.
//! - Each output reads its own rows in sequence order ([`Outbox::peek`]) and deletes a row only
//!   once the output acknowledged the event ([`Outbox::ack`]). Delivery is therefore
//!   at-least-once: a crash between acknowledgement and deletion resends that event, with the
//!   same `id`. Deletions are committed without their own fsync (`synchronous=NORMAL` for that
//!   transaction): losing one to a power cut only means a duplicate, and it halves the fsyncs.
//! - The database is opened with `locking_mode=EXCLUSIVE`: one process owns an outbox; a second
//!   process opening the same file gets an error instead of delivering the same events twice.
//!
//! # When an output's queue is full
//! Each output holds at most `max_pending` events (default [`DEFAULT_MAX_PENDING`]). When an
//! endpoint stays down long enough for its queue to fill, enqueueing one more event **drops the
//! oldest pending event of that output** (not the new one): after an outage the consumer gets
//! the most recent history. Every drop is returned by [`Outbox::enqueue`] as a [`Dropped`] so the
//! caller can count it (`clipfilter_output_events_dropped_total`) and log a warning naming the
//! output and the event id. Other outputs are not affected.
//!
//! Events pending for an output that is no longer configured stay in the database (they are
//! reported by [`Outbox::pending_counts`]) and are delivered if that output comes back.
//!
//! # When the disk is full
//! An enqueue that fails for lack of space ("database or disk is full") puts the outbox in the
//! *full* state ([`Outbox::is_full`]): the event is refused (the caller counts it), and so is
//! every new event until the disk has [`RESUME_FREE_BYTES`] free again, which leaves the state.
//! Each change of state is logged once (an error, then an info line), never once per event. A delivered event whose
//! deletion fails stays with its worker, which retries the deletion with backoff instead of
//! sending the event again.
//! The write-ahead log is checkpointed every [`WAL_CHECKPOINT_PAGES`] pages and truncated to
//! [`WAL_SIZE_LIMIT`] bytes, so that it does not fill a small disk by itself.
//!
//! # A corrupt database
//! When the file is not a readable SQLite database (garbage, a truncated copy), [`Outbox::open`]
//! moves it (with its `-wal` and `-shm` files) aside to `outbox.sqlite3.corrupt-<unix time>`,
//! logs an error naming both files, and starts an empty outbox: the daemon keeps running and the
//! corrupt file stays for inspection (`sqlite3 FILE .recover` gets back what can be read).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::daemon::event::Event;
use crate::error::{Error, Result, is_disk_full};

/// File name of the outbox database inside the state folder.
pub const FILE_NAME: &str = "outbox.sqlite3";

/// Default bound on the number of pending events per output.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;

const SCHEMA_VERSION: i64 = 1;

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The write-ahead log is copied into the database every this many pages (SQLite's default,
/// 1000 pages, is 4 MB: more than a small state disk holds).
pub const WAL_CHECKPOINT_PAGES: u32 = 64;

/// After a checkpoint the write-ahead log file is truncated to this many bytes.
pub const WAL_SIZE_LIMIT: u64 = 1 << 20;

/// Once full, the outbox tries writing again only when its disk has this much free: no
/// flapping between full and not while the disk stays nearly full. Half the snapshots'
/// reserve ([`crate::daemon::snapshot::RESERVE_BYTES`]), so that events resume first.
pub const RESUME_FREE_BYTES: u64 = 256 * 1024;

/// True when `e` says the file is not an SQLite database or is damaged.
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// One event waiting for one output.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Sequence number: delivery order within the output.
    pub seq: i64,
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's pipeline (MQTT topics are built from it).
    pub pipeline: String,
    /// The event's label.
    pub label: String,
    /// The event as JSON, exactly as it is sent.
    pub payload: String,
}

/// A pending event dropped because its output's queue was full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The output whose queue was full.
    pub output: String,
    /// Sequence number of the dropped row.
    pub seq: i64,
    /// Id of the dropped event.
    pub event_id: uuid::Uuid,
}

struct State {
    conn: Connection,
    /// Pending rows per output, kept in step with the table (this process owns the file).
    counts: BTreeMap<String, u64>,
    /// Per-output bounds set with [`Outbox::set_max_pending`].
    limits: BTreeMap<String, u64>,
    /// The last write failed for lack of space (see the module documentation).
    full: bool,
    /// Set to 1 while full (`clipfilter_outbox_disk_full`), when given.
    full_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

/// The durable outbox. Cheap operations behind one mutex; share it with `Arc`.
pub struct Outbox {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (creating if needed) `<state_dir>/outbox.sqlite3`, creating `state_dir` too.
    ///
    /// Fails when another process holds the outbox open.
    ///
    /// A file that is not a readable SQLite database is moved aside (see the module
    /// documentation) and an empty outbox is started in its place.
    pub fn open(state_dir: &Path) -> Result<Outbox> {
        std::fs::create_dir_all(state_dir).map_err(|e| Error::io(state_dir, e))?;
        let path = state_dir.join(FILE_NAME);
        match Self::open_file(&path) {
            Err(Error::Outbox { cause, .. }) if is_corrupt(&cause) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let aside = state_dir.join(format!("{FILE_NAME}.corrupt-{stamp}"));
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                    match std::fs::rename(&from, &to) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&from, e)),
                    }
                }
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %cause,
                    "the event outbox is corrupt: moved it aside and started an empty one; \
                     events pending in it are not delivered (`sqlite3 {} .recover` reads what \
                     is left)",
                    aside.display()
                );
                Self::open_file(&path)
            }
            other => other,
        }
    }

    fn open_file(path: &Path) -> Result<Outbox> {
        let path = path.to_path_buf();
        let db = |source| Error::Outbox {
            path: path.clone(),
            cause: source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        // Waiting briefly covers a previous owner that is still closing; longer means that
        // another process is delivering from this outbox.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(db)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "outbox: WAL journal not available");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(db)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT as i64)
            .map_err(db)?;
        // Take the exclusive lock now (a write transaction), so that a second process fails here.
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS outbox (
                 seq      INTEGER PRIMARY KEY AUTOINCREMENT,
                 output   TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 pipeline TEXT NOT NULL,
                 label    TEXT NOT NULL,
                 payload  TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS outbox_by_output ON outbox (output, seq);
             COMMIT;",
        )
        .map_err(db)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        match version {
            0 => conn
                .pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(db)?,
            SCHEMA_VERSION => {}
            other => {
                return Err(Error::invalid(
                    format!("event outbox {}", path.display()),
                    format!(
                        "schema version {other} is newer than this clipfilter ({SCHEMA_VERSION})"
                    ),
                ));
            }
        }
        let counts = {
            let mut stmt = conn
                .prepare("SELECT output, COUNT(*) FROM outbox GROUP BY output")
                .map_err(db)?;
            stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
            })
            .map_err(db)?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()
            .map_err(db)?
        };
        tracing::debug!(path = %path.display(), ?counts, "outbox opened");
        Ok(Outbox {
            path,
            state: Mutex::new(State {
                conn,
                counts,
                limits: BTreeMap::new(),
                full: false,
                full_gauge: None,
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while the disk is full: an enqueue failed for lack of space, and since then the disk
    /// has not had [`RESUME_FREE_BYTES`] free.
    pub fn is_full(&self) -> bool {
        let mut state = self.lock();
        if state.full && self.has_room() {
            self.set_full(&mut state, false);
        }
        state.full
    }

    fn has_room(&self) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::daemon::paths::free_bytes(dir).is_none_or(|free| free >= RESUME_FREE_BYTES)
    }

    /// Keeps `gauge` at 1 while the outbox is full, else 0.
    pub fn set_full_gauge(&self, gauge: prometheus_client::metrics::gauge::Gauge) {
        let mut state = self.lock();
        gauge.set(i64::from(state.full));
        state.full_gauge = Some(gauge);
    }

    /// Records the outcome of an enqueue: enters or leaves the full state, logging the change.
    /// (Deletions do not count: one that goes through says nothing about room for a new row.)
    fn wrote<T>(&self, state: &mut State, result: &rusqlite::Result<T>) {
        let full = match result {
            Ok(_) => false,
            Err(e) if is_disk_full(e) => true,
            // Another failure says nothing about space.
            Err(_) => return,
        };
        self.set_full(state, full);
    }

    fn set_full(&self, state: &mut State, full: bool) {
        if full == state.full {
            return;
        }
        state.full = full;
        if let Some(g) = &state.full_gauge {
            g.set(i64::from(full));
        }
        if full {
            tracing::error!(
                path = %self.path.display(),
                "the state disk is full: new events are refused and delivered events stay \
                 queued until there is space again"
            );
        } else {
            tracing::info!(path = %self.path.display(), "the state disk has space again: events are accepted");
        }
    }

    /// Sets the bound on pending events of `output` (default [`DEFAULT_MAX_PENDING`]; at least 1).
    pub fn set_max_pending(&self, output: &str, max_pending: u64) {
        self.lock()
            .limits
            .insert(output.to_owned(), max_pending.max(1));
    }

    /// Writes `event` once for each of `outputs` (duplicates in `outputs` are ignored), in one
    /// durable transaction. Returns the events dropped to keep each output within its bound.
    pub fn enqueue(&self, event: &Event, outputs: &[&str]) -> Result<Vec<Dropped>> {
        let payload = event.to_json();
        let event_id = event.id.to_string();
        let mut targets: Vec<&str> = outputs.to_vec();
        targets.sort_unstable();
        targets.dedup();

        let mut guard = self.lock();
        let state = &mut *guard;
        if state.full && !self.has_room() {
            return Err(Error::Outbox {
                path: self.path.clone(),
                cause: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    Some("the state disk is still full".into()),
                ),
            });
        }
        let result = Self::insert(
            &mut state.conn,
            &state.counts,
            &state.limits,
            &targets,
            event,
            &event_id,
            &payload,
        );
        self.wrote(state, &result);
        let (dropped, new_counts) = result.map_err(|source| Error::Outbox {
            path: self.path.clone(),
            cause: source,
        })?;
        for (output, count) in new_counts {
            state.counts.insert(output.to_owned(), count);
        }
        Ok(dropped)
    }

    /// The transaction of [`Outbox::enqueue`]: the rows dropped and the new count per output.
    #[allow(clippy::type_complexity)]
    fn insert<'a>(
        conn: &mut Connection,
        counts: &BTreeMap<String, u64>,
        limits: &BTreeMap<String, u64>,
        targets: &[&'a str],
        event: &Event,
        event_id: &str,
        payload: &str,
    ) -> rusqlite::Result<(Vec<Dropped>, Vec<(&'a str, u64)>)> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut dropped = Vec::new();
        let mut new_counts = Vec::with_capacity(targets.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (output, event_id, pipeline, label, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut drop_oldest = tx.prepare_cached(
                "DELETE FROM outbox WHERE seq IN
                     (SELECT seq FROM outbox WHERE output = ?1 ORDER BY seq LIMIT ?2)
                 RETURNING seq, event_id",
            )?;
            for &output in targets {
                let limit = limits.get(output).copied().unwrap_or(DEFAULT_MAX_PENDING);
                let count = counts.get(output).copied().unwrap_or(0);
                let excess = (count + 1).saturating_sub(limit);
                let mut removed = 0;
                if excess > 0 {
                    let rows = drop_oldest.query_map(params![output, excess], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                    })?;
                    for row in rows {
                        let (seq, id) = row?;
                        removed += 1;
                        dropped.push(Dropped {
                            output: output.to_owned(),
                            seq,
                            event_id: id.parse().unwrap_or_default(),
                        });
                    }
                }
                insert.execute(params![
                    output,
                    event_id,
                    event.pipeline,
                    event.label,
                    payload
                ])?;
                new_counts.push((output, count - removed + 1));
            }
        }
        tx.commit()?;
        Ok((dropped, new_counts))
    }

    /// Up to `limit` pending events of `output` with a sequence number above `after`, oldest first.
    pub fn peek(&self, output: &str, after: i64, limit: usize) -> Result<Vec<Pending>> {
        let guard = self.lock();
        let db = |source| Error::Outbox {
            path: self.path.clone(),
            cause: source,
        };
        let mut stmt = guard
            .conn
            .prepare_cached(
                "SELECT seq, event_id, pipeline, label, payload FROM outbox
                 WHERE output = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![output, after, limit as i64], |row| {
                Ok(Pending {
                    seq: row.get(0)?,
                    event_id: row.get::<_, String>(1)?.parse().unwrap_or_default(),
                    pipeline: row.get(2)?,
                    label: row.get(3)?,
                    payload: row.get(4)?,
                })
            })
            .map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
    }

    /// The oldest pending event of `output`, if any.
    pub fn head(&self, output: &str) -> Result<Option<Pending>> {
        Ok(self.peek(output, 0, 1)?.into_iter().next())
    }

    /// Deletes the rows `seqs` of `output` (acknowledged by it) in one transaction. Returns how
    /// many were still pending (a row dropped meanwhile is not counted).
    pub fn ack(&self, output: &str, seqs: &[i64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let db = |source| Error::Outbox {
            path: self.path.clone(),
            cause: source,
        };
        // A deletion need not be fsynced: if it is lost (power cut, not a process kill: the WAL
        // is in the page cache), the event is delivered again, which at-least-once allows. The
        // next enqueue (synchronous=FULL) syncs it anyway. This halves the fsyncs per event.
        state
            .conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        let result = Self::delete(&mut state.conn, output, seqs);
        state
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        let deleted = result.map_err(db)?;
        if let Some(count) = state.counts.get_mut(output) {
            *count = count.saturating_sub(deleted);
        }
        Ok(deleted)
    }

    fn delete(conn: &mut Connection, output: &str, seqs: &[i64]) -> rusqlite::Result<u64> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = 0u64;
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 AND output = ?2")?;
            for seq in seqs {
                deleted += delete.execute(params![seq, output])? as u64;
            }
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// Number of events pending for `output`.
    pub fn pending(&self, output: &str) -> u64 {
        self.lock().counts.get(output).copied().unwrap_or(0)
    }

    /// Pending events per output, including outputs that are no longer configured.
    pub fn pending_counts(&self) -> BTreeMap<String, u64> {
        self.lock()
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Sequence number of the newest row of `output`, if any (diagnostics).
    pub fn last_seq(&self, output: &str) -> Result<Option<i64>> {
        let guard = self.lock();
        guard
            .conn
            .query_row(
                "SELECT MAX(seq) FROM outbox WHERE output = ?1",
                [output],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|source| Error::Outbox {
                path: self.path.clone(),
                cause: source,
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the connection usable (SQLite rolls back an
        // unfinished transaction when it is dropped), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clipfilter::matcher::Transition;

    fn event(frame: u64) -> Event {
        Event::new("cam", "van", Transition::Start, 0.3, 0.9, frame)
    }

    #[test]
    fn enqueue_peek_ack_in_order_per_output() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let events: Vec<Event> = (0..4).map(event).collect();
        for e in &events {
            assert!(outbox.enqueue(e, &["a", "b", "a"]).unwrap().is_empty());
        }
        assert_eq!(outbox.pending("a"), 4);
        assert_eq!(outbox.pending("b"), 4);
        let a = outbox.peek("a", 0, 10).unwrap();
        assert_eq!(
            a.iter().map(|p| p.event_id).collect::<Vec<_>>(),
            events.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        assert!(a.windows(2).all(|w| w[0].seq < w[1].seq));
        let back: Event = serde_json::from_str(&a[0].payload).unwrap();
        assert_eq!(back, events[0]);

        assert_eq!(outbox.ack("a", &[a[0].seq, a[1].seq]).unwrap(), 2);
        // Acknowledging another output's row deletes nothing.
        let b = outbox.peek("b", 0, 1).unwrap();
        assert_eq!(outbox.ack("a", &[b[0].seq]).unwrap(), 0);
        assert_eq!(outbox.pending("a"), 2);
        assert_eq!(outbox.head("a").unwrap().unwrap().event_id, events[2].id);
        assert_eq!(outbox.peek("a", a[2].seq, 10).unwrap().len(), 1);
        assert_eq!(outbox.pending("b"), 4);
    }

    #[test]
    fn full_queue_drops_the_oldest_of_that_output_only() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.set_max_pending("small", 5);
        let events: Vec<Event> = (0..8).map(event).collect();
        let mut dropped = Vec::new();
        for e in &events {
            dropped.extend(outbox.enqueue(e, &["small", "big"]).unwrap());
        }
        assert_eq!(
            dropped
                .iter()
                .map(|d| (d.output.as_str(), d.event_id))
                .collect::<Vec<_>>(),
            events[..3]
                .iter()
                .map(|e| ("small", e.id))
                .collect::<Vec<_>>()
        );
        assert_eq!(outbox.pending("small"), 5);
        assert_eq!(outbox.pending("big"), 8);
        let left: Vec<_> = outbox
            .peek("small", 0, 100)
            .unwrap()
            .iter()
            .map(|p| p.event_id)
            .collect();
        assert_eq!(left, events[3..].iter().map(|e| e.id).collect::<Vec<_>>());
    }

    #[test]
    fn reopening_keeps_pending_and_sequence_grows() {
        let dir = tempfile::tempdir().unwrap();
        let first_seq = {
            let outbox = Outbox::open(dir.path()).unwrap();
            outbox.enqueue(&event(1), &["a"]).unwrap();
            outbox.enqueue(&event(2), &["a"]).unwrap();
            let head = outbox.head("a").unwrap().unwrap();
            outbox.ack("a", &[head.seq]).unwrap();
            outbox.last_seq("a").unwrap().unwrap()
        };
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.pending("a"), 1);
        assert_eq!(
            outbox.pending_counts(),
            BTreeMap::from([("a".to_owned(), 1)])
        );
        let e = event(3);
        outbox.enqueue(&e, &["a"]).unwrap();
        let all = outbox.peek("a", 0, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[1].seq > first_seq);
        assert_eq!(all[1].event_id, e.id);
    }

    #[test]
    fn a_second_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Outbox::open(dir.path()).unwrap();
        let err = Outbox::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_an_empty_outbox_starts() {
        let dir = tempfile::tempdir().unwrap();
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
        std::fs::write(dir.path().join(FILE_NAME), &garbage).unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.pending_counts(), BTreeMap::new());
        outbox.enqueue(&event(1), &["a"]).unwrap();
        assert_eq!(outbox.pending("a"), 1);
        // The corrupt file is kept, byte for byte, beside the new one.
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&format!("{FILE_NAME}.corrupt-")))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap(), garbage);
    }
}
