//! Errors of the daemon: the engine's, plus what only the daemon does (its event outbox, its
//! HTTP listener).

use std::path::{Path, PathBuf};

pub use clipfilter::error::Location;

/// Result alias of the daemon.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the daemon or of the command line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the engine: files, configuration, models, ONNX Runtime, the inference worker.
    #[error(transparent)]
    Engine(#[from] clipfilter::Error),

    /// The event outbox database could not be opened, read or written.
    #[error("event outbox {}: {cause}", path.display())]
    Outbox {
        path: PathBuf,
        cause: rusqlite::Error,
    },

    /// The sample history database could not be opened, read or written.
    #[error("sample history {}: {cause}", path.display())]
    History {
        path: PathBuf,
        cause: rusqlite::Error,
    },

    /// A server socket (metrics, health, status) could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
}

/// True when an SQLite error says the disk (or the database's size limit) is full.
pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

impl Error {
    /// An I/O error on `path` (see [`clipfilter::Error::io`]).
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        clipfilter::Error::io(path, source).into()
    }

    /// A configuration error (see [`clipfilter::Error::config`]).
    pub fn config(path: impl AsRef<Path>, location: Location, message: impl Into<String>) -> Self {
        clipfilter::Error::config(path, location, message).into()
    }

    /// A TOML parse error in `text`, the contents of `path` (see [`clipfilter::Error::toml`]).
    pub fn toml(path: impl AsRef<Path>, text: &str, e: &toml::de::Error) -> Self {
        clipfilter::Error::toml(path, text, e).into()
    }

    /// An invalid value (see [`clipfilter::Error::invalid`]).
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        clipfilter::Error::invalid(what, message).into()
    }

    /// A model folder problem (see [`clipfilter::Error::model`]).
    pub fn model(dir: impl AsRef<Path>, message: impl Into<String>) -> Self {
        clipfilter::Error::model(dir, message).into()
    }

    /// A worker thread that stopped or refused work.
    pub fn worker(message: impl Into<String>) -> Self {
        clipfilter::Error::Worker {
            message: message.into(),
        }
        .into()
    }

    /// The engine's error, when it is one.
    pub fn engine(&self) -> Option<&clipfilter::Error> {
        match self {
            Error::Engine(e) => Some(e),
            _ => None,
        }
    }

    /// True when the outbox refused a write because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Outbox { cause, .. } if is_disk_full(cause))
    }

    /// True when the error comes from what the user gave (exit code 2), see
    /// [`clipfilter::Error::is_user_error`].
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Engine(e) => e.is_user_error(),
            Error::Outbox { .. } | Error::History { .. } => false,
            Error::Bind { .. } => true,
        }
    }
}
