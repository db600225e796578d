//! ONNX Runtime sessions for the two CLIP towers, with an ordered list of execution providers and
//! an honest account of which one runs.
//!
//! A provider that was asked for and cannot be used is logged as an error and, when the user
//! required it, fails the load. ONNX Runtime itself would quietly fall back to the CPU; we
//! register each provider with `error_on_failure` so that we know.

pub mod cache;
mod image;
mod memory_cache;
mod text;

pub use image::ImageEncoder;
pub use text::{LocalText, TextEncoder};

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ort::ep::{self, ExecutionProvider as _};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorElementType;

use crate::error::{Error, Result};

/// An ONNX Runtime execution provider clipfilter can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// NVIDIA TensorRT (fp16, with a persistent engine cache).
    TensorRt,
    /// NVIDIA CUDA.
    Cuda,
    /// ONNX Runtime's own CPU kernels; always available.
    Cpu,
    /// A model on a Triton Inference Server (`[model] backend = "triton"`); never in a list of
    /// execution providers, only reported.
    Triton,
}

impl Provider {
    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
            Provider::Triton => "triton",
        }
    }

    /// Parses a comma-separated, ordered list such as `tensorrt,cuda,cpu`.
    pub fn parse_list(s: &str) -> Result<Vec<Provider>> {
        let list: Vec<Provider> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_>>()?;
        if list.is_empty() {
            return Err(Error::invalid("execution providers", "the list is empty"));
        }
        Ok(list)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tensorrt" | "trt" => Ok(Provider::TensorRt),
            "cuda" => Ok(Provider::Cuda),
            "cpu" => Ok(Provider::Cpu),
            other => Err(Error::invalid(
                "execution provider",
                format!("`{other}`: expected tensorrt, cuda or cpu"),
            )),
        }
    }
}

/// How sessions are created.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionConfig {
    /// Providers in order of preference. The CPU is used when none of them can be.
    pub providers: Vec<Provider>,
    /// Fail instead of falling back when the first provider cannot be used.
    pub require_provider: bool,
    /// Threads inside one operator (0: ONNX Runtime's default, one per core).
    pub intra_threads: usize,
    /// Folder for TensorRT engines, so that they are built once.
    pub tensorrt_cache: Option<PathBuf>,
    /// Let TensorRT run in fp16.
    pub tensorrt_fp16: bool,
    /// GPU index for CUDA and TensorRT.
    pub device_id: i32,
    /// Nice value of the threads that run this session (its ONNX Runtime thread pool, and the
    /// inference worker that calls it). Positive values let video decoding and the streaming
    /// threads of the same process win the CPU when both want it: under overload inference
    /// drops frames (newest wins, counted) instead of starving decoders. 0 keeps the priority
    /// of the thread that loads the model.
    pub nice: i32,
}

/// The nice value inference threads get by default.
pub const DEFAULT_NICE: i32 = 10;

/// Sets the nice value of the calling thread (Linux keeps it per thread, and threads started
/// from it inherit it). Raising it needs no privilege; failures are logged, not fatal.
pub fn set_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority have no memory-safety preconditions; PRIO_PROCESS with a
    // thread id changes that one thread.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        tracing::warn!(
            nice,
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of the inference threads"
        );
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            providers: vec![Provider::Cpu],
            require_provider: false,
            intra_threads: 0,
            tensorrt_cache: None,
            tensorrt_fp16: true,
            device_id: 0,
            nice: DEFAULT_NICE,
        }
    }
}

fn ort_error<R>(context: &str, e: ort::Error<R>) -> Error {
    Error::onnx(context, ort::Error::new_with_code(e.code(), e.message()))
}

fn dispatch(provider: Provider, cfg: &SessionConfig) -> Option<ep::ExecutionProviderDispatch> {
    match provider {
        Provider::TensorRt => {
            let mut trt = ep::TensorRT::default()
                .with_device_id(cfg.device_id)
                .with_fp16(cfg.tensorrt_fp16);
            if let Some(dir) = &cfg.tensorrt_cache {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            Some(trt.build().error_on_failure())
        }
        Provider::Cuda => Some(
            ep::CUDA::default()
                .with_device_id(cfg.device_id)
                .build()
                .error_on_failure(),
        ),
        Provider::Cpu | Provider::Triton => None,
    }
}

fn compiled_in(provider: Provider) -> bool {
    match provider {
        Provider::TensorRt => ep::TensorRT::is_available().unwrap_or(false),
        Provider::Cuda => ep::CUDA::is_available().unwrap_or(false),
        Provider::Cpu => true,
        Provider::Triton => false,
    }
}

/// Creates a session for `path`, registering the configured providers in order. Returns the
/// session and the provider that runs it (the first one that registered).
pub(crate) fn build_session(
    path: &Path,
    cfg: &SessionConfig,
    what: &str,
) -> Result<(Session, Provider)> {
    if cfg.nice == 0 {
        return build_session_here(path, cfg, what);
    }
    // ONNX Runtime starts the session's thread pool while it is built, and threads inherit
    // the nice value of the thread that starts them: build it on a short-lived thread whose
    // priority is lowered (the caller's cannot be raised back without privileges).
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("clipfilter-onnx".into())
            .spawn_scoped(scope, || {
                set_thread_nice(cfg.nice);
                build_session_here(path, cfg, what)
            })
            .map_err(|e| Error::Worker {
                message: format!("cannot start a thread to load {what}: {e}"),
            })?
            .join()
            .map_err(|_| Error::Worker {
                message: format!("loading {what} {} panicked", path.display()),
            })?
    })
}

fn build_session_here(path: &Path, cfg: &SessionConfig, what: &str) -> Result<(Session, Provider)> {
    let env = crate::runtime::environment()?;
    let context = || format!("{what} {}", path.display());
    let mut builder = Session::builder(env)
        .map_err(|e| ort_error(&context(), e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| ort_error(&context(), e))?;
    if cfg.intra_threads > 0 {
        builder = builder
            .with_intra_threads(cfg.intra_threads)
            .map_err(|e| ort_error(&context(), e))?;
    }
    let mut active = None;
    for (i, &provider) in cfg.providers.iter().enumerate() {
        if provider == Provider::Cpu {
            active.get_or_insert(Provider::Cpu);
            break;
        }
        let failure = if !compiled_in(provider) {
            Some(format!(
                "the loaded ONNX Runtime has no {provider} support (install the onnxruntime-gpu library: tools/setup.sh --gpu)"
            ))
        } else if let Some(d) = dispatch(provider, cfg) {
            match builder.with_execution_providers([d]) {
                Ok(b) => {
                    builder = b;
                    active.get_or_insert(provider);
                    None
                }
                Err(e) => {
                    let message = e.message().to_string();
                    builder = e.recover();
                    Some(message)
                }
            }
        } else {
            None
        };
        if let Some(message) = failure {
            if cfg.require_provider && i == 0 {
                return Err(Error::Provider {
                    provider: provider.name().into(),
                    message,
                });
            }
            tracing::error!(%provider, model = %path.display(), %message, "execution provider requested but unavailable; trying the next one");
        }
    }
    let active = match active {
        Some(p) => p,
        None => {
            if cfg.require_provider {
                return Err(Error::Provider {
                    provider: cfg.providers.first().map_or("none", |p| p.name()).into(),
                    message: "no requested execution provider could be used".into(),
                });
            }
            tracing::error!(model = %path.display(), requested = ?cfg.providers, "no requested execution provider could be used; running on the CPU");
            Provider::Cpu
        }
    };
    let file = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !file.is_file() {
        return Err(Error::invalid(
            "model file",
            format!("{} is not a file", path.display()),
        ));
    }
    let session = builder
        .commit_from_file(path)
        // A file that ONNX Runtime cannot load is a bad model, not a runtime failure.
        .map_err(|e| {
            Error::model(
                path.parent().unwrap_or(path),
                format!("{} cannot be loaded: {}", path.display(), e.message()),
            )
        })?;
    tracing::info!(model = %path.display(), provider = %active, "{what} ready");
    Ok((session, active))
}

/// Shape and element type of a named graph input or output.
pub(crate) struct Port {
    pub name: String,
    pub ty: TensorElementType,
    pub shape: Vec<i64>,
}

pub(crate) fn port(outlet: &ort::value::Outlet) -> Option<Port> {
    let ty = outlet.dtype().tensor_type()?;
    let shape = outlet.dtype().tensor_shape()?.iter().copied().collect();
    Some(Port {
        name: outlet.name().to_string(),
        ty,
        shape,
    })
}

/// Finds the output called `preferred`, or the only 2-D float output.
pub(crate) fn find_output(session: &Session, preferred: &str, path: &Path) -> Result<Port> {
    let mut ports: Vec<Port> = session.outputs().iter().filter_map(port).collect();
    if let Some(i) = ports.iter().position(|p| p.name == preferred) {
        return Ok(ports.swap_remove(i));
    }
    let mut two_d = ports.into_iter().filter(|p| p.shape.len() == 2);
    match (two_d.next(), two_d.next()) {
        (Some(p), None) => Ok(p),
        _ => Err(Error::model(
            path.parent().unwrap_or(path),
            format!(
                "{}: no output named `{preferred}` (outputs: {})",
                path.display(),
                names(session.outputs())
            ),
        )),
    }
}

pub(crate) fn names(outlets: &[ort::value::Outlet]) -> String {
    outlets
        .iter()
        .map(|o| o.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// L2-normalises `v` in place (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
