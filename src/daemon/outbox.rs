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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::daemon::event::Event;
use crate::error::{Error, Result};

/// File name of the outbox database inside the state folder.
pub const FILE_NAME: &str = "outbox.sqlite3";

/// Default bound on the number of pending events per output.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;

const SCHEMA_VERSION: i64 = 1;

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

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
    pub fn open(state_dir: &Path) -> Result<Outbox> {
        std::fs::create_dir_all(state_dir).map_err(|e| Error::io(state_dir, e))?;
        let path = state_dir.join(FILE_NAME);
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
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
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
        let State {
            conn,
            counts,
            limits,
        } = &mut *guard;
        let db = |source| Error::Outbox {
            path: self.path.clone(),
            cause: source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut dropped = Vec::new();
        let mut new_counts = Vec::with_capacity(targets.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO outbox (output, event_id, pipeline, label, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db)?;
            let mut drop_oldest = tx
                .prepare_cached(
                    "DELETE FROM outbox WHERE seq IN
                         (SELECT seq FROM outbox WHERE output = ?1 ORDER BY seq LIMIT ?2)
                     RETURNING seq, event_id",
                )
                .map_err(db)?;
            for output in targets {
                let limit = limits.get(output).copied().unwrap_or(DEFAULT_MAX_PENDING);
                let count = counts.get(output).copied().unwrap_or(0);
                let excess = (count + 1).saturating_sub(limit);
                let mut removed = 0;
                if excess > 0 {
                    let rows = drop_oldest
                        .query_map(params![output, excess], |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                        })
                        .map_err(db)?;
                    for row in rows {
                        let (seq, id) = row.map_err(db)?;
                        removed += 1;
                        dropped.push(Dropped {
                            output: output.to_owned(),
                            seq,
                            event_id: id.parse().unwrap_or_default(),
                        });
                    }
                }
                insert
                    .execute(params![
                        output,
                        event_id,
                        event.pipeline,
                        event.label,
                        payload
                    ])
                    .map_err(db)?;
                new_counts.push((output, count - removed + 1));
            }
        }
        tx.commit().map_err(db)?;
        for (output, count) in new_counts {
            counts.insert(output.to_owned(), count);
        }
        Ok(dropped)
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
        let State { conn, counts, .. } = &mut *guard;
        let db = |source| Error::Outbox {
            path: self.path.clone(),
            cause: source,
        };
        // A deletion need not be fsynced: if it is lost (power cut, not a process kill: the WAL
        // is in the page cache), the event is delivered again, which at-least-once allows. The
        // next enqueue (synchronous=FULL) syncs it anyway. This halves the fsyncs per event.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        let result = Self::delete(conn, output, seqs);
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        let deleted = result.map_err(db)?;
        if let Some(count) = counts.get_mut(output) {
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
}
