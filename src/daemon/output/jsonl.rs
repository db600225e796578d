//! The JSON-lines output: one event per line on stdout or appended to a file.
//!
//! A batch is written with one `write_all` and, for a file, made durable with `fsync`
//! (`File::sync_data`) before it is acknowledged. After a write error the file is reopened on the
//! next attempt (it may have been rotated or its disk refilled).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::daemon::outbox::Pending;
use crate::daemon::output::JsonlConfig;
use crate::daemon::output::worker::{SendError, SyncOutput};
use crate::error::{Error, Result};

/// Most events written (and fsynced) at once.
const MAX_BATCH: usize = 256;

enum Target {
    Stdout,
    File { path: PathBuf, file: Option<File> },
}

/// Writes events as JSON lines.
pub(crate) struct JsonlOutput {
    target: Target,
    buf: Vec<u8>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl JsonlOutput {
    /// Opens the target now, so that a wrong path is reported when the daemon starts.
    pub(crate) fn open(config: &JsonlConfig) -> Result<JsonlOutput> {
        let target = if config.path.as_os_str() == "-" {
            Target::Stdout
        } else {
            let file = open_append(&config.path).map_err(|e| Error::io(&config.path, e))?;
            Target::File {
                path: config.path.clone(),
                file: Some(file),
            }
        };
        Ok(JsonlOutput {
            target,
            buf: Vec::new(),
        })
    }
}

impl SyncOutput for JsonlOutput {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn send(&mut self, batch: &[Pending]) -> Result<(), (usize, SendError)> {
        self.buf.clear();
        for event in batch {
            self.buf.extend_from_slice(event.payload.as_bytes());
            self.buf.push(b'\n');
        }
        match &mut self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.buf)
                    .and_then(|()| out.flush())
                    .map_err(|e| (0, SendError(format!("stdout: {e}"))))
            }
            Target::File { path, file } => {
                let result = (|| {
                    if file.is_none() {
                        *file = Some(open_append(path)?);
                    }
                    let f = file
                        .as_mut()
                        .ok_or_else(|| std::io::Error::other("not open"))?;
                    f.write_all(&self.buf)?;
                    f.sync_data()
                })();
                result.map_err(|e| {
                    // A partial line may have been written; the next attempt starts on a fresh
                    // handle, and readers skip the torn line (at-least-once delivery resends it).
                    *file = None;
                    (0, SendError(format!("{}: {e}", path.display())))
                })
            }
        }
    }
}
