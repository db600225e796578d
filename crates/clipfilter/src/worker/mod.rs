//! The batched inference worker: one thread per loaded model, shared by every stream in the
//! process (element instances, daemon pipelines, the CLI).
//!
//! Each stream sends jobs over its own bounded crossbeam channel: one sampled frame's
//! preprocessed images (one, or one per crop when a frame is tiled or has regions). Cameras use
//! [`Overflow::DropOldest`] with capacity 1: when the worker is busy the newest frame replaces
//! the waiting one and the drop is counted; batch jobs (classify, bench) use [`Overflow::Block`]
//! for back-pressure. The worker collects a batch round-robin across streams, one *image* per
//! stream per pass (fairness: a tiled camera's nine crops take turns with the other cameras'
//! frames instead of filling the batch ahead of them; a job larger than a batch spans batches),
//! waits up to `max_wait` for streams that have nothing queued yet, runs the image tower once,
//! and sends each job's normalised embeddings back to its stream's result channel, in order,
//! once all of them are done. Preprocessing happens on the producers' threads, so it overlaps
//! inference.

mod stats;

pub use stats::WorkerStats;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError, bounded, unbounded};

use crate::encoder::l2_normalize;
use crate::error::{Error, Result};
use crate::tower::ImageTower;

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchConfig {
    /// Largest batch given to the model.
    pub max_batch: usize,
    /// How long a partial batch waits for streams that have nothing queued yet.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch: crate::limits::DEFAULT_MAX_BATCH as usize,
            max_wait: Duration::from_millis(2),
        }
    }
}

/// What a stream does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Replace the oldest queued image with the new one and count a drop (live video).
    DropOldest,
    /// Wait for room (files, batch jobs).
    Block,
}

/// How a stream queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    pub capacity: usize,
    pub overflow: Overflow,
}

impl StreamOptions {
    /// Newest frame wins, one waiting at most: for live sources.
    pub fn live() -> Self {
        StreamOptions {
            capacity: 1,
            overflow: Overflow::DropOldest,
        }
    }

    /// Back-pressure with `capacity` queued images: for batch work.
    pub fn batch(capacity: usize) -> Self {
        StreamOptions {
            capacity: capacity.max(1),
            overflow: Overflow::Block,
        }
    }
}

struct Job {
    seq: u64,
    /// `images` model inputs, one after the other.
    pixels: Vec<f32>,
    images: usize,
    queued: Instant,
    results: Sender<Output>,
}

/// The verdict for one submitted job.
#[derive(Debug)]
pub struct Output {
    /// The number `submit` returned.
    pub seq: u64,
    /// The L2-normalised embeddings, one per image of the job, one after the other; or why
    /// inference failed.
    pub embeddings: std::result::Result<Vec<f32>, Failure>,
    /// Images in the job.
    pub images: usize,
    /// From submission to result.
    pub latency: Duration,
    /// Size of the largest batch the job's images ran in.
    pub batch: usize,
    /// The pixel buffer, for reuse with [`Stream::recycle`].
    pub pixels: Vec<f32>,
}

impl Output {
    /// The embeddings, one slice per image (none when inference failed).
    pub fn each(&self) -> impl Iterator<Item = &[f32]> {
        let e = self.embeddings.as_deref().unwrap_or(&[]);
        let dim = e.len().checked_div(self.images).unwrap_or(0).max(1);
        e.chunks_exact(dim)
    }
}

/// Why a submitted job has no embeddings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    /// The backend could not serve it at all (remote inference with no ready endpoint): the
    /// sample is dropped and counted in [`WorkerStats::unavailable`], not an inference error.
    pub unavailable: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

enum Control {
    Add(u64, Receiver<Job>),
    Remove(u64),
}

struct Shared {
    image_len: usize,
    control: Sender<Control>,
    doorbell: Sender<()>,
    next_stream: AtomicU64,
    stats: Arc<WorkerStats>,
    /// False once the worker thread has returned.
    alive: Arc<AtomicBool>,
}

/// The running worker. Dropping it stops the thread once every stream is gone.
pub struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    shutdown: Sender<()>,
}

impl Worker {
    /// Starts the worker thread around `encoder`, at nice value `nice` (see
    /// [`SessionConfig::nice`](crate::encoder::SessionConfig::nice)).
    pub fn start(
        encoder: Box<dyn ImageTower>,
        cfg: BatchConfig,
        nice: i32,
        label: &str,
    ) -> Result<Self> {
        let (control_tx, control_rx) = unbounded();
        let (doorbell_tx, doorbell_rx) = bounded(1);
        let (shutdown_tx, shutdown_rx) = bounded(1);
        let stats = Arc::new(WorkerStats::new());
        let alive = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared {
            image_len: encoder.image_len(),
            control: control_tx,
            doorbell: doorbell_tx,
            next_stream: AtomicU64::new(1),
            stats: stats.clone(),
            alive: alive.clone(),
        });
        let cfg = BatchConfig {
            max_batch: cfg.max_batch.max(1),
            ..cfg
        };
        let name = format!("clipfilter-infer-{label}");
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                crate::encoder::set_thread_nice(nice);
                run(encoder, cfg, control_rx, doorbell_rx, shutdown_rx, stats);
                alive.store(false, Ordering::Release);
            })
            .map_err(|e| Error::Worker {
                message: format!("cannot start the inference thread: {e}"),
            })?;
        Ok(Worker {
            shared,
            thread: Some(thread),
            shutdown: shutdown_tx,
        })
    }

    /// A new stream of images.
    pub fn stream(&self, opts: StreamOptions) -> Stream {
        let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(opts.capacity.max(1));
        let (results_tx, results_rx) = unbounded();
        // If the worker is gone, submit() reports it.
        let _ = self.shared.control.send(Control::Add(id, rx.clone()));
        Stream {
            id,
            opts,
            tx,
            steal: rx,
            results_tx,
            results: results_rx,
            shared: self.shared.clone(),
            free: Vec::new(),
            next_seq: 0,
            dropped: 0,
        }
    }

    /// Counters and histograms of this worker.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.shared.stats
    }

    /// Floats per image.
    pub fn image_len(&self) -> usize {
        self.shared.image_len
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.shutdown.try_send(());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the inference thread panicked");
        }
    }
}

/// One producer of images (a video stream, a CLI job).
pub struct Stream {
    id: u64,
    opts: StreamOptions,
    tx: Sender<Job>,
    /// The receiving end of our own queue, to take back the oldest job (newest-frame-wins).
    steal: Receiver<Job>,
    results_tx: Sender<Output>,
    results: Receiver<Output>,
    shared: Arc<Shared>,
    free: Vec<Vec<f32>>,
    next_seq: u64,
    dropped: u64,
}

/// What happened to a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub seq: u64,
    /// The queued image this one replaced (newest-frame-wins), if any.
    pub replaced: Option<u64>,
}

impl Stream {
    /// A pixel buffer for one image, recycled when possible.
    pub fn buffer(&mut self) -> Vec<f32> {
        self.buffer_for(1)
    }

    /// A pixel buffer for `images` images, recycled when possible.
    pub fn buffer_for(&mut self, images: usize) -> Vec<f32> {
        let mut b = self.free.pop().unwrap_or_default();
        b.resize(self.shared.image_len * images, 0.0);
        b
    }

    /// Floats per image.
    pub fn image_len(&self) -> usize {
        self.shared.image_len
    }

    /// Gives a buffer back for reuse.
    pub fn recycle(&mut self, buffer: Vec<f32>) {
        if self.free.len() < 4 {
            self.free.push(buffer);
        }
    }

    /// Queues one job: one or more preprocessed images (`image_len` floats each, at most
    /// [`crate::limits::MAX_CROPS`]), whose embeddings come back together in one [`Output`].
    pub fn submit(&mut self, pixels: Vec<f32>) -> Result<Submitted> {
        let len = self.shared.image_len;
        let images = pixels.len().checked_div(len).unwrap_or(0);
        if images == 0 || images * len != pixels.len() || images > crate::limits::MAX_CROPS {
            return Err(Error::invalid(
                "image",
                format!(
                    "{} floats: the model takes {len} per image, 1 to {} images per job",
                    pixels.len(),
                    crate::limits::MAX_CROPS
                ),
            ));
        }
        if !self.shared.alive.load(Ordering::Acquire) {
            return Err(Error::Worker {
                message: "the inference worker has stopped".into(),
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut job = Job {
            seq,
            pixels,
            images,
            queued: Instant::now(),
            results: self.results_tx.clone(),
        };
        let mut replaced = None;
        loop {
            match self.tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => {
                    return Err(Error::Worker {
                        message: "the inference worker has stopped".into(),
                    });
                }
                Err(TrySendError::Full(j)) => match self.opts.overflow {
                    Overflow::DropOldest => {
                        job = j;
                        if let Ok(old) = self.steal.try_recv() {
                            self.dropped += 1;
                            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            replaced = Some(old.seq);
                            self.recycle(old.pixels);
                        }
                    }
                    Overflow::Block => {
                        job = j;
                        loop {
                            if !self.shared.alive.load(Ordering::Acquire) {
                                return Err(Error::Worker {
                                    message: "the inference worker has stopped".into(),
                                });
                            }
                            match self.tx.send_timeout(job, Duration::from_millis(200)) {
                                Ok(()) => break,
                                Err(e) => job = e.into_inner(),
                            }
                        }
                        break;
                    }
                },
            }
        }
        let _ = self.shared.doorbell.try_send(());
        Ok(Submitted { seq, replaced })
    }

    /// A finished result, if one is ready.
    pub fn try_result(&self) -> Option<Output> {
        self.results.try_recv().ok()
    }

    /// Waits up to `timeout` for the next result.
    pub fn wait_result(&self, timeout: Duration) -> Option<Output> {
        self.results.recv_timeout(timeout).ok()
    }

    /// Images this stream replaced in its queue (newest-frame-wins drops).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Images queued and not yet taken by the worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.shared.control.send(Control::Remove(self.id));
        let _ = self.shared.doorbell.try_send(());
    }
}

/// A job the worker has started: images taken so far and their embeddings.
struct Running {
    job: Job,
    /// Images put into batches.
    taken: usize,
    /// Images whose embeddings are in.
    done: usize,
    embeddings: Vec<f32>,
    error: Option<Failure>,
    batch: usize,
}

/// A stream as the worker sees it: its queue and the jobs it has started, oldest first.
struct Slot {
    id: u64,
    rx: Receiver<Job>,
    running: VecDeque<Running>,
}

impl Slot {
    /// Takes the next image of this stream for the batch: (index of its job in `running`,
    /// image within the job); starts the next queued job when the started ones are all taken.
    fn next_image(&mut self) -> Option<(usize, usize)> {
        if self.running.back().is_none_or(|r| r.taken >= r.job.images) {
            let job = self.rx.try_recv().ok()?;
            self.running.push_back(Running {
                job,
                taken: 0,
                done: 0,
                embeddings: Vec::new(),
                error: None,
                batch: 0,
            });
        }
        let j = self.running.len() - 1;
        let r = self.running.back_mut()?;
        r.taken += 1;
        Some((j, r.taken - 1))
    }
}

/// The worker loop.
fn run(
    mut encoder: Box<dyn ImageTower>,
    cfg: BatchConfig,
    control: Receiver<Control>,
    doorbell: Receiver<()>,
    shutdown: Receiver<()>,
    stats: Arc<WorkerStats>,
) {
    let image_len = encoder.image_len();
    let mut slots: Vec<Slot> = Vec::new();
    let mut cursor = 0usize;
    // (slot, job in the slot, image within the job) of each image in the batch.
    let mut batch: Vec<(usize, usize, usize)> = Vec::with_capacity(cfg.max_batch);
    let mut input: Vec<f32> = Vec::with_capacity(cfg.max_batch * image_len);
    let mut output: Vec<f32> = Vec::new();
    let mut served: Vec<bool> = Vec::new();
    loop {
        stats.beat();
        loop {
            match control.try_recv() {
                Ok(Control::Add(id, rx)) => slots.push(Slot {
                    id,
                    rx,
                    running: VecDeque::new(),
                }),
                Ok(Control::Remove(id)) => slots.retain(|s| s.id != id),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if slots.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        if shutdown.try_recv().is_ok() {
            return;
        }
        served.clear();
        served.resize(slots.len(), false);
        collect(
            &mut slots,
            &mut cursor,
            &mut batch,
            &mut served,
            cfg.max_batch,
        );
        if batch.is_empty() {
            // Idle: sleep until something is submitted or a stream comes or goes.
            let mut sel = Select::new();
            sel.recv(&doorbell);
            sel.recv(&control);
            sel.recv(&shutdown);
            // Control and shutdown messages are read at the top of the loop.
            if let Ok(0) = sel.ready_timeout(Duration::from_millis(500)) {
                let _ = doorbell.try_recv();
            }
            continue;
        }
        // A partial batch waits briefly for streams that have nothing queued yet.
        if batch.len() < cfg.max_batch && served.iter().any(|s| !s) && !cfg.max_wait.is_zero() {
            let deadline = Instant::now() + cfg.max_wait;
            while batch.len() < cfg.max_batch {
                if doorbell.recv_deadline(deadline).is_err() {
                    break;
                }
                collect(
                    &mut slots,
                    &mut cursor,
                    &mut batch,
                    &mut served,
                    cfg.max_batch,
                );
            }
        }
        let n = batch.len();
        input.clear();
        for &(slot, job, image) in &batch {
            let pixels = &slots[slot].running[job].job.pixels;
            input.extend_from_slice(&pixels[image * image_len..(image + 1) * image_len]);
        }
        stats.queue_depth.store(
            slots.iter().map(|s| s.rx.len() as u64).sum(),
            Ordering::Relaxed,
        );
        let started = Instant::now();
        let result = {
            let _span = tracing::debug_span!("infer", batch = n).entered();
            encoder.encode(&input, n, &mut output)
        };
        let took = started.elapsed();
        let unavailable = result.as_ref().is_err_and(Error::is_unavailable);
        if !unavailable {
            stats.record_batch(n, took);
        }
        match &result {
            Ok(()) => stats.set_available(),
            Err(e) if unavailable => stats.record_unavailable(n, &e.to_string()),
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, batch = n, "inference failed");
            }
        }
        let dim = output.len().checked_div(n).unwrap_or(0);
        for (i, &(slot, job, _)) in batch.iter().enumerate() {
            let r = &mut slots[slot].running[job];
            r.done += 1;
            r.batch = r.batch.max(n);
            match &result {
                Ok(()) => {
                    let start = r.embeddings.len();
                    r.embeddings
                        .extend_from_slice(&output[i * dim..(i + 1) * dim]);
                    l2_normalize(&mut r.embeddings[start..]);
                }
                Err(e) => {
                    r.error = Some(Failure {
                        message: e.to_string(),
                        unavailable,
                    })
                }
            }
        }
        batch.clear();
        for slot in &mut slots {
            while slot.running.front().is_some_and(|r| r.done >= r.job.images)
                && let Some(r) = slot.running.pop_front()
            {
                // A stream that closed meanwhile no longer listens; that is fine.
                let _ = r.job.results.send(Output {
                    seq: r.job.seq,
                    embeddings: match r.error {
                        None => Ok(r.embeddings),
                        Some(e) => Err(e),
                    },
                    images: r.job.images,
                    latency: r.job.queued.elapsed(),
                    batch: r.batch,
                    pixels: r.job.pixels,
                });
            }
        }
    }
}

/// Takes images round-robin, one per stream per pass, until the batch is full or a pass finds
/// nothing.
fn collect(
    slots: &mut [Slot],
    cursor: &mut usize,
    batch: &mut Vec<(usize, usize, usize)>,
    served: &mut [bool],
    max: usize,
) {
    if slots.is_empty() {
        return;
    }
    loop {
        let mut got = false;
        for k in 0..slots.len() {
            if batch.len() >= max {
                return;
            }
            let i = (*cursor + k) % slots.len();
            if let Some((job, image)) = slots[i].next_image() {
                batch.push((i, job, image));
                served[i] = true;
                got = true;
            }
        }
        *cursor = (*cursor + 1) % slots.len();
        if !got {
            return;
        }
    }
}
