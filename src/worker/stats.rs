//! Counters of the inference worker, readable from any thread (metrics, health, bench).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};

/// What the worker has done. Histograms are `prometheus-client` types, shareable with a registry.
#[derive(Debug)]
pub struct WorkerStats {
    started: Instant,
    /// Milliseconds since `started` of the worker's last sign of life.
    last_beat_ms: AtomicU64,
    pub images: AtomicU64,
    pub batches: AtomicU64,
    /// Images replaced in a queue before inference (newest-frame-wins).
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    /// Images waiting in stream queues when the last batch started.
    pub queue_depth: AtomicU64,
    /// Total time spent in the model, in microseconds.
    pub busy_us: AtomicU64,
    /// Seconds per batch in the model.
    pub latency: Histogram,
    /// Images per batch.
    pub batch_size: Histogram,
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
            queue_depth: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            batch_size: Histogram::new(linear_buckets(1.0, 1.0, 32)),
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
        self.latency.observe(took.as_secs_f64());
        self.batch_size.observe(n as f64);
        self.beat();
    }

    /// Time since the worker last showed it is alive (it beats at least every 500 ms when
    /// idle, and after every batch).
    pub fn since_last_beat(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)))
    }
}
