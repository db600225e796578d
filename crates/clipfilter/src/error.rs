//! Typed errors of the clipfilter library.
//!
//! Every error says what it concerns (a file, a field, a model, a provider) so that the message a
//! user reads is enough to fix the problem. Binaries wrap these in `anyhow` and print the whole
//! chain; [`Error::is_user_error`] tells them whether the cause is bad input (exit code 2) or a
//! runtime failure (exit code 1).

use std::path::{Path, PathBuf};

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in a text file (TOML, JSON) a problem is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted field path, such as `label[2].min_cosine`.
    pub field: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        if let Some(line) = self.line {
            write!(f, "line {line}")?;
            if let Some(col) = self.column {
                write!(f, ", column {col}")?;
            }
            sep = ", ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}field `{field}`")?;
        }
        Ok(())
    }
}

impl Location {
    /// A location from a byte offset into `text`.
    pub fn from_offset(text: &str, offset: usize, field: Option<String>) -> Self {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        Location {
            line: Some(line),
            column: Some(column),
            field,
        }
    }

    /// A location naming only a field.
    pub fn field(field: impl Into<String>) -> Self {
        Location {
            field: Some(field.into()),
            ..Default::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.line.is_none() && self.field.is_none()
    }
}

/// An error of the clipfilter library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    /// (The cause is part of the message, not a separate `source`, so that `{:#}` does not
    /// print it twice.)
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// A configuration or label file is invalid.
    #[error("{}{}{}: {message}", path.display(), if location.is_empty() { "" } else { ": " }, location)]
    Config {
        path: PathBuf,
        location: Location,
        message: String,
    },

    /// A value given on the command line or as an element property is invalid.
    #[error("invalid {what}: {message}")]
    InvalidInput { what: String, message: String },

    /// A model folder is missing files, or its files disagree with each other.
    #[error("model {}: {message}", dir.display())]
    Model { dir: PathBuf, message: String },

    /// ONNX Runtime could not be found or loaded.
    #[error("ONNX Runtime library: {message}")]
    RuntimeLibrary { message: String },

    /// ONNX Runtime failed while creating a session or running a model.
    #[error("{context}: {cause}")]
    Onnx { context: String, cause: ort::Error },

    /// An execution provider that was required is not available.
    #[error("execution provider {provider}: {message}")]
    Provider { provider: String, message: String },

    /// An image file could not be decoded.
    #[error("{}: not a readable image: {message}", path.display())]
    Image { path: PathBuf, message: String },

    /// Tokenisation failed.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// The inference worker stopped or refused the work.
    #[error("inference worker: {message}")]
    Worker { message: String },

    /// Remote inference (Triton Inference Server) failed, or cannot be set up.
    #[error("{context}: {cause}")]
    Remote {
        context: String,
        cause: clipfilter_triton::Error,
    },

    /// Several problems in what the user gave, found in one pass (each names its file, line and
    /// field); shown one per line.
    #[error("{}", problem_lines(.0))]
    Problems(Vec<Error>),
}

fn problem_lines(problems: &[Error]) -> String {
    problems
        .iter()
        .map(Error::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects the problems a validation finds, so that all of them are reported at once rather
/// than the first: steps push into it and carry on, [`Problems::finish`] says how it went.
#[derive(Debug, Default)]
pub struct Problems(Vec<Error>);

impl Problems {
    /// Records a problem ([`Error::Problems`] are taken apart).
    pub fn push(&mut self, problem: Error) {
        match problem {
            Error::Problems(list) => self.0.extend(list),
            one => self.0.push(one),
        }
    }

    /// The value of `result`, or `None` once its error is recorded.
    pub fn keep<T>(&mut self, result: Result<T>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` without problems, the problem itself when there is one, [`Error::Problems`] with
    /// more, in the order of their lines (those without a line last, in the order found).
    pub fn finish(mut self) -> Result<()> {
        self.0.sort_by_key(|e| match e {
            Error::Config { location, .. } => location.line.unwrap_or(usize::MAX),
            _ => usize::MAX,
        });
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(Error::Problems(self.0)),
        }
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            cause: source,
        }
    }

    /// An [`Error::Model`] for `dir`.
    pub fn model(dir: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Model {
            dir: dir.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// An [`Error::Config`] for `path` at `location`.
    pub fn config(path: impl AsRef<Path>, location: Location, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            location,
            message: message.into(),
        }
    }

    /// An [`Error::Config`] for a TOML parse error in `text` (the contents of `path`), located
    /// at the line and column of the error.
    pub fn toml(path: impl AsRef<Path>, text: &str, e: &toml::de::Error) -> Self {
        let loc = e
            .span()
            .map(|s| Location::from_offset(text, s.start, None))
            .unwrap_or_default();
        Error::config(path, loc, e.message().trim().to_string())
    }

    /// An [`Error::Config`] for a JSON parse error in `path`, located at its line and column.
    pub fn json(path: impl AsRef<Path>, e: &serde_json::Error) -> Self {
        Error::config(
            path,
            Location {
                line: Some(e.line()),
                column: Some(e.column()),
                field: None,
            },
            e.to_string(),
        )
    }

    /// An [`Error::InvalidInput`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            what: what.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Remote`] with `context`.
    pub fn remote(context: impl Into<String>, cause: clipfilter_triton::Error) -> Self {
        Error::Remote {
            context: context.into(),
            cause,
        }
    }

    /// True when remote inference could not run because no endpoint can serve it now (all
    /// down, unreachable, timing out, not ready): the sample is dropped and counted, not an
    /// inference error, and it passes when an endpoint is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Remote { cause, .. } => {
                matches!(cause, clipfilter_triton::Error::NoReadyEndpoint { .. })
                    || cause.is_endpoint_failure()
            }
            _ => false,
        }
    }

    /// An [`Error::Onnx`] with `context`.
    pub fn onnx(context: impl Into<String>, source: ort::Error) -> Self {
        Error::Onnx {
            context: context.into(),
            cause: source,
        }
    }

    /// True when the error comes from what the user gave (files, flags, properties) rather than
    /// from the machine or the network: such errors exit with code 2.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Config { .. }
            | Error::InvalidInput { .. }
            | Error::Model { .. }
            | Error::Image { .. }
            | Error::Tokenizer { .. }
            | Error::Problems(_) => true,
            Error::Io { cause, .. } => matches!(
                cause.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::NotADirectory
            ),
            Error::Remote { cause, .. } => matches!(
                cause,
                clipfilter_triton::Error::Config { .. }
                    | clipfilter_triton::Error::MetadataMismatch { .. }
                    | clipfilter_triton::Error::TlsUnsupported { .. }
            ),
            Error::RuntimeLibrary { .. }
            | Error::Onnx { .. }
            | Error::Provider { .. }
            | Error::Worker { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_from_offset_counts_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        let loc = Location::from_offset(text, 8, Some("bb".into()));
        assert_eq!(loc.line, Some(2));
        assert_eq!(loc.column, Some(3));
        let err = Error::config("labels.toml", loc, "bad");
        assert_eq!(
            err.to_string(),
            "labels.toml: line 2, column 3, field `bb`: bad"
        );
    }

    #[test]
    fn problems_are_reported_together_one_per_line() {
        assert!(Problems::default().finish().is_ok());

        let mut one = Problems::default();
        assert_eq!(one.keep(Ok::<_, Error>(3)), Some(3));
        assert_eq!(one.keep::<u8>(Err(Error::invalid("a", "bad"))), None);
        assert!(!one.is_empty());
        let e = one.finish().unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");

        let mut many = Problems::default();
        many.push(Error::config(
            "c.toml",
            Location::from_offset("a\nb\n", 2, Some("w".into())),
            "on line 2",
        ));
        many.push(Error::config("c.toml", Location::field("x"), "first"));
        many.push(Error::Problems(vec![
            Error::config("c.toml", Location::field("y"), "second"),
            Error::config("c.toml", Location::field("z"), "third"),
        ]));
        let e = many.finish().unwrap_err();
        assert!(e.is_user_error());
        assert_eq!(
            e.to_string(),
            "c.toml: line 2, column 1, field `w`: on line 2\nc.toml: field `x`: first\n\
             c.toml: field `y`: second\nc.toml: field `z`: third"
        );
    }
}
