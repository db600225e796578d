//! Embedding caches: a bounded one in memory (per text encoder) and one on disk shared by every
//! process on the machine (the element, the daemon, the commands).
//!
//! The disk cache is an SQLite database, `embeddings.sqlite3`, in
//! `$CLIPFILTER_EMBEDDING_CACHE` (a folder, or `off`), else `$CACHE_DIRECTORY/embeddings` under
//! systemd (`CacheDirectory=`), else `$XDG_CACHE_HOME/clipfilter/embeddings`
//! (`~/.cache/clipfilter/embeddings`). Entries are raw embeddings (float32, exactly as the tower
//! gave them) keyed by a SHA-256 of what determines them: the tower's files (the model
//! fingerprint: contents of the ONNX graph and of the tokenizer or preprocessor configuration),
//! the variant, and the text (a prompt already expanded with its template) or the image file's
//! bytes. A key never goes stale: a changed model or text is another key. The database can be
//! deleted at any time; it is rebuilt as embeddings are computed again.
//!
//! Model fingerprints are SHA-256s of file contents, remembered in the same database by path,
//! size and modification time, so a model is read through once, not at every load.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Environment variable naming the disk cache folder (`off` disables it).
pub const CACHE_ENV: &str = "CLIPFILTER_EMBEDDING_CACHE";
/// File name of the database in the cache folder.
pub const FILE_NAME: &str = "embeddings.sqlite3";

const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows per statement batch when looking up or storing many keys.
const CHUNK: usize = 512;

/// A cache key: SHA-256 of its parts, each prefixed with its length.
pub type Key = [u8; 32];

/// The key of `parts` (unambiguous: each part is length-prefixed).
pub fn key(parts: &[&[u8]]) -> Key {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

// ---------------------------------------------------------------------------------------------
// Disk.

/// The embedding database shared by the processes of a machine.
pub struct DiskCache {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The default cache folder (see the module documentation); `None` when turned off.
pub fn default_dir() -> Option<PathBuf> {
    default_dir_with(|name| std::env::var(name).ok())
}

/// [`default_dir`] reading variables through `env`.
pub fn default_dir_with(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty(env(CACHE_ENV)) {
        return (!dir.eq_ignore_ascii_case("off")).then(|| PathBuf::from(dir));
    }
    if let Some(cache) = non_empty(env("CACHE_DIRECTORY"))
        && let Some(first) = cache.split(':').find(|s| !s.is_empty())
    {
        return Some(Path::new(first).join("embeddings"));
    }
    let base = non_empty(env("XDG_CACHE_HOME"))
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| non_empty(env("HOME")).map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("clipfilter").join("embeddings"))
}

fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::io(path, std::io::Error::other(e))
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    (b.len().is_multiple_of(4) && !b.is_empty()).then(|| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

impl DiskCache {
    /// Opens the default cache ([`default_dir`]); `None` (with a warning) when it is turned off
    /// or cannot be opened: computing embeddings again is always possible.
    pub fn open_default() -> Option<DiskCache> {
        let dir = default_dir()?;
        match DiskCache::open(&dir) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "embedding cache not used");
                None
            }
        }
    }

    /// Opens (creating) the cache database in `dir`.
    pub fn open(dir: &Path) -> Result<DiskCache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        let err = |e| sql_error(&path, e);
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version != 0 && version != SCHEMA_VERSION {
            return Err(Error::invalid(
                path.display().to_string(),
                format!(
                    "embedding cache of schema version {version}, this build uses {SCHEMA_VERSION}: delete the file"
                ),
            ));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS fingerprints (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);",
        )
        .map_err(err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        Ok(DiskCache {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves SQLite consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored embedding of each key (`None` where there is none).
    pub fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<f32>>>> {
        let err = |e| sql_error(&self.path, e);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err)?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut stmt = tx
                .prepare_cached("SELECT data FROM embeddings WHERE key = ?1")
                .map_err(err)?;
            for k in keys {
                let blob: Option<Vec<u8>> = stmt
                    .query_row([&k[..]], |r| r.get(0))
                    .optional()
                    .map_err(err)?;
                out.push(blob.as_deref().and_then(from_bytes));
            }
        }
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// Stores embeddings (in transactions of a few hundred).
    pub fn put_many(&self, entries: &[(Key, &[f32])]) -> Result<()> {
        let err = |e| sql_error(&self.path, e);
        let mut conn = self.conn();
        for chunk in entries.chunks(CHUNK) {
            let tx = conn.transaction().map_err(err)?;
            {
                let mut stmt = tx
                    .prepare_cached("INSERT OR REPLACE INTO embeddings (key, data) VALUES (?1, ?2)")
                    .map_err(err)?;
                for (k, v) in chunk {
                    stmt.execute(params![&k[..], to_bytes(v)]).map_err(err)?;
                }
            }
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    /// SHA-256 (hex) of the contents of `files` in order, remembered by path, size and
    /// modification time.
    pub fn fingerprint(&self, files: &[&Path]) -> Result<String> {
        let mut h = Sha256::new();
        for f in files {
            h.update(self.file_hash(f)?.as_bytes());
        }
        Ok(hex(&h.finalize()))
    }

    fn file_hash(&self, path: &Path) -> Result<String> {
        let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(path, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        let size = meta.len() as i64;
        let name = canonical.display().to_string();
        let err = |e| sql_error(&self.path, e);
        let known: Option<String> = self
            .conn()
            .query_row(
                "SELECT sha256 FROM fingerprints WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
                params![name, size, mtime],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if let Some(h) = known {
            return Ok(h);
        }
        let h = file_sha256(&canonical)?;
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO fingerprints (path, size, mtime_ns, sha256) VALUES (?1, ?2, ?3, ?4)",
                params![name, size, mtime, h],
            )
            .map_err(err)?;
        Ok(h)
    }
}

/// SHA-256 (hex) of the contents of `files` in order, without remembering anything.
pub fn fingerprint_files(files: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    for f in files {
        h.update(file_sha256(f)?.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_cache_round_trips_and_remembers_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path()).unwrap();
        let (a, b) = (key(&[b"m", b"red"]), key(&[b"mr", b"ed"]));
        assert_ne!(a, b, "parts are length-prefixed");
        cache.put_many(&[(a, &[1.0, -2.5][..])]).unwrap();
        assert_eq!(
            cache.get_many(&[a, b]).unwrap(),
            vec![Some(vec![1.0, -2.5]), None]
        );
        let file = dir.path().join("model.onnx");
        std::fs::write(&file, b"weights").unwrap();
        let f1 = cache.fingerprint(&[&file]).unwrap();
        assert_eq!(f1, fingerprint_files(&[&file]).unwrap());
        assert_eq!(cache.fingerprint(&[&file]).unwrap(), f1);
        std::fs::write(&file, b"other weights").unwrap();
        assert_ne!(cache.fingerprint(&[&file]).unwrap(), f1);
        // A second process (connection) sees the same entries.
        let again = DiskCache::open(dir.path()).unwrap();
        assert_eq!(again.get_many(&[a]).unwrap()[0], Some(vec![1.0, -2.5]));
    }

    #[test]
    fn default_folder() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(default_dir_with(env(&[(CACHE_ENV, "off")])), None);
        assert_eq!(
            default_dir_with(env(&[(CACHE_ENV, "/c"), ("HOME", "/h")])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            default_dir_with(env(&[("CACHE_DIRECTORY", "/var/cache/clipfilter:/x")])),
            Some(PathBuf::from("/var/cache/clipfilter/embeddings"))
        );
        assert_eq!(
            default_dir_with(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/clipfilter/embeddings"))
        );
    }
}
