//! The recorder: a thread that writes a history without ever making its callers wait.
//!
//! Samples go through a bounded queue ([`RecorderConfig::queue`]): when it is full the sample is
//! dropped from the history and counted, and detection goes on. Everything else (the model, label
//! sets, stream epochs, events) is rare and goes through its own queue, never dropped while the
//! history is writable. The thread writes a batch at least every [`FLUSH`], so a `kill -9` loses
//! at most that much (and never corrupts anything: see the writer). It encodes thumbnails
//! (JPEG) itself, at a lower priority than inference.
//!
//! When the folder cannot be written (full disk, read-only, missing), the recorder pauses: one
//! warning, `paused` set, samples dropped and counted; every [`RETRY`] it tries again, and
//! resumes by itself (with an info line) once a batch goes through.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use super::record::{Record, SampleRecord, now_ms};
use super::writer::{Limits, Writer};

/// Longest time a sample waits in memory before it is written.
pub const FLUSH: Duration = Duration::from_millis(250);
/// How often a paused recorder tries again.
pub const RETRY: Duration = Duration::from_secs(2);
/// How often retention runs.
const RETAIN_EVERY: Duration = Duration::from_secs(10);
/// Most records per transaction.
const BATCH: usize = 2048;
/// Non-sample records kept while paused (the oldest go first beyond this).
const PENDING_MAX: usize = 10_000;
/// Nice value of the recorder thread: below inference (10), so that under overload the history
/// drops samples rather than slowing detection.
const NICE: i32 = 15;

/// Thumbnail settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbnailConfig {
    /// Pixels on the longer side.
    pub long_side: u32,
    pub quality: u8,
}

/// What a recorder writes where.
#[derive(Debug, Clone, PartialEq)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    pub limits: Limits,
    /// Samples that may wait for the writer.
    pub queue: usize,
    /// `None`: no thumbnails.
    pub thumbnails: Option<ThumbnailConfig>,
}

/// A frame to make a thumbnail of: packed RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct RawThumbnail {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Counters the metrics read.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Samples written.
    pub stored: AtomicU64,
    /// Samples dropped: queue full, or paused.
    pub dropped: AtomicU64,
    pub paused: AtomicBool,
    /// Samples and bytes in the history, and the oldest sample's time (ms; 0 when empty), as of
    /// the last retention pass.
    pub samples: AtomicU64,
    pub bytes: AtomicU64,
    pub oldest_ms: AtomicI64,
}

struct Item {
    sample: SampleRecord,
    thumbnail: Option<RawThumbnail>,
}

/// The running recorder. Dropping it (or [`Recorder::shutdown`]) writes what is queued and
/// stops the thread.
pub struct Recorder {
    samples: Option<Sender<Item>>,
    control: Option<Sender<Record>>,
    stats: Arc<RecorderStats>,
    thumbnails: bool,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Opens the folder (creating the history, so that readers find one from the start) and
    /// starts the thread. A folder that cannot be opened pauses the recorder, it does not fail
    /// the caller: the thread tries again later.
    pub fn start(config: RecorderConfig) -> std::io::Result<Recorder> {
        let opened = Writer::open(&config.dir, config.limits);
        let (sample_tx, sample_rx) = crossbeam_channel::bounded(config.queue.max(1));
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(RecorderStats::default());
        let thumbnails = config.thumbnails.is_some();
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                clipfilter::encoder::set_thread_nice(NICE);
                let mut l = Loop::new(config, st);
                match opened {
                    Ok(w) => l.writer = Some(w),
                    Err(e) => l.pause(&format!("{e:#}")),
                }
                l.run(&sample_rx, &control_rx);
            })?;
        Ok(Recorder {
            samples: Some(sample_tx),
            control: Some(control_tx),
            stats,
            thumbnails,
            thread: Some(thread),
        })
    }

    /// Whether thumbnails are kept (callers need not make them otherwise).
    pub fn wants_thumbnails(&self) -> bool {
        self.thumbnails
    }

    /// Queues a sample; never waits (a full queue drops it, counted).
    pub fn sample(&self, sample: SampleRecord, thumbnail: Option<RawThumbnail>) {
        let Some(tx) = &self.samples else { return };
        match tx.try_send(Item { sample, thumbnail }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues anything else (model, label set, epoch, event); never waits.
    pub fn record(&self, record: Record) {
        if let Some(tx) = &self.control {
            let _ = tx.send(record);
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }

    /// Writes what is queued and stops.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.samples.take();
        self.control.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the history thread panicked");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Loop {
    config: RecorderConfig,
    stats: Arc<RecorderStats>,
    writer: Option<Writer>,
    /// Non-sample records not written yet (kept while paused).
    pending: Vec<Record>,
    batch: Vec<Record>,
    samples_in_batch: u64,
    last_flush: Instant,
    /// When paused: when to try again.
    retry_at: Option<Instant>,
    last_retain: Instant,
    /// The newest model record: a reopened writer knows no model, so it goes first again.
    model: Option<Record>,
}

impl Loop {
    fn new(config: RecorderConfig, stats: Arc<RecorderStats>) -> Loop {
        Loop {
            config,
            stats,
            writer: None,
            pending: Vec::new(),
            batch: Vec::new(),
            samples_in_batch: 0,
            last_flush: Instant::now(),
            retry_at: None,
            last_retain: Instant::now(),
            model: None,
        }
    }

    fn control(&mut self, r: Record) {
        if matches!(r, Record::Model(_)) {
            self.model = Some(r.clone());
        }
        self.pending.push(r);
    }

    fn run(mut self, samples: &Receiver<Item>, control: &Receiver<Record>) {
        let mut samples_open = true;
        let mut control_open = true;
        while samples_open || control_open {
            let wait = FLUSH.saturating_sub(self.last_flush.elapsed());
            let never = crossbeam_channel::never();
            let s = if samples_open { samples } else { &never };
            let c = if control_open {
                control
            } else {
                &crossbeam_channel::never()
            };
            select! {
                recv(c) -> r => match r {
                    Ok(r) => self.control(r),
                    Err(_) => control_open = false,
                },
                recv(s) -> r => match r {
                    Ok(item) => self.take(item),
                    Err(_) => samples_open = false,
                },
                default(wait) => {}
            }
            while let Ok(r) = control.try_recv() {
                self.control(r);
            }
            while self.samples_in_batch < BATCH as u64 {
                match samples.try_recv() {
                    Ok(item) => self.take(item),
                    Err(_) => break,
                }
            }
            if self.last_flush.elapsed() >= FLUSH || self.samples_in_batch >= BATCH as u64 {
                self.flush();
            }
        }
        self.flush();
        if let Some(w) = self.writer.as_mut() {
            let _ = w.retain(now_ms());
        }
    }

    fn take(&mut self, item: Item) {
        let mut sample = item.sample;
        if let (Some(cfg), Some(raw)) = (self.config.thumbnails, item.thumbnail) {
            sample.thumbnail = encode_jpeg(&raw, cfg.quality);
        }
        self.batch.push(Record::Sample(sample));
        self.samples_in_batch += 1;
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.pending.is_empty() && self.batch.is_empty() {
            self.maybe_retain();
            return;
        }
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            self.drop_batch();
            return;
        }
        if self.writer.is_none() {
            match Writer::open(&self.config.dir, self.config.limits) {
                Ok(w) => {
                    self.writer = Some(w);
                    if let Some(m) = self.model.clone() {
                        self.pending.insert(0, m);
                    }
                }
                Err(e) => {
                    self.pause(&format!("{e:#}"));
                    self.drop_batch();
                    return;
                }
            }
        }
        let mut records: Vec<Record> = std::mem::take(&mut self.pending);
        let n = records.len();
        records.append(&mut self.batch);
        let samples = self.samples_in_batch;
        self.samples_in_batch = 0;
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        match writer.write(&records) {
            Ok(()) => {
                self.stats.stored.fetch_add(samples, Ordering::Relaxed);
                if self.retry_at.take().is_some() || self.stats.paused.load(Ordering::Relaxed) {
                    self.stats.paused.store(false, Ordering::Relaxed);
                    tracing::info!(dir = %self.config.dir.display(), "sample history resumed");
                }
            }
            Err(e) => {
                // Keep what is not a sample for the next try; the samples are lost.
                records.truncate(n);
                self.pending = records;
                self.stats.dropped.fetch_add(samples, Ordering::Relaxed);
                // The writer may hold a half-open state after an I/O error: reopen next time.
                self.writer = None;
                self.pause(&e.to_string());
            }
        }
        self.maybe_retain();
    }

    fn drop_batch(&mut self) {
        self.stats
            .dropped
            .fetch_add(self.samples_in_batch, Ordering::Relaxed);
        self.batch.clear();
        self.samples_in_batch = 0;
        if self.pending.len() > PENDING_MAX {
            let extra = self.pending.len() - PENDING_MAX;
            self.pending.drain(..extra);
        }
    }

    fn pause(&mut self, why: &str) {
        if self.stats.paused.load(Ordering::Relaxed) {
            tracing::debug!(error = %why, "sample history still paused");
        }
        if !self.stats.paused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %self.config.dir.display(), error = %why,
                "sample history paused: samples are not recorded until the folder can be written again (events are not affected)"
            );
        }
        self.retry_at = Some(Instant::now() + RETRY);
    }

    fn maybe_retain(&mut self) {
        if self.last_retain.elapsed() < RETAIN_EVERY {
            return;
        }
        self.last_retain = Instant::now();
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        match writer.retain(now_ms()) {
            Ok(usage) => {
                self.stats.samples.store(usage.samples, Ordering::Relaxed);
                self.stats.bytes.store(usage.bytes, Ordering::Relaxed);
                self.stats
                    .oldest_ms
                    .store(usage.oldest_ms.unwrap_or(0), Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "history retention failed"),
        }
    }
}

/// A JPEG of `raw`; `None` (logged) when it cannot be encoded. `jpeg-encoder` (SIMD) rather
/// than `image`'s encoder: 3.5x the thumbnails per second on these cores at the same quality,
/// and smaller files (`clipfilterd bench --sections history`).
pub fn encode_jpeg(raw: &RawThumbnail, quality: u8) -> Option<Vec<u8>> {
    let (Ok(width), Ok(height)) = (u16::try_from(raw.width), u16::try_from(raw.height)) else {
        tracing::debug!(
            width = raw.width,
            height = raw.height,
            "thumbnail not encoded: too large for JPEG"
        );
        return None;
    };
    let mut out = Vec::with_capacity(raw.rgb.len() / 8);
    match jpeg_encoder::Encoder::new(&mut out, quality).encode(
        &raw.rgb,
        width,
        height,
        jpeg_encoder::ColorType::Rgb,
    ) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::debug!(error = %e, "thumbnail not encoded");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readers (the console's `/api/events`, `search`) find a history as soon as the recorder
    /// has started, before its first sample.
    #[test]
    fn a_started_recorder_has_created_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history");
        let recorder = Recorder::start(RecorderConfig {
            dir: history.clone(),
            limits: Limits {
                keep: None,
                max_bytes: 1 << 30,
            },
            queue: 16,
            thumbnails: None,
        })
        .unwrap();
        crate::history::History::open(&history).expect("a history to read");
        recorder.shutdown();
    }
}
