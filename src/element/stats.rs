//! Counters behind the element's `stats` property.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::messages;
use crate::encoder::Provider;

/// Counters behind the `stats` property (they survive `stop()` until the next `start()`).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) frames: AtomicU64,
    pub(super) sampled: AtomicU64,
    pub(super) inferred: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) latency_last_us: AtomicU64,
    pub(super) latency_sum_us: AtomicU64,
    pub(super) providers: Mutex<Option<(Provider, Provider)>>,
}

impl Counters {
    pub(super) fn reset(&self) {
        for c in [
            &self.frames,
            &self.sampled,
            &self.inferred,
            &self.dropped,
            &self.skipped,
            &self.errors,
            &self.latency_last_us,
            &self.latency_sum_us,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn structure(&self) -> gst::Structure {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let inferred = get(&self.inferred);
        let mean_ms = if inferred == 0 {
            0.0
        } else {
            get(&self.latency_sum_us) as f64 / inferred as f64 / 1000.0
        };
        let providers = self.providers.lock().ok().and_then(|p| *p);
        gst::Structure::builder(messages::STATS)
            .field("frames", get(&self.frames))
            .field("sampled", get(&self.sampled))
            .field("inferred", inferred)
            .field("dropped", get(&self.dropped))
            .field("skipped", get(&self.skipped))
            .field("errors", get(&self.errors))
            .field(
                "latency-last-ms",
                get(&self.latency_last_us) as f64 / 1000.0,
            )
            .field("latency-mean-ms", mean_ms)
            .field(
                "execution-provider",
                providers.map_or("", |(image, _)| image.name()),
            )
            .field(
                "text-execution-provider",
                providers.map_or("", |(_, text)| text.name()),
            )
            .build()
    }
}
