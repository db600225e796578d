//! A folder of example pictures: one sub-folder per label with pictures where that label should
//! fire, and `none/` with pictures where no label should.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The folder of pictures where no label should fire.
pub const NONE: &str = "none";

/// File extensions read as pictures (what `image` decodes here).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// One example picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub path: PathBuf,
    /// The folder it is in: a label name or [`NONE`].
    pub label: String,
}

/// Every example of a folder, in a stable order (folders, then files, by name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Examples {
    pub dir: PathBuf,
    pub examples: Vec<Example>,
    /// Files that are not pictures (by extension), skipped; callers warn about each.
    pub skipped: Vec<PathBuf>,
    /// Folder names in order, `none` included when present.
    pub folders: Vec<String>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        entries.push(entry.path());
    }
    entries.sort();
    Ok(entries)
}

impl Examples {
    /// Reads `dir`. A missing folder, one without label folders, or a label folder without
    /// pictures is an error naming it; non-picture files are listed in `skipped`; hidden files
    /// (`.name`) are ignored.
    pub fn scan(dir: &Path) -> Result<Examples> {
        if !dir.is_dir() {
            return Err(Error::invalid(
                "examples",
                format!(
                    "{}: no such folder (it should hold one folder of pictures per label and none/)",
                    dir.display()
                ),
            ));
        }
        let mut out = Examples {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        for sub in sorted_entries(dir)? {
            let Some(name) = sub.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if !sub.is_dir() {
                out.skipped.push(sub);
                continue;
            }
            let before = out.examples.len();
            for file in sorted_entries(&sub)? {
                let hidden = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if hidden {
                    continue;
                }
                if file.is_file() && is_image(&file) {
                    out.examples.push(Example {
                        path: file,
                        label: name.clone(),
                    });
                } else {
                    out.skipped.push(file);
                }
            }
            if out.examples.len() == before {
                return Err(Error::invalid(
                    "examples",
                    format!(
                        "{}: no pictures in this folder ({})",
                        sub.display(),
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            out.folders.push(name);
        }
        if out.folders.is_empty() {
            return Err(Error::invalid(
                "examples",
                format!(
                    "{}: no label folders: put the pictures of each label in a folder named after it, and pictures where none should fire in {NONE}/",
                    dir.display()
                ),
            ));
        }
        Ok(out)
    }

    /// Examples in folder `label`.
    pub fn count(&self, label: &str) -> usize {
        self.examples.iter().filter(|e| e.label == label).count()
    }

    /// Class index per example, in the order of `classes`; an example whose folder is not among
    /// them is an error naming the folder.
    pub fn class_indices(&self, classes: &[String]) -> Result<Vec<usize>> {
        self.examples
            .iter()
            .map(|e| {
                classes.iter().position(|c| *c == e.label).ok_or_else(|| {
                    Error::invalid(
                        "examples",
                        format!(
                            "{}: folder `{}` is not a known class",
                            self.dir.display(),
                            e.label
                        ),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_folders_and_skips_what_is_not_a_picture() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(Examples::scan(&d.join("nope")).is_err());
        let e = Examples::scan(d).unwrap_err().to_string();
        assert!(e.contains("no label folders"), "{e}");
        std::fs::create_dir_all(d.join("van")).unwrap();
        std::fs::create_dir_all(d.join("none")).unwrap();
        std::fs::write(d.join("van/b.png"), b"x").unwrap();
        std::fs::write(d.join("van/a.JPG"), b"x").unwrap();
        std::fs::write(d.join("van/notes.txt"), b"x").unwrap();
        std::fs::write(d.join("van/.DS_Store"), b"x").unwrap();
        let e = Examples::scan(d).unwrap_err().to_string();
        assert!(e.contains("none: no pictures"), "{e}");
        std::fs::write(d.join("none/x.webp"), b"x").unwrap();
        let ex = Examples::scan(d).unwrap();
        assert_eq!(ex.folders, vec!["none", "van"]);
        let names: Vec<_> = ex
            .examples
            .iter()
            .map(|e| e.path.file_name().unwrap())
            .collect();
        assert_eq!(names, vec!["x.webp", "a.JPG", "b.png"]);
        assert_eq!(ex.skipped, vec![d.join("van/notes.txt")]);
        assert_eq!(ex.count("van"), 2);
    }
}
