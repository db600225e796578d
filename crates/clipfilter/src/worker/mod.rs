//! The batched inference worker: one thread per loaded model, shared by every stream in the
//! process (element instances, daemon pipelines, the CLI).
//!
//! Each stream sends preprocessed images over its own bounded crossbeam channel. Cameras use
//! [`Overflow::DropOldest`] with capacity 1: when the worker is busy the newest frame replaces
//! the waiting one and the drop is counted; batch jobs (classify, bench) use [`Overflow::Block`]
//! for back-pressure. The worker collects a batch round-robin across streams (fairness: one
//! image per stream per pass), waits up to `max_wait` for streams that have nothing queued yet,
//! runs the image tower once, and routes each normalised embedding back to its stream's result
//! channel in order. Preprocessing happens on the producers' threads, so it overlaps inference.

mod stats;

pub use stats::WorkerStats;

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
    pixels: Vec<f32>,
    queued: Instant,
    results: Sender<Output>,
}

/// The verdict for one submitted image.
#[derive(Debug)]
pub struct Output {
    /// The number `submit` returned.
    pub seq: u64,
    /// The L2-normalised embedding, or why inference failed.
    pub embedding: std::result::Result<Vec<f32>, Failure>,
    /// From submission to result.
    pub latency: Duration,
    /// Size of the batch the image ran in.
    pub batch: usize,
    /// The pixel buffer, for reuse with [`Stream::recycle`].
    pub pixels: Vec<f32>,
}

/// Why a submitted image has no embedding.
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
    /// A pixel buffer of the right size, recycled when possible.
    pub fn buffer(&mut self) -> Vec<f32> {
        let mut b = self.free.pop().unwrap_or_default();
        b.resize(self.shared.image_len, 0.0);
        b
    }

    /// Gives a buffer back for reuse.
    pub fn recycle(&mut self, buffer: Vec<f32>) {
        if self.free.len() < 4 {
            self.free.push(buffer);
        }
    }

    /// Queues one preprocessed image (`image_len` floats).
    pub fn submit(&mut self, pixels: Vec<f32>) -> Result<Submitted> {
        if pixels.len() != self.shared.image_len {
            return Err(Error::invalid(
                "image",
                format!(
                    "{} floats, the model takes {}",
                    pixels.len(),
                    self.shared.image_len
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
    let mut streams: Vec<(u64, Receiver<Job>)> = Vec::new();
    let mut cursor = 0usize;
    let mut batch: Vec<Job> = Vec::with_capacity(cfg.max_batch);
    let mut input: Vec<f32> = Vec::with_capacity(cfg.max_batch * image_len);
    let mut output: Vec<f32> = Vec::new();
    let mut served: Vec<bool> = Vec::new();
    loop {
        stats.beat();
        loop {
            match control.try_recv() {
                Ok(Control::Add(id, rx)) => streams.push((id, rx)),
                Ok(Control::Remove(id)) => streams.retain(|(s, _)| *s != id),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if streams.is_empty() {
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
        served.resize(streams.len(), false);
        collect(
            &streams,
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
                    &streams,
                    &mut cursor,
                    &mut batch,
                    &mut served,
                    cfg.max_batch,
                );
            }
        }
        let n = batch.len();
        input.clear();
        for job in &batch {
            input.extend_from_slice(&job.pixels);
        }
        stats.queue_depth.store(
            streams.iter().map(|(_, rx)| rx.len() as u64).sum(),
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
        for (i, job) in batch.drain(..).enumerate() {
            let embedding = match &result {
                Ok(()) => {
                    let mut e = output[i * dim..(i + 1) * dim].to_vec();
                    l2_normalize(&mut e);
                    Ok(e)
                }
                Err(e) => Err(Failure {
                    message: e.to_string(),
                    unavailable,
                }),
            };
            // A stream that closed meanwhile no longer listens; that is fine.
            let _ = job.results.send(Output {
                seq: job.seq,
                embedding,
                latency: job.queued.elapsed(),
                batch: n,
                pixels: job.pixels,
            });
        }
    }
}

/// Takes jobs round-robin, one per stream per pass, until the batch is full or a pass finds
/// nothing.
fn collect(
    streams: &[(u64, Receiver<Job>)],
    cursor: &mut usize,
    batch: &mut Vec<Job>,
    served: &mut [bool],
    max: usize,
) {
    if streams.is_empty() {
        return;
    }
    loop {
        let mut got = false;
        for k in 0..streams.len() {
            if batch.len() >= max {
                return;
            }
            let i = (*cursor + k) % streams.len();
            if let Ok(job) = streams[i].1.try_recv() {
                batch.push(job);
                served[i] = true;
                got = true;
            }
        }
        *cursor = (*cursor + 1) % streams.len();
        if !got {
            return;
        }
    }
}
