//! The Hugging Face hub cache layout for one repository: blobs named by hash, snapshots of
//! relative symlinks, refs naming commits, and per-blob lock files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use tracing::info;

use super::{FetchError, PlannedFile, REQUIRED_FILES, is_commit, tower_files};
use clipfilter::model::Variant;

/// One repository's folder in a hub-layout cache.
pub(super) struct HubCache {
    /// `{cache_dir}/models--{org}--{name}`.
    repo_dir: PathBuf,
    /// `{cache_dir}/.locks/models--{org}--{name}`.
    locks_dir: PathBuf,
}

impl HubCache {
    pub(super) fn new(cache_dir: &Path, repo: &str) -> Self {
        let folder = format!("models--{}", repo.replace('/', "--"));
        HubCache {
            repo_dir: cache_dir.join(&folder),
            locks_dir: cache_dir.join(".locks").join(folder),
        }
    }

    /// `snapshots/{commit}`: the model folder of a commit.
    pub(super) fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.repo_dir.join("snapshots").join(commit)
    }

    fn blob_path(&self, file: &PlannedFile) -> PathBuf {
        self.repo_dir.join("blobs").join(file.hash.hex())
    }

    /// `blobs/{hash}.incomplete`: where a download of `file` goes until it is verified.
    pub(super) fn incomplete_path(&self, file: &PlannedFile) -> PathBuf {
        self.repo_dir
            .join("blobs")
            .join(format!("{}.incomplete", file.hash.hex()))
    }

    fn pointer_path(&self, commit: &str, file: &PlannedFile) -> PathBuf {
        file.path
            .split('/')
            .fold(self.snapshot_dir(commit), |dir, part| dir.join(part))
    }

    /// True when the blob of `file` is complete in `blobs/`.
    pub(super) fn has_blob(&self, file: &PlannedFile) -> bool {
        fs::metadata(self.blob_path(file)).is_ok_and(|m| m.is_file() && m.len() == file.size)
    }

    /// True when `snapshots/{commit}/{path}` leads to a complete file.
    pub(super) fn is_linked(&self, commit: &str, file: &PlannedFile) -> bool {
        fs::metadata(self.pointer_path(commit, file))
            .is_ok_and(|m| m.is_file() && m.len() == file.size)
    }

    /// Takes the lock on `file`'s blob (the lock file `huggingface_hub` uses too), waiting while
    /// another process holds it. The lock is released when the returned file is dropped.
    pub(super) fn lock_blob(&self, file: &PlannedFile) -> Result<File, FetchError> {
        let path = self.locks_dir.join(format!("{}.lock", file.hash.hex()));
        let io_err = |e| FetchError::io(&path, e);
        fs::create_dir_all(&self.locks_dir).map_err(|e| FetchError::io(&self.locks_dir, e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                info!(file = %file.path, lock = %path.display(), "waiting for another download of this file");
                lock.lock().map_err(io_err)?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        Ok(lock)
    }

    /// Moves a verified download into place as `blobs/{hash}` (atomically).
    pub(super) fn commit_blob(&self, part: &Path, file: &PlannedFile) -> Result<(), FetchError> {
        let blob = self.blob_path(file);
        fs::rename(part, &blob).map_err(|e| FetchError::io(&blob, e))
    }

    /// Makes `snapshots/{commit}/{path}` a relative symlink to the blob of `file`.
    pub(super) fn link(&self, commit: &str, file: &PlannedFile) -> Result<(), FetchError> {
        let pointer = self.pointer_path(commit, file);
        let io_err = |e| FetchError::io(&pointer, e);
        if let Some(parent) = pointer.parent() {
            fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
        }
        match fs::symlink_metadata(&pointer) {
            Ok(_) => fs::remove_file(&pointer).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        match make_link(&self.blob_path(file), &relative_blob_target(file), &pointer) {
            Ok(()) => Ok(()),
            // Another process linked it between our removal and our link.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.is_linked(commit, file) => {
                Ok(())
            }
            Err(e) => Err(io_err(e)),
        }
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        revision
            .split('/')
            .fold(self.repo_dir.join("refs"), |dir, part| dir.join(part))
    }

    /// Records that `revision` points at `commit` (`refs/{revision}`, written atomically).
    pub(super) fn write_ref(&self, revision: &str, commit: &str) -> Result<(), FetchError> {
        let path = self.ref_path(revision);
        if fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        let io_err = |e| FetchError::io(&path, e);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            revision.replace('/', "_"),
            std::process::id()
        ));
        fs::write(&tmp, commit).map_err(|e| FetchError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(io_err)
    }

    /// The cached snapshot of `revision` when it holds every file `variant` needs, or why not.
    pub(super) fn resolve(&self, revision: &str, variant: Variant) -> Result<PathBuf, String> {
        let commit = if is_commit(revision) {
            revision.to_ascii_lowercase()
        } else {
            let path = self.ref_path(revision);
            let commit = fs::read_to_string(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => format!(
                    "nothing cached for this revision ({} is missing)",
                    path.display()
                ),
                _ => format!("{}: {e}", path.display()),
            })?;
            let commit = commit.trim().to_owned();
            if !is_commit(&commit) {
                return Err(format!("{} does not hold a commit sha", path.display()));
            }
            commit
        };
        let dir = self.snapshot_dir(&commit);
        let towers = tower_files(variant);
        let missing: Vec<&str> = REQUIRED_FILES
            .iter()
            .copied()
            .chain(towers.iter().map(String::as_str))
            .filter(|f| !fs::metadata(dir.join(f)).is_ok_and(|m| m.is_file()))
            .collect();
        if missing.is_empty() {
            Ok(dir)
        } else {
            Err(format!("snapshot {commit} lacks {}", missing.join(", ")))
        }
    }
}

/// `../../blobs/{hash}` from `snapshots/{commit}/{path}`, one more `..` per folder in `path`.
fn relative_blob_target(file: &PlannedFile) -> PathBuf {
    let depth = 1 + file.path.split('/').count();
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.join("blobs").join(file.hash.hex())
}

#[cfg(unix)]
fn make_link(_blob: &Path, relative: &Path, pointer: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(relative, pointer)
}

/// Without symlinks, the snapshot holds a copy (as `huggingface_hub` does on such systems).
#[cfg(not(unix))]
fn make_link(blob: &Path, _relative: &Path, pointer: &Path) -> io::Result<()> {
    fs::copy(blob, pointer).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::BlobHash;
    use super::*;

    fn file(path: &str) -> PlannedFile {
        PlannedFile {
            path: path.into(),
            size: 5,
            hash: BlobHash::Sha256("ab".repeat(32)),
        }
    }

    #[test]
    fn layout_matches_huggingface_hub() {
        let cache = HubCache::new(Path::new("/c"), "Xenova/clip-vit-base-patch32");
        let f = file("onnx/text_model.onnx");
        assert_eq!(
            cache.pointer_path("0123", &f),
            Path::new(
                "/c/models--Xenova--clip-vit-base-patch32/snapshots/0123/onnx/text_model.onnx"
            )
        );
        assert_eq!(
            cache.incomplete_path(&f),
            PathBuf::from(format!(
                "/c/models--Xenova--clip-vit-base-patch32/blobs/{}.incomplete",
                "ab".repeat(32)
            ))
        );
        assert_eq!(
            relative_blob_target(&f),
            PathBuf::from(format!("../../../blobs/{}", "ab".repeat(32)))
        );
        assert_eq!(
            relative_blob_target(&file("config.json")),
            PathBuf::from(format!("../../blobs/{}", "ab".repeat(32)))
        );
        assert_eq!(
            cache.ref_path("refs/pr/1"),
            Path::new("/c/models--Xenova--clip-vit-base-patch32/refs/refs/pr/1")
        );
    }

    #[test]
    fn link_write_ref_and_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = HubCache::new(tmp.path(), "org/m");
        let commit = "c".repeat(40);
        let f = file("onnx/x.onnx");
        assert!(!cache.has_blob(&f));
        fs::create_dir_all(tmp.path().join("models--org--m/blobs")).unwrap();
        fs::write(cache.blob_path(&f), b"12345").unwrap();
        assert!(cache.has_blob(&f));
        cache.link(&commit, &f).unwrap();
        cache.link(&commit, &f).unwrap(); // relinking replaces
        assert!(cache.is_linked(&commit, &f));
        assert_eq!(fs::read(cache.pointer_path(&commit, &f)).unwrap(), b"12345");

        assert!(
            cache
                .resolve("main", Variant::Fp32)
                .unwrap_err()
                .contains("nothing cached for this revision")
        );
        cache.write_ref("main", &commit).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("models--org--m/refs/main")).unwrap(),
            commit
        );
        let why = cache.resolve("main", Variant::Fp32).unwrap_err();
        assert!(
            why.contains("config.json") && why.contains("onnx/vision_model.onnx"),
            "{why}"
        );
    }
}
