//! Paths written in the configuration file: relative ones are relative to the folder of the file,
//! and `.`/`..` are taken out so that what logs and errors show is the path meant. Also the free
//! space of a folder's disk.

use std::path::{Component, Path, PathBuf};

/// Free bytes for an unprivileged writer on the file system of `dir` (`None` when unknown).
// The statvfs field types differ between platforms (u64 here, u32 on some 32-bit ones).
#[allow(clippy::unnecessary_cast)]
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is a valid out-pointer for statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// The folder relative paths of the configuration file at `config` start from (absolute).
pub fn config_dir(config: &Path) -> PathBuf {
    let dir = match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// `path` as written in a file whose relative paths start at `base`, normalised.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    normalize(&base.join(path))
}

/// `path` without `.` and `..` components (lexically; symbolic links are not followed).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                // Above where a relative path starts: keep going up.
                Some(Component::ParentDir | Component::CurDir) | None => out.push(".."),
            },
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_at_the_config_folder() {
        let base = config_dir(Path::new("/etc/clipfilter/clipfilterd.toml"));
        assert_eq!(base, Path::new("/etc/clipfilter"));
        assert_eq!(
            resolve(&base, Path::new("../media/./a.mp4")),
            Path::new("/etc/media/a.mp4")
        );
        assert_eq!(
            resolve(&base, Path::new("/srv/models")),
            Path::new("/srv/models")
        );
        assert_eq!(normalize(Path::new("../../x")), Path::new("../../x"));
        assert_eq!(normalize(Path::new("a/../../x/.")), Path::new("../x"));
        assert_eq!(normalize(Path::new("/../x")), Path::new("/x"));
        assert!(config_dir(Path::new("d.toml")).is_absolute());
    }
}
