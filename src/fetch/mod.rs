//! Downloading a CLIP model from a Hugging Face hub endpoint.
//!
//! The protocol is the one `huggingface_hub` speaks:
//! `GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true` names the commit the revision
//! points at and lists the repository's files with their sizes and hashes (the sha256 of LFS files,
//! the git blob id of the others); each file then comes from
//! `GET {endpoint}/{repo}/resolve/{commit}/{path}`, which the hub redirects to a CDN for LFS files.
//! Files are fetched by commit, never by branch name, so a branch that moves during a download
//! cannot mix two versions.
//!
//! The cache is the hub's own cache layout, so a folder made by `huggingface-cli download` is
//! reused and the other way round:
//!
//! ```text
//! {cache_dir}/models--{org}--{name}/
//!     blobs/{sha256 or git blob id}        file contents, named by hash
//!     blobs/{hash}.incomplete              a download in progress (resumed with Range requests)
//!     snapshots/{commit}/{path}            relative symlinks into blobs/: the model folder
//!     refs/{revision}                      the commit the revision last pointed at
//! {cache_dir}/.locks/models--{org}--{name}/{hash}.lock
//! ```
//!
//! Every downloaded file is checked against the listing before it is renamed into `blobs/`: its
//! size, and its sha256 (LFS files) or git blob id (other files).

mod cache;
mod hub;
mod progress;
mod verify;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use indicatif::BinaryBytes;
use serde::Deserialize;
use tracing::{info, info_span, warn};

use cache::HubCache;
use clipfilter::model::Variant;
use hub::Hub;
use progress::ProgressMode;

/// The repository fetched when none is named: OpenAI's CLIP ViT-B/32 in the transformers.js layout.
pub const DEFAULT_REPO: &str = "Xenova/clip-vit-base-patch32";
/// The revision fetched when none is named.
pub const DEFAULT_REVISION: &str = "main";
/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// How many times a failed request is retried by default.
pub const DEFAULT_RETRIES: u32 = 5;

/// Files every model needs, whatever the variant.
const REQUIRED_FILES: [&str; 3] = ["config.json", "preprocessor_config.json", "tokenizer.json"];
/// Files fetched when the repository has them.
const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];
/// Every variant, in the order they are listed to users.
const VARIANTS: [Variant; 3] = [Variant::Fp32, Variant::Fp16, Variant::Quantized];

/// The image and text towers of `variant`: `onnx/vision_model{suffix}.onnx`,
/// `onnx/text_model{suffix}.onnx`.
fn tower_files(variant: Variant) -> [String; 2] {
    let suffix = variant.suffix();
    [
        format!("onnx/vision_model{suffix}.onnx"),
        format!("onnx/text_model{suffix}.onnx"),
    ]
}

/// What to fetch, from where, and into which cache.
///
/// [`FetchOptions::from_env`] fills in the defaults; change fields afterwards as needed.
#[derive(Clone)]
pub struct FetchOptions {
    /// Hub repository id, `org/name`.
    pub repo: String,
    /// Branch, tag or commit sha (default `main`).
    pub revision: String,
    /// Which ONNX towers to fetch.
    pub variant: Variant,
    /// Base URL of the hub, without a trailing slash (`HF_ENDPOINT`, else `https://huggingface.co`).
    pub endpoint: String,
    /// Access token for gated or private repositories (`HF_TOKEN`), sent as a Bearer token to the
    /// endpoint only (never to the CDN it redirects to) and never logged.
    pub token: Option<String>,
    /// Root of the hub-layout cache (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// Use the cache only, never the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show download progress: a bar per file on a terminal, log lines every 10 % otherwise.
    pub progress: bool,
    /// How many times a request that failed for a passing reason (connection error, timeout,
    /// HTTP 5xx or 429) is retried, with exponential backoff. A download that was cut after making
    /// progress is resumed without using up a retry.
    pub retries: u32,
}

impl fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchOptions")
            .field("repo", &self.repo)
            .field("revision", &self.revision)
            .field("variant", &self.variant)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .field("retries", &self.retries)
            .finish()
    }
}

impl FetchOptions {
    /// Options for `repo` with defaults from the process environment: `HF_ENDPOINT`, `HF_TOKEN`
    /// (or the older `HUGGING_FACE_HUB_TOKEN`), `HF_HUB_OFFLINE`, and the cache folder of
    /// [`default_cache_dir`].
    pub fn from_env(repo: &str) -> Self {
        Self::from_env_with(repo, |name| std::env::var(name).ok())
    }

    /// [`FetchOptions::from_env`] reading variables through `env` instead of the process
    /// environment.
    pub fn from_env_with(repo: &str, env: impl Fn(&str) -> Option<String>) -> Self {
        let endpoint = non_empty(env("HF_ENDPOINT"))
            .map(|e| e.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let token = non_empty(env("HF_TOKEN")).or_else(|| non_empty(env("HUGGING_FACE_HUB_TOKEN")));
        let offline = non_empty(env("HF_HUB_OFFLINE")).is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        FetchOptions {
            repo: repo.to_owned(),
            revision: DEFAULT_REVISION.to_owned(),
            variant: Variant::default(),
            endpoint,
            token,
            cache_dir: default_cache_dir_with(&env),
            offline,
            progress: true,
            retries: DEFAULT_RETRIES,
        }
    }

    fn not_cached(&self, reason: String) -> FetchError {
        FetchError::NotCached {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            cache_dir: self.cache_dir.clone(),
            reason,
        }
    }
}

/// Where models are cached by default: `$CLIPFILTER_CACHE_DIR`; else, under systemd with
/// `StateDirectory=`, `$STATE_DIRECTORY/models`; else `$XDG_CACHE_HOME/clipfilter/models`
/// (`~/.cache/clipfilter/models`).
pub fn default_cache_dir() -> PathBuf {
    default_cache_dir_with(|name| std::env::var(name).ok())
}

/// [`default_cache_dir`] reading variables through `env` instead of the process environment.
pub fn default_cache_dir_with(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = non_empty(env("CLIPFILTER_CACHE_DIR")) {
        return PathBuf::from(dir);
    }
    // systemd sets one path per StateDirectory= entry, separated by colons.
    if let Some(state) = non_empty(env("STATE_DIRECTORY"))
        && let Some(first) = state.split(':').find(|s| !s.is_empty())
    {
        return Path::new(first).join("models");
    }
    let cache = non_empty(env("XDG_CACHE_HOME"))
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(dirs::cache_dir)
        .unwrap_or_else(std::env::temp_dir);
    cache.join("clipfilter").join("models")
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Why a model could not be fetched. Each error names the URL, file or folder concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// A repository id, revision or endpoint is malformed.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// The repository, revision or file does not exist (HTTP 404, or the hub's `RepoNotFound`).
    #[error("{message} ({url})")]
    NotFound { url: String, message: String },

    /// The hub refused access (HTTP 401/403): a private or gated repository.
    #[error("access denied (HTTP {status}) to {url}: {message}")]
    Denied {
        url: String,
        status: u16,
        message: String,
    },

    /// The hub answered with an unexpected HTTP status (after retries for 5xx and 429).
    #[error("HTTP {status} from {url}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http {
        url: String,
        status: u16,
        message: String,
    },

    /// The hub could not be reached, or the connection failed (after retries).
    #[error("cannot download {url}: {source}")]
    Network {
        url: String,
        #[source]
        source: ureq::Error,
    },

    /// The hub answered something this client cannot use.
    #[error("unexpected answer from {url}: {message}")]
    BadResponse { url: String, message: String },

    /// The repository lacks files the requested variant needs.
    #[error(
        "{repo} at revision {revision} lacks files of the {variant} model: {}; complete variants there: {}",
        missing.join(", "),
        list_variants(available)
    )]
    MissingFiles {
        repo: String,
        revision: String,
        variant: Variant,
        missing: Vec<String>,
        available: Vec<Variant>,
    },

    /// A downloaded file's hash differs from the one the hub lists; the partial file was deleted.
    #[error(
        "{file}: {algorithm} of the download from {url} is {actual}, the hub lists {expected}; the partial file was deleted"
    )]
    HashMismatch {
        file: String,
        url: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },

    /// A downloaded file is larger than the hub lists; the partial file was deleted.
    #[error(
        "{file}: {url} sends {actual} bytes, the hub lists {expected}; the partial file was deleted"
    )]
    SizeMismatch {
        file: String,
        url: String,
        expected: u64,
        actual: u64,
    },

    /// Offline (or with the hub unreachable) the cache has no complete copy of the revision.
    #[error(
        "{repo} at revision {revision} is not fully cached in {}: {reason}; fetch it once with access to the hub",
        cache_dir.display()
    )]
    NotCached {
        repo: String,
        revision: String,
        cache_dir: PathBuf,
        reason: String,
    },

    /// Reading or writing the cache failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// The URL the error concerns, when it concerns one.
    pub fn url(&self) -> Option<&str> {
        match self {
            FetchError::NotFound { url, .. }
            | FetchError::Denied { url, .. }
            | FetchError::Http { url, .. }
            | FetchError::Network { url, .. }
            | FetchError::BadResponse { url, .. }
            | FetchError::HashMismatch { url, .. }
            | FetchError::SizeMismatch { url, .. } => Some(url),
            _ => None,
        }
    }

    /// True when the cause is what the user asked for (a repository, revision or variant that does
    /// not exist, a missing token, an uncached model offline) rather than the network or the disk.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            FetchError::Invalid { .. }
                | FetchError::NotFound { .. }
                | FetchError::Denied { .. }
                | FetchError::MissingFiles { .. }
                | FetchError::NotCached { .. }
        )
    }

    /// True when the hub could not be reached or is failing, so that a cached copy may serve.
    fn hub_unavailable(&self) -> bool {
        match self {
            FetchError::Network { .. } => true,
            FetchError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        FetchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn list_variants(variants: &[Variant]) -> String {
    if variants.is_empty() {
        "none".to_owned()
    } else {
        variants
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The answer of `GET /api/models/{repo}/revision/{revision}?blobs=true`.
#[derive(Debug, Deserialize)]
struct RepoInfo {
    /// The commit the revision points at.
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

/// One file of a repository, as the hub lists it.
#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    sha256: String,
    size: u64,
}

/// How a blob is named and checked: LFS files by sha256, the others by git blob id (sha1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum BlobHash {
    Sha256(String),
    GitSha1(String),
}

impl BlobHash {
    /// The hex digest, which is also the blob's file name in the cache.
    fn hex(&self) -> &str {
        match self {
            BlobHash::Sha256(h) | BlobHash::GitSha1(h) => h,
        }
    }

    fn algorithm(&self) -> &'static str {
        match self {
            BlobHash::Sha256(_) => "sha256",
            BlobHash::GitSha1(_) => "git blob sha1",
        }
    }
}

/// A file to have in the snapshot.
#[derive(Debug, Clone)]
struct PlannedFile {
    /// Path inside the repository, `/`-separated.
    path: String,
    size: u64,
    hash: BlobHash,
}

/// Downloads (or finds in the cache) the files of `opts.variant` of `opts.repo` at
/// `opts.revision`, and returns the ready model folder: `snapshots/{commit}` in the cache.
///
/// Offline, or when the hub cannot be reached and the revision is fully cached, the cached
/// snapshot is returned (and the fact logged).
pub fn fetch(opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let _span = info_span!("model_fetch", repo = %opts.repo, revision = %opts.revision, variant = %opts.variant)
        .entered();
    validate_repo(&opts.repo)?;
    validate_revision(&opts.revision)?;
    let cache = HubCache::new(&opts.cache_dir, &opts.repo);

    if opts.offline {
        let dir = cache
            .resolve(&opts.revision, opts.variant)
            .map_err(|reason| opts.not_cached(reason))?;
        info!(path = %dir.display(), "offline: using the cached model");
        return Ok(dir);
    }

    let hub = Hub::new(opts)?;
    let info = match hub.repo_info() {
        Ok(info) => info,
        Err(err) if err.hub_unavailable() => match cache.resolve(&opts.revision, opts.variant) {
            Ok(dir) => {
                warn!(error = %err, path = %dir.display(), "hub unavailable: using the cached model");
                return Ok(dir);
            }
            Err(reason) => {
                info!(%reason, "no usable cached copy to fall back on");
                return Err(err);
            }
        },
        Err(err) => return Err(err),
    };
    let commit = info.sha.clone();
    let files = plan(&info, opts, &hub.api_url())?;

    let mut pending = Vec::new();
    let mut cached_bytes = 0;
    for file in &files {
        if cache.is_linked(&commit, file) {
            cached_bytes += file.size;
        } else if cache.has_blob(file) {
            cache.link(&commit, file)?;
            cached_bytes += file.size;
        } else {
            pending.push(file);
        }
    }
    let total: u64 = pending.iter().map(|f| f.size).sum();
    info!(
        %commit,
        files = files.len(),
        to_download = pending.len(),
        "{} to download, {} already cached",
        BinaryBytes(total),
        BinaryBytes(cached_bytes)
    );

    let mode = ProgressMode::detect(opts.progress);
    for file in pending {
        fetch_file(&hub, &cache, &commit, file, mode)?;
        cache.link(&commit, file)?;
    }
    if opts.revision != commit {
        cache.write_ref(&opts.revision, &commit)?;
    }
    let dir = cache.snapshot_dir(&commit);
    info!(path = %dir.display(), "model ready");
    Ok(dir)
}

/// Downloads one file into `blobs/`, under the blob's lock so that two processes never write the
/// same `.incomplete` file.
fn fetch_file(
    hub: &Hub<'_>,
    cache: &HubCache,
    commit: &str,
    file: &PlannedFile,
    mode: ProgressMode,
) -> Result<(), FetchError> {
    let _lock = cache.lock_blob(file)?;
    if cache.has_blob(file) {
        return Ok(()); // another process finished it while we waited for the lock
    }
    let part = cache.incomplete_path(file);
    let url = hub.file_url(commit, &file.path);
    match hub.download(&url, &part, file, mode) {
        Ok(()) => cache.commit_blob(&part, file),
        Err(err) => {
            if matches!(
                err,
                FetchError::HashMismatch { .. } | FetchError::SizeMismatch { .. }
            ) {
                // Nothing of a wrong file is worth resuming from.
                let _ = std::fs::remove_file(&part);
            }
            Err(err)
        }
    }
}

/// Picks the files of `opts.variant` from the listing, or says which are missing.
fn plan(info: &RepoInfo, opts: &FetchOptions, url: &str) -> Result<Vec<PlannedFile>, FetchError> {
    let by_name: HashMap<&str, &Sibling> = info
        .siblings
        .iter()
        .map(|s| (s.rfilename.as_str(), s))
        .collect();
    let towers = tower_files(opts.variant);

    let mut required: Vec<&str> = REQUIRED_FILES.to_vec();
    required.extend(towers.iter().map(String::as_str));
    let missing: Vec<String> = required
        .iter()
        .filter(|f| !by_name.contains_key(*f))
        .map(|f| f.to_string())
        .collect();
    if !missing.is_empty() {
        let available = VARIANTS
            .into_iter()
            .filter(|v| {
                tower_files(*v)
                    .iter()
                    .all(|f| by_name.contains_key(f.as_str()))
            })
            .collect();
        return Err(FetchError::MissingFiles {
            repo: opts.repo.clone(),
            revision: opts.revision.clone(),
            variant: opts.variant,
            missing,
            available,
        });
    }

    let mut names: Vec<&str> = required;
    names.extend(OPTIONAL_FILES.iter().filter(|f| by_name.contains_key(*f)));
    // External data files of the towers (weights kept beside the graph), in listing order.
    names.extend(
        info.siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .filter(|name| towers.iter().any(|tower| is_external_data_of(name, tower))),
    );
    names
        .into_iter()
        .filter_map(|name| by_name.get(name))
        .map(|sibling| planned_file(sibling, url))
        .collect()
}

/// True when `name` is an external-data file of the ONNX graph `onnx`: `{onnx}_data`,
/// `{onnx}.data`, or a numbered shard such as `{onnx}_data_1`.
fn is_external_data_of(name: &str, onnx: &str) -> bool {
    let Some(rest) = name.strip_prefix(onnx) else {
        return false;
    };
    ["_data", ".data"].iter().any(|suffix| {
        rest.strip_prefix(suffix).is_some_and(|shard| {
            shard.is_empty()
                || shard
                    .strip_prefix('_')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

fn planned_file(sibling: &Sibling, url: &str) -> Result<PlannedFile, FetchError> {
    let bad = |message: String| FetchError::BadResponse {
        url: url.to_owned(),
        message,
    };
    let path = sibling.rfilename.clone();
    if !is_safe_relative_path(&path) {
        return Err(bad(format!(
            "file name `{path}` is not a plain relative path"
        )));
    }
    let (hash, size) = match (&sibling.lfs, &sibling.blob_id, sibling.size) {
        (Some(lfs), _, _) => (BlobHash::Sha256(lfs.sha256.to_ascii_lowercase()), lfs.size),
        (None, Some(id), Some(size)) => (BlobHash::GitSha1(id.to_ascii_lowercase()), size),
        _ => {
            return Err(bad(format!(
                "the listing of `{path}` has neither an LFS sha256 nor a blobId and size"
            )));
        }
    };
    let expected_len = match hash {
        BlobHash::Sha256(_) => 64,
        BlobHash::GitSha1(_) => 40,
    };
    if !is_hex(hash.hex(), expected_len) {
        return Err(bad(format!(
            "`{path}` has a malformed {}: `{}`",
            hash.algorithm(),
            hash.hex()
        )));
    }
    Ok(PlannedFile { path, size, hash })
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True for a full commit sha.
fn is_commit(s: &str) -> bool {
    is_hex(s, 40)
}

fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Checks a hub repository id: `name` or `org/name`, each part of letters, digits, `-`, `_`, `.`.
fn validate_repo(repo: &str) -> Result<(), FetchError> {
    let invalid = |reason: &str| FetchError::Invalid {
        what: "repository id",
        value: repo.to_owned(),
        reason: reason.to_owned(),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() > 2 {
        return Err(invalid("expected `org/name`"));
    }
    for part in parts {
        if part.is_empty() || part.len() > 96 {
            return Err(invalid("expected `org/name`, each part 1 to 96 characters"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid(
                "only letters, digits, `-`, `_` and `.` are allowed",
            ));
        }
        if part.starts_with(['-', '.'])
            || part.ends_with(['-', '.'])
            || part.contains("--")
            || part.contains("..")
        {
            return Err(invalid(
                "parts may not start or end with `-` or `.`, nor contain `--` or `..`",
            ));
        }
    }
    Ok(())
}

/// Checks a revision (branch, tag, `refs/pr/N` or commit), which also names a file under `refs/`.
fn validate_revision(revision: &str) -> Result<(), FetchError> {
    if is_safe_relative_path(revision)
        && !revision.chars().any(char::is_control)
        && !revision.contains(' ')
    {
        Ok(())
    } else {
        Err(FetchError::Invalid {
            what: "revision",
            value: revision.to_owned(),
            reason: "expected a branch, tag or commit".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sibling(name: &str) -> Sibling {
        Sibling {
            rfilename: name.to_owned(),
            size: Some(3),
            blob_id: Some("a".repeat(40)),
            lfs: None,
        }
    }

    fn opts(variant: Variant) -> FetchOptions {
        let mut o = FetchOptions::from_env_with("org/model", |_| None);
        o.variant = variant;
        o
    }

    #[test]
    fn plan_picks_the_variant_its_external_data_and_optional_files() {
        let names = [
            "README.md",
            "config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            "special_tokens_map.json",
            "onnx/vision_model.onnx",
            "onnx/vision_model.onnx_data",
            "onnx/text_model.onnx",
            "onnx/vision_model_quantized.onnx",
            "onnx/text_model_quantized.onnx",
            "onnx/text_model_quantized.onnx_data_extra",
        ];
        let info = RepoInfo {
            sha: "c".repeat(40),
            siblings: names.iter().map(|n| sibling(n)).collect(),
        };
        let got: Vec<String> = plan(&info, &opts(Variant::Fp32), "u")
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            got,
            [
                "config.json",
                "preprocessor_config.json",
                "tokenizer.json",
                "onnx/vision_model.onnx",
                "onnx/text_model.onnx",
                "special_tokens_map.json",
                "onnx/vision_model.onnx_data",
            ]
        );
        let got: Vec<String> = plan(&info, &opts(Variant::Quantized), "u")
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert!(got.contains(&"onnx/text_model_quantized.onnx".to_owned()));
        assert!(
            !got.iter()
                .any(|f| f.ends_with("_extra") || f.contains("vision_model.onnx"))
        );

        let err = plan(&info, &opts(Variant::Fp16), "u").unwrap_err();
        assert_eq!(
            err.to_string(),
            "org/model at revision main lacks files of the fp16 model: onnx/vision_model_fp16.onnx, \
             onnx/text_model_fp16.onnx; complete variants there: fp32, quantized"
        );
    }

    #[test]
    fn plan_rejects_unsafe_names_and_malformed_hashes() {
        let mut bad_name = sibling("onnx/vision_model.onnx_data");
        bad_name.rfilename = "../../etc/passwd".into();
        assert!(planned_file(&bad_name, "u").is_err());
        let mut bad_hash = sibling("config.json");
        bad_hash.blob_id = Some("../x".into());
        assert!(planned_file(&bad_hash, "u").is_err());
        let lfs = Sibling {
            rfilename: "onnx/text_model.onnx".into(),
            size: None,
            blob_id: Some("b".repeat(40)),
            lfs: Some(LfsInfo {
                sha256: "D".repeat(64),
                size: 9,
            }),
        };
        let f = planned_file(&lfs, "u").unwrap();
        assert_eq!((f.hash, f.size), (BlobHash::Sha256("d".repeat(64)), 9));
    }

    #[test]
    fn external_data_names() {
        let onnx = "onnx/vision_model.onnx";
        for ok in [
            "onnx/vision_model.onnx_data",
            "onnx/vision_model.onnx.data",
            "onnx/vision_model.onnx_data_2",
        ] {
            assert!(is_external_data_of(ok, onnx), "{ok}");
        }
        for no in [
            "onnx/vision_model.onnx",
            "onnx/vision_model.onnx_data_x",
            "onnx/vision_model.onnx_data/../a",
        ] {
            assert!(!is_external_data_of(no, onnx), "{no}");
        }
    }

    #[test]
    fn repo_and_revision_validation() {
        for ok in ["Xenova/clip-vit-base-patch32", "gpt2", "a.b/c_d"] {
            assert!(validate_repo(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b/c", "../x", "a/..", "a--b/c", "a b/c", "/x"] {
            assert!(validate_repo(bad).is_err(), "{bad}");
        }
        for ok in ["main", "v1.0", "refs/pr/3", &"a".repeat(40)] {
            assert!(validate_revision(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../main", "/main", "a//b", "a b", "x\n"] {
            assert!(validate_revision(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_from_env_and_cache_dir_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let o = FetchOptions::from_env_with(
            "a/b",
            env(&[
                ("HF_ENDPOINT", "http://127.0.0.1:9/"),
                ("HF_TOKEN", "hf_secret"),
                ("HF_HUB_OFFLINE", "1"),
                ("CLIPFILTER_CACHE_DIR", "/c"),
            ]),
        );
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert_eq!(o.token.as_deref(), Some("hf_secret"));
        assert!(o.offline);
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
        assert!(!format!("{o:?}").contains("hf_secret"));

        let o = FetchOptions::from_env_with("a/b", env(&[("HUGGING_FACE_HUB_TOKEN", "old")]));
        assert_eq!(
            (o.endpoint.as_str(), o.token.as_deref(), o.offline),
            (DEFAULT_ENDPOINT, Some("old"), false)
        );

        assert_eq!(
            default_cache_dir_with(env(&[
                ("STATE_DIRECTORY", "/var/lib/clipfilter:/var/lib/other"),
                ("XDG_CACHE_HOME", "/x")
            ])),
            PathBuf::from("/var/lib/clipfilter/models")
        );
        assert_eq!(
            default_cache_dir_with(env(&[("XDG_CACHE_HOME", "/x")])),
            PathBuf::from("/x/clipfilter/models")
        );
        assert!(
            default_cache_dir_with(env(&[("XDG_CACHE_HOME", "relative")]))
                .ends_with("clipfilter/models")
        );
    }
}
