//! Typed errors of clipfilter-triton.
//!
//! Every error names what it concerns (the endpoint, the model, the tensor, the file) so that the
//! message alone is enough to act on. [`Error::is_endpoint_failure`] tells the pool whether an
//! endpoint should be taken out (it cannot be reached, times out, is not ready) or whether the
//! request itself was wrong (a bad tensor, a model the server rejects the input of).

use std::path::PathBuf;
use std::time::Duration;

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of clipfilter-triton.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value cannot be used (endpoint address, timeout, TLS file).
    #[error("Triton configuration, {field}: {reason}")]
    Config { field: String, reason: String },

    /// TLS was asked for, but the crate was built without its `tls` feature.
    #[error("{endpoint}: TLS requested, but clipfilter-triton was built without its `tls` feature")]
    TlsUnsupported { endpoint: String },

    /// No endpoint is ready: all are down (or none has answered yet). Returned at once, without
    /// waiting; `next_retry` is when the earliest background probe is due.
    #[error(
        "no Triton endpoint is ready for model '{model}' ({total} configured, all down{}); last error: {last_error}",
        next_retry.map(|d| format!(", next probe in {:.1} s", d.as_secs_f64())).unwrap_or_default()
    )]
    NoReadyEndpoint {
        model: String,
        total: usize,
        next_retry: Option<Duration>,
        last_error: String,
    },

    /// A request did not finish within its deadline.
    #[error("{endpoint}: {operation}{} timed out after {:.3} s", for_model(model), timeout.as_secs_f64())]
    Timeout {
        endpoint: String,
        model: Option<String>,
        operation: &'static str,
        timeout: Duration,
    },

    /// The server cannot be reached, or the connection broke.
    #[error(
        "{endpoint}: {operation}{}: cannot reach the server: {cause}",
        for_model(model)
    )]
    Unreachable {
        endpoint: String,
        model: Option<String>,
        operation: &'static str,
        cause: String,
    },

    /// The server answered with a gRPC error status.
    #[error(
        "{endpoint}: {operation}{}: the server answered {code:?}: {message}",
        for_model(model)
    )]
    Status {
        endpoint: String,
        model: Option<String>,
        operation: &'static str,
        code: tonic::Code,
        message: String,
    },

    /// The server, or one of its models, says it is not ready (`live`: the server answers
    /// ServerLive, it is loading or shutting down).
    #[error(
        "{endpoint}: {} is not ready{}",
        model.as_ref().map_or("the server".to_string(), |m| format!("model '{m}'")),
        if model.is_none() && !live { " (not live either)" } else { "" }
    )]
    NotReady {
        endpoint: String,
        model: Option<String>,
        live: bool,
    },

    /// The server's answer breaks the protocol or does not fit the request.
    #[error("{endpoint}: model '{model}': invalid response: {reason}")]
    BadResponse {
        endpoint: String,
        model: String,
        reason: String,
    },

    /// The server's model does not fit the local model (input shape or type, embedding size).
    #[error("{endpoint}: model '{model}' does not match the local model: {}", problems.join("; "))]
    MetadataMismatch {
        endpoint: String,
        model: String,
        problems: Vec<String>,
    },

    /// A tensor is inconsistent (data size against shape and type, an unknown data type).
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },

    /// The blocking API was called from a thread that runs an async runtime.
    #[error(
        "clipfilter-triton's blocking API was called from inside an async runtime; call it from a plain thread"
    )]
    InsideAsyncRuntime,

    /// The client's own runtime could not be started.
    #[error("cannot start the Triton client runtime: {cause}")]
    Runtime { cause: std::io::Error },

    /// Reading or writing a file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// A file cannot be used: an ONNX model that cannot be read or folded, a preprocessor config
    /// without usable values.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
}

fn for_model(model: &Option<String>) -> String {
    model
        .as_ref()
        .map(|m| format!(" for model '{m}'"))
        .unwrap_or_default()
}

impl Error {
    /// Whether this error says that the endpoint is unhealthy (unreachable, timing out, not ready,
    /// overloaded, shutting down), so that the pool takes it out and tries another. Errors about the
    /// request itself (bad tensors, invalid arguments, a mismatching model) are not.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Unreachable { .. } | Error::NotReady { .. } => true,
            Error::Status { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Cancelled
                    | tonic::Code::Unimplemented
            ),
            _ => false,
        }
    }

    /// The endpoint this error concerns, when it concerns one.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Error::TlsUnsupported { endpoint }
            | Error::Timeout { endpoint, .. }
            | Error::Unreachable { endpoint, .. }
            | Error::Status { endpoint, .. }
            | Error::NotReady { endpoint, .. }
            | Error::BadResponse { endpoint, .. }
            | Error::MetadataMismatch { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tensor(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
