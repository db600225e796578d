//! The hub's HTTP side: the repository listing, file URLs, status codes, retries, and resumable,
//! verified downloads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};
use ureq::config::RedirectAuthHeaders;
use ureq::http::{HeaderMap, Response};
use ureq::{Agent, Body};

use super::progress::{FileProgress, ProgressMode};
use super::verify::BlobHasher;
use super::{FetchError, FetchOptions, PlannedFile, RepoInfo, is_commit};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for any single read (headers or body) before the request counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A download cut after making progress is resumed at once this many times before cuts count as
/// failures.
const MAX_INTERRUPTIONS: u32 = 100;
const BUFFER_SIZE: usize = 256 << 10;

/// A client of one hub endpoint, for one fetch.
pub(super) struct Hub<'a> {
    agent: Agent,
    opts: &'a FetchOptions,
}

/// Why an attempt failed, and whether to try again (boxed: errors are large, failures rare).
enum Failure {
    Retry {
        error: Box<FetchError>,
        after: Option<Duration>,
    },
    Fatal(Box<FetchError>),
}

impl Failure {
    fn retry(error: FetchError) -> Self {
        Failure::Retry {
            error: Box::new(error),
            after: None,
        }
    }

    fn fatal(error: FetchError) -> Self {
        Failure::Fatal(Box::new(error))
    }
}

/// What a request was for, to word a 404.
enum Target<'t> {
    Listing,
    File(&'t str),
}

impl<'a> Hub<'a> {
    pub(super) fn new(opts: &'a FetchOptions) -> Result<Self, FetchError> {
        let endpoint = opts.endpoint.as_str();
        let rest = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"));
        if rest.is_none_or(|host| host.is_empty() || host.contains(['?', '#', ' '])) {
            return Err(FetchError::Invalid {
                what: "hub endpoint",
                value: endpoint.to_owned(),
                reason: "expected an http:// or https:// URL such as https://huggingface.co"
                    .to_owned(),
            });
        }
        let agent = Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .user_agent(concat!("clipfilter/", env!("CARGO_PKG_VERSION")))
            .http_status_as_error(false)
            // The token goes to the hub, never to the CDN it redirects LFS files to.
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .max_redirects(10)
            .build()
            .new_agent();
        Ok(Hub { agent, opts })
    }

    fn endpoint(&self) -> &str {
        self.opts.endpoint.trim_end_matches('/')
    }

    /// `{endpoint}/api/models/{repo}/revision/{revision}?blobs=true`.
    pub(super) fn api_url(&self) -> String {
        format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint(),
            self.opts.repo,
            percent_encode(&self.opts.revision, false)
        )
    }

    /// `{endpoint}/{repo}/resolve/{commit}/{path}`.
    pub(super) fn file_url(&self, commit: &str, path: &str) -> String {
        format!(
            "{}/{}/resolve/{commit}/{}",
            self.endpoint(),
            self.opts.repo,
            percent_encode(path, true)
        )
    }

    fn get(
        &self,
        url: &str,
        file: bool,
        range_from: Option<u64>,
    ) -> Result<Response<Body>, ureq::Error> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.opts.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if file {
            // Byte ranges and sizes refer to the stored bytes, not to a compressed transfer.
            request = request.header("Accept-Encoding", "identity");
        }
        if let Some(from) = range_from {
            request = request.header("Range", format!("bytes={from}-"));
        }
        request.call()
    }

    /// The commit and file listing of the requested revision.
    pub(super) fn repo_info(&self) -> Result<RepoInfo, FetchError> {
        let url = self.api_url();
        let mut failures = 0;
        loop {
            match self.try_repo_info(&url) {
                Ok(info) => return Ok(info),
                Err(Failure::Fatal(error)) => return Err(*error),
                Err(Failure::Retry { error, after }) => {
                    if failures >= self.opts.retries {
                        return Err(*error);
                    }
                    let delay = after.unwrap_or_else(|| backoff(failures));
                    failures += 1;
                    warn!(%url, %error, attempt = failures, "request failed; retrying in {delay:.1?}");
                    std::thread::sleep(delay);
                }
            }
        }
    }

    fn try_repo_info(&self, url: &str) -> Result<RepoInfo, Failure> {
        let mut response = self
            .get(url, false, None)
            .map_err(|e| transport_failure(url, e))?;
        if response.status().as_u16() != 200 {
            return Err(self.status_failure(url, &mut response, Target::Listing));
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| transport_failure(url, e))?;
        let bad = |message: String| {
            Failure::fatal(FetchError::BadResponse {
                url: url.to_owned(),
                message,
            })
        };
        let info: RepoInfo = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a repository listing: {e}")))?;
        if !is_commit(&info.sha) {
            return Err(bad(format!("`sha` is not a commit sha: `{}`", info.sha)));
        }
        debug!(commit = %info.sha, files = info.siblings.len(), "repository listing");
        Ok(info)
    }

    /// Downloads `file` from `url` into `part` (resuming what `part` already holds) and checks its
    /// size and hash. On a hash or size mismatch the caller deletes `part`.
    pub(super) fn download(
        &self,
        url: &str,
        part: &Path,
        file: &PlannedFile,
        mode: ProgressMode,
    ) -> Result<(), FetchError> {
        let mut partial = PartialFile::open(part, file)?;
        let mut progress = FileProgress::start(mode, &file.path, file.size, partial.len);
        match self
            .download_into(url, file, &mut partial, &mut progress)
            .and_then(|()| partial.verify(url, file))
        {
            Ok(()) => {
                progress.finish();
                Ok(())
            }
            Err(error) => {
                progress.abandon();
                Err(error)
            }
        }
    }

    fn download_into(
        &self,
        url: &str,
        file: &PlannedFile,
        partial: &mut PartialFile,
        progress: &mut FileProgress,
    ) -> Result<(), FetchError> {
        let mut buf = vec![0; BUFFER_SIZE];
        let mut failures = 0;
        let mut interruptions = 0;
        while partial.len < file.size {
            let before = partial.len;
            let (error, after) = match self.try_download(url, file, partial, progress, &mut buf) {
                Ok(()) => continue,
                Err(Failure::Fatal(error)) => return Err(*error),
                Err(Failure::Retry { error, after }) => (error, after),
            };
            let delay = if partial.len > before && interruptions < MAX_INTERRUPTIONS {
                interruptions += 1;
                failures = 0;
                FIRST_BACKOFF
            } else if failures < self.opts.retries {
                failures += 1;
                after.unwrap_or_else(|| backoff(failures - 1))
            } else {
                return Err(*error);
            };
            progress.interrupted(&error, delay);
            std::thread::sleep(delay);
        }
        Ok(())
    }

    /// One request for the rest of the file.
    fn try_download(
        &self,
        url: &str,
        file: &PlannedFile,
        partial: &mut PartialFile,
        progress: &mut FileProgress,
        buf: &mut [u8],
    ) -> Result<(), Failure> {
        let from = partial.len;
        let mut response = self
            .get(url, true, (from > 0).then_some(from))
            .map_err(|e| transport_failure(url, e))?;
        let bad = |message: String| FetchError::BadResponse {
            url: url.to_owned(),
            message,
        };
        match response.status().as_u16() {
            200 => {
                if from > 0 {
                    debug!(file = %file.path, "the server ignored the Range request; starting over");
                    partial.restart()?;
                    progress.set_position(0);
                }
            }
            206 => {
                let range = header_str(response.headers(), "content-range").unwrap_or("");
                if content_range_start(range) != Some(from) {
                    partial.restart()?;
                    progress.set_position(0);
                    return Err(Failure::retry(bad(format!(
                        "asked for bytes from {from}, got Content-Range `{range}`; starting over"
                    ))));
                }
            }
            416 => {
                partial.restart()?;
                progress.set_position(0);
                return Err(Failure::retry(bad(format!(
                    "range from byte {from} not satisfiable; starting over"
                ))));
            }
            _ => return Err(self.status_failure(url, &mut response, Target::File(&file.path))),
        }
        if let Some(length) = header_str(response.headers(), "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            && partial.len + length > file.size
        {
            return Err(Failure::fatal(FetchError::SizeMismatch {
                file: file.path.clone(),
                url: url.to_owned(),
                expected: file.size,
                actual: partial.len + length,
            }));
        }

        let mut body = response.into_body().into_reader();
        loop {
            let n = match body.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Failure::retry(FetchError::Network {
                        url: url.to_owned(),
                        source: e.into(),
                    }));
                }
            };
            let end = partial.len + n as u64;
            if end > file.size {
                return Err(Failure::fatal(FetchError::SizeMismatch {
                    file: file.path.clone(),
                    url: url.to_owned(),
                    expected: file.size,
                    actual: end,
                }));
            }
            partial.write(&buf[..n])?;
            progress.advance(n as u64);
        }
        if partial.len < file.size {
            return Err(Failure::retry(bad(format!(
                "the response ended after {} of {} bytes",
                partial.len, file.size
            ))));
        }
        Ok(())
    }

    /// Turns a status other than success into an error, and says whether it is worth retrying.
    fn status_failure(
        &self,
        url: &str,
        response: &mut Response<Body>,
        target: Target<'_>,
    ) -> Failure {
        let status = response.status().as_u16();
        let headers = response.headers();
        let code = header_str(headers, "x-error-code").map(str::to_owned);
        let hub_message = header_str(headers, "x-error-message").map(str::to_owned);
        let retry_after = header_str(headers, "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(MAX_BACKOFF));
        let detail = hub_message
            .or_else(|| {
                let text = response
                    .body_mut()
                    .with_config()
                    .limit(16 << 10)
                    .read_to_string()
                    .ok()?;
                message_from_body(&text)
            })
            .unwrap_or_default();

        let url = url.to_owned();
        let repo = &self.opts.repo;
        let revision = &self.opts.revision;
        let token_hint = if self.opts.token.is_some() {
            "the token in HF_TOKEN was refused or has no access to it (gated models also need their \
             terms accepted on the hub)"
        } else {
            "set HF_TOKEN to an access token (gated models also need their terms accepted on the \
             hub)"
        };
        let private_hint = if self.opts.token.is_some() {
            "or the token in HF_TOKEN has no access to it"
        } else {
            "or it is private: then set HF_TOKEN to an access token"
        };
        let not_found = |message: String| {
            Failure::fatal(FetchError::NotFound {
                url: url.clone(),
                message,
            })
        };
        match code.as_deref() {
            Some("RepoNotFound") => {
                return not_found(format!(
                    "repository `{repo}` does not exist, {private_hint}"
                ));
            }
            Some("RevisionNotFound") => {
                return not_found(format!(
                    "revision `{revision}` does not exist in repository `{repo}`"
                ));
            }
            Some("EntryNotFound") => {
                let path = match target {
                    Target::File(path) => path,
                    Target::Listing => "?",
                };
                return not_found(format!(
                    "file `{path}` does not exist in repository `{repo}`"
                ));
            }
            _ => {}
        }
        match status {
            404 => not_found(match target {
                Target::Listing => {
                    format!("repository `{repo}` or its revision `{revision}` does not exist")
                }
                Target::File(path) => {
                    format!("file `{path}` does not exist in repository `{repo}`")
                }
            }),
            401 | 403 => {
                let gated = code.as_deref() == Some("GatedRepo");
                let what = if gated { "is gated" } else { "refused access" };
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" (hub: {detail})")
                };
                Failure::fatal(FetchError::Denied {
                    url,
                    status,
                    message: format!("repository `{repo}` {what}: {token_hint}{detail}"),
                })
            }
            429 | 500..=599 => Failure::Retry {
                error: Box::new(FetchError::Http {
                    url,
                    status,
                    message: detail,
                }),
                after: retry_after,
            },
            _ => Failure::fatal(FetchError::Http {
                url,
                status,
                message: detail,
            }),
        }
    }
}

/// A transport error: worth retrying unless it cannot get better by waiting.
fn transport_failure(url: &str, source: ureq::Error) -> Failure {
    let retry = matches!(
        source,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    );
    let error = FetchError::Network {
        url: url.to_owned(),
        source,
    };
    if retry {
        Failure::retry(error)
    } else {
        Failure::fatal(error)
    }
}

/// The `n`th delay (from 0): 0.5 s doubling up to 30 s, with ±25 % jitter.
fn backoff(n: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << n.min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(0.75 + fastrand::f64() * 0.5)
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first byte of a `Content-Range: bytes {first}-{last}/{total}` header.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes ")?;
    let (first, _) = range.split_once('-')?;
    first.trim().parse().ok()
}

/// The hub's `{"error": "..."}`, or the start of a plain-text body.
fn message_from_body(text: &str) -> Option<String> {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text)
        && let Some(serde_json::Value::String(message)) = map.get("error")
    {
        return Some(message.clone());
    }
    let text = text.trim();
    (!text.is_empty() && !text.starts_with('<')).then(|| text.chars().take(200).collect())
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`), as
/// `huggingface_hub` quotes revisions and file paths.
fn percent_encode(s: &str, keep_slash: bool) -> String {
    use std::fmt::Write;
    s.bytes()
        .fold(String::with_capacity(s.len()), |mut out, b| {
            if b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~')
                || (keep_slash && b == b'/')
            {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
            out
        })
}

/// A `blobs/{hash}.incomplete` file being written, with the running hash of what it holds.
struct PartialFile {
    path: PathBuf,
    file: File,
    len: u64,
    hasher: BlobHasher,
    size: u64,
    expected: super::BlobHash,
}

impl PartialFile {
    /// Opens (or creates) `path`, keeping what an earlier attempt or process left there.
    fn open(path: &Path, file: &PlannedFile) -> Result<Self, FetchError> {
        let io_err = |e| FetchError::io(path, e);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
        }
        let handle = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err)?;
        let mut len = handle.metadata().map_err(io_err)?.len();
        if len > file.size {
            handle.set_len(0).map_err(io_err)?;
            len = 0;
        }
        if len > 0 {
            debug!(file = %file.path, offset = len, "found a partial download");
        }
        let hasher = BlobHasher::over_prefix(&file.hash, file.size, path, len).map_err(io_err)?;
        Ok(PartialFile {
            path: path.to_owned(),
            file: handle,
            len,
            hasher,
            size: file.size,
            expected: file.hash.clone(),
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Failure> {
        self.file
            .write_all(data)
            .map_err(|e| Failure::fatal(FetchError::io(&self.path, e)))?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Drops what was written, to start from byte 0.
    fn restart(&mut self) -> Result<(), Failure> {
        self.file
            .set_len(0)
            .map_err(|e| Failure::fatal(FetchError::io(&self.path, e)))?;
        self.len = 0;
        self.hasher = BlobHasher::new(&self.expected, self.size);
        Ok(())
    }

    /// Flushes the file to disk and checks its hash against the listing.
    fn verify(&mut self, url: &str, file: &PlannedFile) -> Result<(), FetchError> {
        self.file
            .sync_all()
            .map_err(|e| FetchError::io(&self.path, e))?;
        let hasher =
            std::mem::replace(&mut self.hasher, BlobHasher::new(&self.expected, self.size));
        let actual = hasher.finish();
        if actual == file.hash.hex() {
            Ok(())
        } else {
            Err(FetchError::HashMismatch {
                file: file.path.clone(),
                url: url.to_owned(),
                algorithm: file.hash.algorithm(),
                expected: file.hash.hex().to_owned(),
                actual,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_headers() {
        assert_eq!(percent_encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(percent_encode("onnx/a b+.onnx", true), "onnx/a%20b%2B.onnx");
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(
            message_from_body(r#"{"error":"Repository not found"}"#).as_deref(),
            Some("Repository not found")
        );
        assert_eq!(message_from_body("<html>"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(625));
        assert!(backoff(2) >= Duration::from_millis(1500));
        assert!(backoff(40) <= MAX_BACKOFF.mul_f64(1.25));
    }
}
