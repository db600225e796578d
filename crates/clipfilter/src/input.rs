//! Reading files whose paths users give (label sets, configurations, model files, images): the
//! one helper every such read goes through. Only regular files (after following symbolic links)
//! of at most [`limits::MAX_INPUT_FILE_BYTES`] are read; a FIFO, a device, a socket or a
//! directory is refused at once, without blocking or reading it.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::limits;

/// The bytes of the regular file at `path`, at most [`limits::MAX_INPUT_FILE_BYTES`].
pub fn read(path: &Path) -> Result<Vec<u8>> {
    read_limited(path, limits::MAX_INPUT_FILE_BYTES)
}

/// The text of the regular file at `path` (UTF-8), at most [`limits::MAX_INPUT_FILE_BYTES`].
pub fn read_to_string(path: &Path) -> Result<String> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        )
    })
}

/// Writes `text` to `path` through a temporary file of the same folder (`.<name>.<tag>~`)
/// renamed over it, so that a watcher (the element's label reload) sees one whole change.
pub fn write_atomically(path: &Path, text: &str, tag: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{tag}~"));
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// [`read`] with another size limit.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    // Checked before opening: opening a FIFO for reading waits for a writer.
    check(
        path,
        &std::fs::metadata(path).map_err(|e| Error::io(path, e))?,
        limit,
    )?;
    let file = open(path)?;
    // Checked again on what was opened, in case the path changed in between.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check(path, &meta, limit)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte more than the limit tells a file that grew since.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(refused(path, too_large(limit)));
    }
    Ok(bytes)
}

/// Opens without blocking on a FIFO or a device that appeared after the first check.
fn open(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path).map_err(|e| Error::io(path, e))
}

fn check(path: &Path, meta: &std::fs::Metadata, limit: u64) -> Result<()> {
    if !meta.is_file() {
        return Err(refused(
            path,
            format!(
                "is {}, not a regular file: only regular files are read",
                kind(&meta.file_type())
            ),
        ));
    }
    if meta.len() > limit {
        return Err(refused(
            path,
            format!("is {} bytes: {}", meta.len(), too_large(limit)),
        ));
    }
    Ok(())
}

fn too_large(limit: u64) -> String {
    format!(
        "files of more than {} MiB ({limit} bytes) are not read",
        limit / (1024 * 1024)
    )
}

fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

fn refused(path: &Path, message: String) -> Error {
    Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidData, message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_and_symlinks_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "x = 1\n");
        assert_eq!(read_to_string(&link).unwrap(), "x = 1\n");
    }

    #[test]
    fn refuses_devices_fifos_directories_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let zero = read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(zero.contains("character device"), "{zero}");
        assert!(zero.contains("only regular files"), "{zero}");
        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a plain open would wait for one forever.
        let e = read_to_string(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 11]).unwrap();
        let e = read_limited(&big, 10).unwrap_err().to_string();
        assert!(e.contains("11 bytes") && e.contains("(10 bytes)"), "{e}");
        assert_eq!(read_limited(&big, 11).unwrap().len(), 11);
    }
}
