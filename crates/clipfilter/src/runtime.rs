//! Finding and loading ONNX Runtime's shared library, once per process.
//!
//! clipfilter is built with `ort`'s `load-dynamic`: nothing is downloaded at build time and the
//! library is opened at run time. The first of these that exists is used:
//!
//! 1. a path set with [`set_library_path`] (the daemon's `onnxruntime` setting);
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. `libonnxruntime.so` next to the running executable, or in `../lib/clipfilter/` from it;
//! 4. the project's own `.local/onnxruntime-gpu/lib/` and `.local/onnxruntime/lib/` (what
//!    `tools/setup.sh` installs; baked in at build time, so development builds find it);
//! 5. `/usr/lib/clipfilter/`, `/usr/local/lib/clipfilter/`;
//! 6. `libonnxruntime.so` through the dynamic loader's search path.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

const LIBRARY_NAME: &str = "libonnxruntime.so";

static EXPLICIT_PATH: Mutex<Option<PathBuf>> = Mutex::new(None);
static ENVIRONMENT: OnceLock<std::result::Result<Loaded, String>> = OnceLock::new();

struct Loaded {
    environment: ort::environment::Environment,
    path: PathBuf,
    version: String,
}

/// Use `path` as ONNX Runtime's library. Only effective before the first model is loaded.
pub fn set_library_path(path: impl Into<PathBuf>) {
    let path = path.into();
    if let Ok(mut slot) = EXPLICIT_PATH.lock() {
        *slot = Some(path);
    }
}

/// The places searched for the library, in order (see the module documentation).
pub fn candidate_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = EXPLICIT_PATH.lock().ok().and_then(|slot| slot.clone()) {
        paths.push(p);
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        paths.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        paths.push(dir.join(LIBRARY_NAME));
        paths.push(dir.join("../lib/clipfilter").join(LIBRARY_NAME));
    }
    // The workspace root, two folders above this crate (crates/clipfilter).
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .join(".local");
    paths.push(project.join("onnxruntime-gpu/lib").join(LIBRARY_NAME));
    paths.push(project.join("onnxruntime/lib").join(LIBRARY_NAME));
    paths.push(PathBuf::from("/usr/lib/clipfilter").join(LIBRARY_NAME));
    paths.push(PathBuf::from("/usr/local/lib/clipfilter").join(LIBRARY_NAME));
    paths
}

fn load() -> std::result::Result<Loaded, String> {
    let candidates = candidate_paths();
    let chosen = candidates.iter().find(|p| p.exists()).cloned();
    let explicit = EXPLICIT_PATH.lock().ok().and_then(|slot| slot.clone());
    if let (Some(explicit), Some(chosen)) = (&explicit, &chosen)
        && explicit != chosen
    {
        return Err(format!("{} does not exist", explicit.display()));
    }
    let path = chosen.unwrap_or_else(|| PathBuf::from(LIBRARY_NAME));
    let builder = ort::init_from(&path).map_err(|e| {
        format!(
            "{e}. Run tools/setup.sh (it installs the library into .local/onnxruntime/), or point \
             ORT_DYLIB_PATH at libonnxruntime.so from the `onnxruntime` wheel. Searched: {}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let environment = builder
        .with_name("clipfilter")
        .build()
        .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))?;
    // The wheel's library is named libonnxruntime.so.<version> (the set-up links to it).
    let version = std::fs::canonicalize(&path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .and_then(|n| n.strip_prefix("libonnxruntime.so.").map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    tracing::info!(path = %path.display(), %version, "loaded ONNX Runtime");
    Ok(Loaded {
        environment,
        path,
        version,
    })
}

fn loaded() -> Result<&'static Loaded> {
    ENVIRONMENT
        .get_or_init(load)
        .as_ref()
        .map_err(|message| Error::RuntimeLibrary {
            message: message.clone(),
        })
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    Ok(&loaded()?.environment)
}

/// The path and version of the loaded library.
pub fn library_info() -> Result<(PathBuf, String)> {
    let l = loaded()?;
    Ok((l.path.clone(), l.version.clone()))
}
