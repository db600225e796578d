//! Counters of the inference worker, readable from any thread (metrics, health, bench), and
//! callbacks for per-batch figures (the daemon's latency and batch-size histograms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Mutex;

/// What the worker has done. Histograms are `prometheus-client` types, shareable with a registry.
pub struct WorkerStats {
    started: Instant,
    /// Milliseconds since `started` of the worker's last sign of life.
    last_beat_ms: AtomicU64,
    pub images: AtomicU64,
    pub batches: AtomicU64,
    /// Images replaced in a queue before inference (newest-frame-wins).
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    /// Images dropped because the backend could not serve them (remote inference with no
    /// ready endpoint); not counted in `images` or `errors`.
    pub unavailable: AtomicU64,
    /// Why the backend is unavailable now (`None` while it serves).
    unavailable_reason: Mutex<Option<String>>,
    /// Images waiting in stream queues when the last batch started.
    pub queue_depth: AtomicU64,
    /// Total time spent in the model, in microseconds.
    pub busy_us: AtomicU64,
    /// Called after every batch with its time in the model and its size (metrics).
    observers: Mutex<Vec<BatchObserver>>,
}

/// A callback told about every batch: its time in the model and its size.
pub type BatchObserver = Box<dyn Fn(Duration, usize) + Send + Sync>;

impl std::fmt::Debug for WorkerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStats")
            .field("images", &self.images)
            .field("batches", &self.batches)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerStats {
    pub fn new() -> Self {
        WorkerStats {
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            images: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            unavailable_reason: Mutex::new(None),
            queue_depth: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            observers: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn beat(&self) {
        self.last_beat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn record_batch(&self, n: usize, took: Duration) {
        self.images.fetch_add(n as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.busy_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        for observe in self
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            observe(took, n);
        }
        self.beat();
    }

    /// Counts `n` images dropped because the backend is unavailable; logs the start of an
    /// outage once.
    pub(super) fn record_unavailable(&self, n: usize, reason: &str) {
        self.unavailable.fetch_add(n as u64, Ordering::Relaxed);
        let mut current = self
            .unavailable_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            tracing::error!(
                reason,
                "inference backend unavailable: samples are dropped (and counted) until it is back"
            );
        }
        *current = Some(reason.to_string());
        drop(current);
        self.beat();
    }

    /// The backend served a batch: ends an outage (logged once).
    pub(super) fn set_available(&self) {
        let mut current = self
            .unavailable_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if current.take().is_some() {
            tracing::warn!(
                dropped_so_far = self.unavailable.load(Ordering::Relaxed),
                "inference backend available again"
            );
        }
    }

    /// Why the backend cannot serve now, or `None` while it does.
    pub fn unavailable_reason(&self) -> Option<String> {
        self.unavailable_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Calls `observe` after every batch from now on.
    pub fn on_batch(&self, observe: impl Fn(Duration, usize) + Send + Sync + 'static) {
        self.observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(observe));
    }

    /// Time since the worker last showed it is alive (it beats at least every 500 ms when
    /// idle, and after every batch).
    pub fn since_last_beat(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)))
    }
}
