//! The engine: a loaded CLIP model, shared process-wide.
//!
//! An [`Engine`] owns the image tower inside the batched [`Worker`] and the text tower (with
//! its embedding cache) behind a mutex. [`Engine::shared`] returns the same engine to every
//! caller that asks for the same model and settings, so ten `clipfilter` elements in one
//! process batch their frames through one worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::encoder::cache::{self, DiskCache};
use crate::encoder::{ImageEncoder, Provider, SessionConfig, TextEncoder, l2_normalize};
use crate::error::{Error, Result};
use crate::labels::{CompiledLabels, Embedder, LabelDefaults, LabelSet};
use crate::model::{ModelDir, Variant};
use crate::preprocess::Preprocessor;
use crate::probe::ProbeModel;
use crate::remote::{Remote, RemoteConfig, WireFormat};
use crate::tower::ImageTower;
use crate::worker::{BatchConfig, Stream, StreamOptions, Worker, WorkerStats};

/// Where the towers run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// ONNX Runtime sessions in this process (`session` of [`EngineConfig`]).
    #[default]
    Local,
    /// A Triton Inference Server pool; the local folder gives the tokenizer, preprocessing and
    /// the interface the server's models are checked against. (Boxed: it is much larger than
    /// `Local`.)
    Triton(Box<RemoteConfig>),
}

impl Backend {
    /// `local` or `triton`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Triton(_) => "triton",
        }
    }
}

/// Everything that identifies a loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineConfig {
    pub model_dir: PathBuf,
    pub variant: Variant,
    pub session: SessionConfig,
    pub batch: BatchConfig,
    pub backend: Backend,
}

impl EngineConfig {
    /// Defaults (fp32, CPU, batches of 8) for `model_dir`.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            model_dir: model_dir.into(),
            variant: Variant::Fp32,
            session: SessionConfig::default(),
            batch: BatchConfig::default(),
            backend: Backend::Local,
        }
    }
}

/// A loaded model: image worker, text encoder, preprocessing config.
pub struct Engine {
    config: EngineConfig,
    model: ModelDir,
    worker: Worker,
    text: Mutex<TextEncoder>,
    image_provider: Provider,
    text_provider: Provider,
    dim: usize,
    /// The embedding cache shared by the processes of this machine, when in use.
    disk: Option<Arc<DiskCache>>,
    /// What identifies the image tower and its preprocessing ([`Engine::image_fingerprint`]).
    image_fingerprint: std::sync::OnceLock<String>,
    remote: Option<Remote>,
    /// Embeddings of label example pictures, by path, kept while the file's size and
    /// modification time stay the same: a reload re-embeds only the pictures that changed.
    image_cache: Mutex<HashMap<PathBuf, CachedImage>>,
    /// Pictures embedded for labels (cache misses), for tests and logs.
    label_images_embedded: std::sync::atomic::AtomicU64,
    /// The image tower's identity (hashed once, when a probe first needs it).
    probe_model: Mutex<Option<ProbeModel>>,
}

/// A label picture's embedding and what identifies the file's version.
struct CachedImage {
    len: u64,
    modified: Option<std::time::SystemTime>,
    embedding: Vec<f32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.dir)
            .field("variant", &self.config.variant)
            .finish()
    }
}

type Registry = Mutex<HashMap<EngineConfig, Weak<Engine>>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Engine {
    /// The process-wide engine for `config`, loading it on first use.
    pub fn shared(config: &EngineConfig) -> Result<Arc<Engine>> {
        let mut key = config.clone();
        key.model_dir =
            std::fs::canonicalize(&config.model_dir).unwrap_or_else(|_| config.model_dir.clone());
        // Loading takes the lock: two elements starting together load the model once.
        let mut map = registry().lock().map_err(|_| Error::Worker {
            message: "engine registry poisoned".into(),
        })?;
        if let Some(engine) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(engine);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let engine = Arc::new(Engine::load(&key)?);
        map.insert(key, Arc::downgrade(&engine));
        Ok(engine)
    }

    /// Loads a model (not shared).
    pub fn load(config: &EngineConfig) -> Result<Engine> {
        let _span = tracing::info_span!("load_model", model = %config.model_dir.display(), variant = %config.variant, backend = config.backend.name()).entered();
        let model = ModelDir::open(&config.model_dir, config.variant)?;
        let size = model.preprocess.output_size().ok_or_else(|| {
            Error::model(
                &model.dir,
                "preprocessor_config.json does not fix the image size (no crop_size)",
            )
        })?;
        let (mut image, mut text, remote): (Box<dyn ImageTower>, TextEncoder, Option<Remote>) =
            match &config.backend {
                Backend::Local => {
                    let image = ImageEncoder::load(&model.vision_onnx, size, &config.session)?;
                    let text = TextEncoder::load(&model, &text_session(&config.session))?;
                    (Box::new(image), text, None)
                }
                Backend::Triton(remote) => {
                    let towers = crate::remote::connect(
                        remote,
                        &model,
                        &config.session,
                        &text_session(&config.session),
                    )?;
                    let text = TextEncoder::new(&model, Box::new(towers.text))?;
                    (Box::new(towers.image), text, Some(towers.remote))
                }
            };

        let disk = DiskCache::open_default().map(Arc::new);
        if let Some(d) = &disk {
            let tokenizer_config = model.dir.join("tokenizer_config.json");
            let mut files = vec![model.text_onnx.as_path(), model.tokenizer_json.as_path()];
            if tokenizer_config.is_file() {
                files.push(&tokenizer_config);
            }
            match d.fingerprint(&files) {
                Ok(fp) => text.set_disk_cache(
                    d.clone(),
                    format!("{fp}:{}:{}", config.variant, model.context_length),
                ),
                Err(e) => tracing::warn!(error = %e, "text embeddings not cached on disk"),
            }
        }

        // One image and one text through the towers: catches towers that don't belong together
        // before any frame arrives, and warms the providers up. On a GPU the largest batch runs
        // too, so that TensorRT builds (or loads from its cache) an engine whose shape profile
        // covers every batch size the worker will use.
        let mut out = Vec::new();
        image.encode(&vec![0.0; image.image_len()], 1, &mut out)?;
        let max_batch = config.batch.max_batch.max(1);
        if matches!(image.provider(), Provider::Cuda | Provider::TensorRt) && max_batch > 1 {
            let started = std::time::Instant::now();
            let mut big = Vec::new();
            image.encode(
                &vec![0.0; max_batch * image.image_len()],
                max_batch,
                &mut big,
            )?;
            tracing::info!(
                batch = max_batch,
                seconds = started.elapsed().as_secs_f32(),
                "warmed up the largest batch"
            );
        }
        let text_dim = text.embed(&["a photo"])?.first().map_or(0, Vec::len);
        if out.len() != text_dim {
            return Err(Error::model(
                &model.dir,
                format!(
                    "the image tower gives embeddings of width {} but the text tower {text_dim}: the two towers do not belong together",
                    out.len()
                ),
            ));
        }
        if let Some(p) = model.projection_dim.filter(|p| *p != text_dim) {
            return Err(Error::model(
                &model.dir,
                format!("config.json says projection_dim {p} but the towers give {text_dim}"),
            ));
        }
        let image_provider = image.provider();
        let text_provider = text.provider();
        let label = model
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let worker = Worker::start(image, config.batch, config.session.nice, &label)?;
        tracing::info!(
            model = %model.dir.display(), dim = text_dim, image_provider = %image_provider, text_provider = %text_provider,
            size = ?size, logit_scale = model.logit_scale, "model loaded"
        );
        Ok(Engine {
            config: config.clone(),
            model,
            worker,
            text: Mutex::new(text),
            image_provider,
            text_provider,
            dim: text_dim,
            remote,
            disk,
            image_fingerprint: std::sync::OnceLock::new(),
            image_cache: Mutex::new(HashMap::new()),
            label_images_embedded: Default::default(),
            probe_model: Mutex::new(None),
        })
    }

    /// What identifies the image tower: a SHA-256 (hex) of its ONNX graph and preprocessing
    /// configuration, with the variant. Embeddings from engines with equal fingerprints are
    /// comparable (a sample history keeps it with its embeddings).
    pub fn image_fingerprint(&self) -> Result<String> {
        if let Some(fp) = self.image_fingerprint.get() {
            return Ok(fp.clone());
        }
        let pre = self.model.dir.join("preprocessor_config.json");
        let files = [self.model.vision_onnx.as_path(), pre.as_path()];
        let hash = match &self.disk {
            Some(d) => d.fingerprint(&files)?,
            None => cache::fingerprint_files(&files)?,
        };
        let fp = format!("{}:{}", &hash[..32], self.config.variant);
        Ok(self.image_fingerprint.get_or_init(|| fp).clone())
    }

    /// The embedding cache on disk, when in use.
    pub fn disk_cache(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// The remote backend's pool and counters, when the towers run on Triton.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// The model folder and its settings.
    pub fn model(&self) -> &ModelDir {
        &self.model
    }

    /// The configuration this engine was loaded with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Providers running the (image, text) towers.
    pub fn providers(&self) -> (Provider, Provider) {
        (self.image_provider, self.text_provider)
    }

    /// A preprocessor for this model (one per producing thread). With the uint8 wire format
    /// it leaves the values unnormalised (the 8-bit RGB values, which the server's model
    /// normalises).
    pub fn preprocessor(&self) -> Result<Preprocessor> {
        match &self.config.backend {
            Backend::Triton(r) if r.wire == WireFormat::Uint8 => {
                Preprocessor::new(self.model.preprocess.unnormalised())
            }
            _ => Preprocessor::new(self.model.preprocess.clone()),
        }
    }

    /// A stream into the shared image worker.
    pub fn stream(&self, opts: StreamOptions) -> Stream {
        self.worker.stream(opts)
    }

    /// The image worker's counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        self.worker.stats()
    }

    /// Raw text embeddings (cached by text).
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut text = self.text.lock().map_err(|_| Error::Worker {
            message: "text encoder poisoned".into(),
        })?;
        text.embed(texts)
    }

    /// Token ids as the text tower sees them (start and end tokens included).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.text.lock().map_err(|_| Error::Worker {
            message: "text encoder poisoned".into(),
        })?;
        enc.tokenizer().encode(text)
    }

    /// Embeds a label set's prompts, ready to score frames.
    pub fn compile_labels(
        &self,
        set: &LabelSet,
        defaults: &LabelDefaults,
    ) -> Result<CompiledLabels> {
        let _span = tracing::info_span!("compile_labels", labels = set.labels.len()).entered();
        let labels = CompiledLabels::compile(set, defaults, self)?;
        self.trim_image_cache();
        Ok(labels)
    }

    /// The normalised embedding of a label's example picture: from the cache while the file's
    /// size and modification time are unchanged, else embedded (and cached).
    pub fn embed_label_image(&self, path: &Path) -> Result<Vec<f32>> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::invalid(
                "image",
                format!("{} is not a regular file", path.display()),
            ));
        }
        let (len, modified) = (meta.len(), meta.modified().ok());
        let lock = || {
            self.image_cache.lock().map_err(|_| Error::Worker {
                message: "image cache poisoned".into(),
            })
        };
        if let Some(c) = lock()?.get(path)
            && c.len == len
            && c.modified == modified
            && modified.is_some()
        {
            return Ok(c.embedding.clone());
        }
        let embedding = self.embed_image_file(path)?;
        self.label_images_embedded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock()?.insert(
            path.to_path_buf(),
            CachedImage {
                len,
                modified,
                embedding: embedding.clone(),
            },
        );
        Ok(embedding)
    }

    /// How many label pictures were embedded (not taken from the cache) so far.
    pub fn label_images_embedded(&self) -> u64 {
        self.label_images_embedded
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets cached pictures that no longer exist, so the cache follows the label files.
    fn trim_image_cache(&self) {
        if let Ok(mut cache) = self.image_cache.lock()
            && !cache.is_empty()
        {
            cache.retain(|p, _| p.is_file());
        }
    }

    /// The identity of this model's image tower, which probes record.
    pub fn probe_model(&self) -> Result<ProbeModel> {
        let mut m = self.probe_model.lock().map_err(|_| Error::Worker {
            message: "probe model poisoned".into(),
        })?;
        if let Some(p) = &*m {
            return Ok(p.clone());
        }
        let p = ProbeModel::of(&self.model.dir, &self.model.vision_onnx, self.dim)?;
        *m = Some(p.clone());
        Ok(p)
    }

    /// Normalised embeddings of preprocessed images (`n * image_len` floats), through the
    /// worker; blocks until done.
    pub fn embed_pixels(&self, pixels: &[f32]) -> Result<Vec<Vec<f32>>> {
        let len = self.worker.image_len();
        if len == 0 || !pixels.len().is_multiple_of(len) {
            return Err(Error::invalid(
                "images",
                format!(
                    "{} floats is not a whole number of {len}-float images",
                    pixels.len()
                ),
            ));
        }
        let n = pixels.len() / len;
        let mut stream = self.stream(StreamOptions::batch(self.config.batch.max_batch.max(1) * 2));
        let mut out = Vec::with_capacity(n);
        let mut pending = 0usize;
        let mut chunks = pixels.chunks_exact(len);
        while out.len() < n {
            while pending < stream_window(self) {
                let Some(chunk) = chunks.next() else { break };
                let mut buf = stream.buffer();
                buf.copy_from_slice(chunk);
                stream.submit(buf)?;
                pending += 1;
            }
            let o = stream
                .wait_result(Duration::from_secs(600))
                .ok_or_else(|| Error::Worker {
                    message: "no result from the inference worker".into(),
                })?;
            pending -= 1;
            out.push(
                o.embeddings
                    .map_err(|f| Error::Worker { message: f.message })?,
            );
            stream.recycle(o.pixels);
        }
        Ok(out)
    }

    /// Normalised embedding of one image file (from the disk cache when its bytes were embedded
    /// before by this image tower).
    pub fn embed_image_file(&self, path: &Path) -> Result<Vec<f32>> {
        let bytes = crate::input::read(path)?;
        self.embed_image_bytes(&bytes, path)
    }

    /// Normalised embedding of an encoded image (JPEG, PNG...) held in memory; `name` names it
    /// in errors. Cached on disk like [`Engine::embed_image_file`].
    pub fn embed_image_bytes(&self, bytes: &[u8], name: &Path) -> Result<Vec<f32>> {
        let key = match &self.disk {
            Some(_) => Some(cache::key(&[
                self.image_fingerprint()?.as_bytes(),
                b"image",
                bytes,
            ])),
            None => None,
        };
        if let (Some(disk), Some(key)) = (&self.disk, key)
            && let Ok(mut found) = disk.get_many(&[key])
            && let Some(Some(e)) = found.pop()
        {
            return Ok(e);
        }
        let rgb = decode_image_bytes(bytes, name)?;
        let mut pre = self.preprocessor()?;
        let mut pixels = vec![0.0; pre.output_len()];
        pre.run_rgb8(rgb.as_raw(), rgb.width(), rgb.height(), &mut pixels)?;
        let e = self
            .embed_pixels(&pixels)?
            .pop()
            .ok_or_else(|| Error::Worker {
                message: "no result".into(),
            })?;
        if let (Some(disk), Some(key)) = (&self.disk, key)
            && let Err(err) = disk.put_many(&[(key, &e)])
        {
            tracing::warn!(error = %err, "embedding cache not written");
        }
        Ok(e)
    }

    /// Decodes an image file and preprocesses it.
    pub fn preprocess_file(&self, path: &Path) -> Result<Vec<f32>> {
        let rgb = decode_image(path)?;
        let mut pre = self.preprocessor()?;
        let mut out = vec![0.0; pre.output_len()];
        pre.run_rgb8(rgb.as_raw(), rgb.width(), rgb.height(), &mut out)?;
        Ok(out)
    }
}

impl Embedder for Engine {
    fn logit_scale(&self) -> f32 {
        self.model.logit_scale
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Engine::embed_texts(self, texts)
    }

    fn embed_image(&self, path: &Path) -> Result<Vec<f32>> {
        self.embed_label_image(path)
    }

    fn probe_model(&self) -> Result<ProbeModel> {
        Engine::probe_model(self)
    }
}

/// The session config of the text tower (and of the local fallback): the text tower runs once
/// per label change, with prompts of every length: on TensorRT each new shape would build an
/// engine, so it runs on the next provider in the list, at the loader's priority (label changes
/// wait for it).
fn text_session(session: &SessionConfig) -> SessionConfig {
    let mut text = session.clone();
    text.nice = 0;
    text.providers.retain(|p| *p != Provider::TensorRt);
    if text.providers.is_empty() {
        text.providers.push(Provider::Cpu);
    }
    if text.require_provider && session.providers.first() == Some(&Provider::TensorRt) {
        text.require_provider = false;
    }
    text
}

fn stream_window(engine: &Engine) -> usize {
    engine.config.batch.max_batch.max(1) * 2
}

/// Decodes an image file to 8-bit RGB (alpha dropped, as `CLIPImageProcessor`'s convert_rgb).
pub fn decode_image(path: &Path) -> Result<image::RgbImage> {
    let bytes = crate::input::read(path)?;
    decode_image_bytes(&bytes, path)
}

/// Decodes an encoded image held in memory to 8-bit RGB; `path` names it in errors.
pub fn decode_image_bytes(bytes: &[u8], path: &Path) -> Result<image::RgbImage> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if img.format().is_none() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            message: "unknown image format".into(),
        });
    }
    let img = img.decode().map_err(|e| Error::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// Normalises a raw embedding in place and returns it.
pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    l2_normalize(&mut v);
    v
}
