//! `model::fetch` against a hub-compatible HTTP server on 127.0.0.1 (and its CDN on 127.0.0.2).

mod hub;

use std::fs;
use std::path::{Path, PathBuf};

use clipfilter::model::Variant;
use clipfilterd::fetch::{self, FetchError, FetchOptions};
use hub::{HubServer, Logged, Repo, RepoFile};

const REPO: &str = "clipfilter-test/tiny-clip";
const GATED: &str = "clipfilter-test/gated-clip";
const TOKEN: &str = "hf_test_token_123";

/// The big file: big enough that cutting it mid-way means something.
const VISION: &str = "onnx/vision_model.onnx";
const VISION_DATA: &str = "onnx/vision_model.onnx_data";
const TEXT: &str = "onnx/text_model.onnx";

/// What an fp32 fetch must bring, in the repository's paths.
const FP32_FILES: [&str; 7] = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    VISION,
    VISION_DATA,
    TEXT,
];

fn test_repo(id: &str, token: Option<&str>) -> Repo {
    let json = |s: &str| s.as_bytes().to_vec();
    Repo {
        id: id.to_owned(),
        commit: hub::hex(&hub::bytes(7, 20)),
        branches: vec!["main".to_owned()],
        token: token.map(str::to_owned),
        files: vec![
            RepoFile::new(
                ".gitattributes",
                json("*.onnx filter=lfs diff=lfs merge=lfs -text\n"),
                false,
            ),
            RepoFile::new("README.md", json("# tiny clip\n"), false),
            RepoFile::new(
                "config.json",
                json(r#"{"model_type": "clip", "projection_dim": 512}"#),
                false,
            ),
            RepoFile::new(
                "preprocessor_config.json",
                json(r#"{"crop_size": 224, "do_resize": true}"#),
                false,
            ),
            RepoFile::new("tokenizer.json", hub::bytes(1, 70_001), false),
            RepoFile::new(
                "tokenizer_config.json",
                json(r#"{"model_max_length": 77}"#),
                false,
            ),
            RepoFile::new(VISION, hub::bytes(2, 4 * 1024 * 1024 + 123), true),
            RepoFile::new(VISION_DATA, hub::bytes(3, 1024 * 1024 + 7), true),
            RepoFile::new(TEXT, hub::bytes(4, 2 * 1024 * 1024 + 5), true),
            RepoFile::new(
                "onnx/vision_model_quantized.onnx",
                hub::bytes(5, 300_000),
                true,
            ),
            RepoFile::new(
                "onnx/text_model_quantized.onnx",
                hub::bytes(6, 200_000),
                true,
            ),
        ],
    }
}

struct Fixture {
    server: HubServer,
    repo: Repo,
    cache: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Self {
        let repo = test_repo(REPO, None);
        let server = HubServer::start(vec![repo.clone(), test_repo(GATED, Some(TOKEN))]);
        Fixture {
            server,
            repo,
            cache: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Options as `FetchOptions::from_env` builds them, with HF_ENDPOINT and the cache folder
    /// given through the lookup function rather than the process environment.
    fn options(&self, variant: Variant) -> FetchOptions {
        let endpoint = self.server.url();
        let cache = self.cache.path().display().to_string();
        let mut opts = FetchOptions::from_env_with(REPO, |name| match name {
            "HF_ENDPOINT" => Some(endpoint.clone()),
            "CLIPFILTER_CACHE_DIR" => Some(cache.clone()),
            _ => None,
        });
        opts.variant = variant;
        opts.progress = false;
        opts.retries = 2;
        opts
    }

    fn repo_dir(&self) -> PathBuf {
        self.cache.path().join("models--clipfilter-test--tiny-clip")
    }

    fn snapshot(&self) -> PathBuf {
        self.repo_dir().join("snapshots").join(&self.repo.commit)
    }

    fn blob(&self, path: &str) -> PathBuf {
        self.repo_dir()
            .join("blobs")
            .join(self.repo.file(path).blob_name())
    }

    /// The requests that carried `path`'s bytes (the CDN for LFS files, the hub otherwise).
    fn content_requests(&self, path: &str) -> Vec<Logged> {
        let file = self.repo.file(path);
        let needle = if file.lfs {
            format!("/cdn/{}", file.sha256())
        } else {
            format!("/resolve/{}/{path}", self.repo.commit)
        };
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.target.contains(&needle))
            .collect()
    }

    fn assert_files_exact(&self, dir: &Path, paths: &[&str]) {
        for path in paths {
            let got = fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                got == self.repo.file(path).content,
                "{path}: content differs from the hub's"
            );
        }
    }
}

fn incomplete_files(blobs: &Path) -> Vec<String> {
    fs::read_dir(blobs)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".incomplete"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_full_fetch_is_byte_exact_in_the_hub_cache_layout() {
    let fx = Fixture::start();
    let dir = fetch::fetch(&fx.options(Variant::Fp32)).expect("fetch");
    assert_eq!(dir, fx.snapshot());
    fx.assert_files_exact(&dir, &FP32_FILES);

    // snapshots/{commit}/{path} are relative symlinks to blobs named by sha256 (LFS) or git blob id.
    for path in FP32_FILES {
        let file = fx.repo.file(path);
        let link = fs::read_link(dir.join(path))
            .unwrap_or_else(|e| panic!("{path} is not a symlink: {e}"));
        let ups = "../".repeat(1 + path.matches('/').count() + 1);
        assert_eq!(
            link,
            PathBuf::from(format!("{ups}blobs/{}", file.blob_name())),
            "{path}"
        );
        assert_eq!(fs::read(fx.blob(path)).unwrap(), file.content, "{path}");
    }
    assert_eq!(
        fs::read_to_string(fx.repo_dir().join("refs/main")).unwrap(),
        fx.repo.commit
    );
    assert!(incomplete_files(&fx.repo_dir().join("blobs")).is_empty());

    // Only the variant's files, and every file by commit rather than by branch.
    for other in [
        "README.md",
        ".gitattributes",
        "onnx/vision_model_quantized.onnx",
        "onnx/text_model_quantized.onnx",
    ] {
        assert!(
            fs::symlink_metadata(dir.join(other)).is_err(),
            "{other} should not be fetched"
        );
        assert!(
            fx.content_requests(other).is_empty(),
            "{other} should not be requested"
        );
    }
    let requests = fx.server.requests();
    assert_eq!(
        requests[0].target,
        format!("/api/models/{REPO}/revision/main?blobs=true")
    );
    assert!(
        requests
            .iter()
            .all(|r| !r.target.contains("/resolve/main/")),
        "{requests:#?}"
    );
    assert!(requests.iter().all(|r| {
        r.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("clipfilter/"))
    }));
    // LFS files came through the CDN redirect, once each.
    for lfs in [VISION, VISION_DATA, TEXT] {
        let hits = fx.content_requests(lfs);
        assert_eq!(hits.len(), 1, "{lfs}: {hits:#?}");
        assert_eq!(hits[0].host, "cdn");
    }
}

#[test]
fn a_second_fetch_downloads_nothing_and_variants_share_files() {
    let fx = Fixture::start();
    let first = fetch::fetch(&fx.options(Variant::Fp32)).expect("first fetch");
    fx.server.clear_requests();

    let second = fetch::fetch(&fx.options(Variant::Fp32)).expect("second fetch");
    assert_eq!(second, first);
    let requests = fx.server.requests();
    assert_eq!(
        requests.len(),
        1,
        "only the listing is asked for: {requests:#?}"
    );
    assert!(requests[0].target.starts_with("/api/models/"));

    // Another variant fetches only its own towers; the shared files are already there.
    fx.server.clear_requests();
    let quantized = fetch::fetch(&fx.options(Variant::Quantized)).expect("quantized fetch");
    assert_eq!(quantized, first);
    fx.assert_files_exact(
        &quantized,
        &[
            "config.json",
            "onnx/vision_model_quantized.onnx",
            "onnx/text_model_quantized.onnx",
        ],
    );
    let content: Vec<String> = fx
        .server
        .requests()
        .into_iter()
        .filter(|r| r.host == "cdn" || r.target.contains("/resolve/"))
        .map(|r| r.target)
        .collect();
    assert_eq!(
        content.len(),
        4,
        "two resolve redirects and two CDN downloads: {content:#?}"
    );
    assert!(
        content
            .iter()
            .all(|t| t.contains("quantized") || t.starts_with("/cdn/")),
        "{content:#?}"
    );
}

#[test]
fn an_interrupted_download_resumes_from_where_it_stopped() {
    let fx = Fixture::start();
    let cut = 1_000_000;
    fx.server.cut_after(VISION, cut, 1);
    let dir = fetch::fetch(&fx.options(Variant::Fp32)).expect("fetch despite the cut");
    fx.assert_files_exact(&dir, &FP32_FILES);

    let ranges: Vec<Option<String>> = fx
        .content_requests(VISION)
        .into_iter()
        .map(|r| r.range)
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={cut}-"))]);
    assert!(incomplete_files(&fx.repo_dir().join("blobs")).is_empty());
}

#[test]
fn a_partial_download_left_by_an_earlier_process_is_resumed() {
    let fx = Fixture::start();
    let file = fx.repo.file(VISION);
    let blobs = fx.repo_dir().join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let kept = 1_500_000;
    fs::write(
        blobs.join(format!("{}.incomplete", file.sha256())),
        &file.content[..kept],
    )
    .unwrap();

    let dir = fetch::fetch(&fx.options(Variant::Fp32)).expect("fetch");
    fx.assert_files_exact(&dir, &[VISION]);
    let ranges: Vec<Option<String>> = fx
        .content_requests(VISION)
        .into_iter()
        .map(|r| r.range)
        .collect();
    assert_eq!(ranges, [Some(format!("bytes={kept}-"))]);
    assert!(incomplete_files(&blobs).is_empty());
}

#[test]
fn a_corrupted_download_is_reported_and_never_reaches_the_snapshot() {
    let fx = Fixture::start();
    // config.json is the first file fetched, so each case downloads the corrupted file afresh.
    for (path, algorithm) in [("config.json", "git blob sha1"), (TEXT, "sha256")] {
        fx.server.corrupt(path, true);
        let err = fetch::fetch(&fx.options(Variant::Fp32)).expect_err("a corrupted file must fail");
        let file = fx.repo.file(path);
        match &err {
            FetchError::HashMismatch {
                file: name,
                expected,
                actual,
                algorithm: alg,
                ..
            } => {
                assert_eq!(name, path);
                assert_eq!(*alg, algorithm);
                assert_eq!(*expected, file.blob_name());
                assert_ne!(actual, expected);
            }
            other => panic!("expected a hash mismatch for {path}, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(path) && message.contains(&file.blob_name()),
            "{message}"
        );
        assert!(
            fs::symlink_metadata(fx.snapshot().join(path)).is_err(),
            "{path} reached the snapshot"
        );
        assert!(!fx.blob(path).exists());
        assert!(
            incomplete_files(&fx.repo_dir().join("blobs")).is_empty(),
            "the partial file is deleted"
        );
        fx.server.corrupt(path, false);
    }
    // The actual sha256 named is the one of the bytes that were served.
    fx.server.corrupt(TEXT, true);
    let Err(FetchError::HashMismatch { actual, .. }) = fetch::fetch(&fx.options(Variant::Fp32))
    else {
        panic!("expected a hash mismatch")
    };
    let mut served = fx.repo.file(TEXT).content.clone();
    for b in served.iter_mut().step_by(4099) {
        *b ^= 0x5a;
    }
    assert_eq!(actual, RepoFile::new("x", served, true).sha256());

    // Once the hub serves the right bytes, the same cache completes.
    fx.server.corrupt(TEXT, false);
    let dir = fetch::fetch(&fx.options(Variant::Fp32)).expect("fetch after the corruption ended");
    fx.assert_files_exact(&dir, &FP32_FILES);
}

#[test]
fn a_missing_variant_lists_the_variants_the_repository_has() {
    let fx = Fixture::start();
    let err = fetch::fetch(&fx.options(Variant::Fp16)).expect_err("there is no fp16 export");
    match &err {
        FetchError::MissingFiles {
            missing, available, ..
        } => {
            assert_eq!(
                missing,
                &["onnx/vision_model_fp16.onnx", "onnx/text_model_fp16.onnx"]
            );
            assert_eq!(available, &[Variant::Fp32, Variant::Quantized]);
        }
        other => panic!("expected missing files, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("fp16") && message.contains("fp32, quantized"),
        "{message}"
    );
    assert!(err.is_user_error());
    assert_eq!(fx.server.requests().len(), 1, "nothing is downloaded");
    assert!(!fx.repo_dir().join("blobs").exists());
}

#[test]
fn an_unknown_repository_or_revision_is_a_clear_error_without_retries() {
    let fx = Fixture::start();
    let mut opts = fx.options(Variant::Fp32);
    opts.repo = "clipfilter-test/no-such-model".into();
    let err = fetch::fetch(&opts).expect_err("unknown repo");
    assert!(matches!(err, FetchError::NotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("repository `clipfilter-test/no-such-model` does not exist"),
        "{message}"
    );
    assert!(
        message.contains(&fx.server.url()),
        "the error names the URL: {message}"
    );
    assert_eq!(fx.server.requests().len(), 1, "a 404 is not retried");

    fx.server.clear_requests();
    let mut opts = fx.options(Variant::Fp32);
    opts.revision = "no-such-branch".into();
    let err = fetch::fetch(&opts).expect_err("unknown revision");
    assert!(
        err.to_string()
            .contains("revision `no-such-branch` does not exist"),
        "{err}"
    );
    assert_eq!(fx.server.requests().len(), 1);
}

#[test]
fn a_gated_repository_needs_a_token() {
    let fx = Fixture::start();
    let mut opts = fx.options(Variant::Fp32);
    opts.repo = GATED.into();
    let err = fetch::fetch(&opts).expect_err("no token");
    assert!(
        matches!(err, FetchError::Denied { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("set HF_TOKEN"), "{err}");
    assert_eq!(fx.server.requests().len(), 1, "a 401 is not retried");
}

#[test]
fn hf_endpoint_and_hf_token_are_honoured_and_the_token_stays_with_the_hub() {
    let fx = Fixture::start();
    let endpoint = format!("{}/", fx.server.url());
    let cache = fx.cache.path().display().to_string();
    let env = |name: &str| match name {
        "HF_ENDPOINT" => Some(endpoint.clone()),
        "HF_TOKEN" => Some(TOKEN.to_owned()),
        "CLIPFILTER_CACHE_DIR" => Some(cache.clone()),
        _ => None,
    };
    let mut opts = FetchOptions::from_env_with(GATED, env);
    assert_eq!(opts.endpoint, fx.server.url());
    assert_eq!(opts.cache_dir, fx.cache.path());
    assert!(
        !format!("{opts:?}").contains(TOKEN),
        "the token is never printed"
    );
    opts.progress = false;

    let dir = fetch::fetch(&opts).expect("fetch with the token");
    assert!(dir.starts_with(fx.cache.path().join("models--clipfilter-test--gated-clip")));
    let requests = fx.server.requests();
    let bearer = format!("Bearer {TOKEN}");
    for r in &requests {
        match r.host {
            "hub" => assert_eq!(r.authorization.as_deref(), Some(bearer.as_str()), "{r:?}"),
            _ => assert_eq!(
                r.authorization, None,
                "the CDN must not get the token: {r:?}"
            ),
        }
    }
    assert!(requests.iter().any(|r| r.host == "cdn"));

    let default = FetchOptions::from_env_with(GATED, |_| None);
    assert_eq!(default.endpoint, "https://huggingface.co");
    assert_eq!(default.token, None);
}

#[test]
fn offline_mode_uses_the_cache_with_the_server_stopped() {
    let fx = Fixture::start();
    let online = fetch::fetch(&fx.options(Variant::Fp32)).expect("online fetch");
    let mut endpoint_opts = fx.options(Variant::Fp32);
    endpoint_opts.retries = 0;
    let Fixture {
        server,
        repo,
        cache: _cache,
    } = fx;
    server.stop();

    let mut offline = endpoint_opts.clone();
    offline.offline = true;
    let dir = fetch::fetch(&offline).expect("offline fetch");
    assert_eq!(dir, online);
    assert_eq!(
        fs::read(dir.join(VISION)).unwrap(),
        repo.file(VISION).content
    );

    // Online but the hub is gone: the complete cached revision serves.
    assert_eq!(
        fetch::fetch(&endpoint_opts).expect("fallback to the cache"),
        online
    );

    // A variant that is not cached is an error, offline or not.
    let mut quantized = endpoint_opts.clone();
    quantized.variant = Variant::Quantized;
    let err = fetch::fetch(&quantized).expect_err("unreachable and not cached");
    assert!(matches!(err, FetchError::Network { .. }), "{err:?}");
    quantized.offline = true;
    let err = fetch::fetch(&quantized).expect_err("not cached");
    assert!(matches!(err, FetchError::NotCached { .. }), "{err:?}");
    assert!(
        err.to_string().contains("onnx/vision_model_quantized.onnx"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let mut elsewhere = offline.clone();
    elsewhere.cache_dir = empty.path().to_owned();
    let err = fetch::fetch(&elsewhere).expect_err("empty cache");
    assert!(err.to_string().contains("not fully cached"), "{err}");
}

#[test]
fn server_errors_are_retried_and_then_reported() {
    let fx = Fixture::start();
    fx.server.fail_listing(2);
    fetch::fetch(&fx.options(Variant::Fp32)).expect("fetch after two 503s");
    let listings = fx
        .server
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/api/"))
        .count();
    assert_eq!(listings, 3);

    fx.server.clear_requests();
    fx.server.fail_listing(10);
    let mut opts = fx.options(Variant::Fp32);
    opts.retries = 1;
    // The cache is complete, so a failing hub falls back to it...
    assert_eq!(fetch::fetch(&opts).expect("fallback"), fx.snapshot());
    // ...and without a cache the 503 is the error.
    let empty = tempfile::tempdir().unwrap();
    opts.cache_dir = empty.path().to_owned();
    let err = fetch::fetch(&opts).expect_err("hub keeps failing");
    assert!(
        matches!(err, FetchError::Http { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(
        fx.server.requests().len(),
        4,
        "1 retry for each of the two fetches"
    );
}
