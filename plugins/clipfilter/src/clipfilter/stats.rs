//! Counters behind the element's `stats` property.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::messages::Stats;
use clipfilter::encoder::Provider;

/// Counters behind the `stats` property (they survive `stop()` until the next `start()`).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) frames: AtomicU64,
    pub(super) sampled: AtomicU64,
    pub(super) inferred: AtomicU64,
    /// Model inputs inferred (one per inferred crop).
    pub(super) crops_inferred: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) unavailable: AtomicU64,
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
            &self.crops_inferred,
            &self.dropped,
            &self.skipped,
            &self.errors,
            &self.unavailable,
            &self.latency_last_us,
            &self.latency_sum_us,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn structure(&self) -> gst::Structure {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let inferred = get(&self.inferred);
        let latency_mean_ms = if inferred == 0 {
            0.0
        } else {
            get(&self.latency_sum_us) as f64 / inferred as f64 / 1000.0
        };
        let providers = self.providers.lock().ok().and_then(|p| *p);
        let name = |p: Option<Provider>| p.map_or(String::new(), |p| p.name().to_string());
        Stats {
            frames: get(&self.frames),
            sampled: get(&self.sampled),
            inferred,
            crops_inferred: get(&self.crops_inferred),
            dropped: get(&self.dropped),
            skipped: get(&self.skipped),
            errors: get(&self.errors),
            unavailable: get(&self.unavailable),
            latency_last_ms: get(&self.latency_last_us) as f64 / 1000.0,
            latency_mean_ms,
            execution_provider: name(providers.map(|(image, _)| image)),
            text_execution_provider: name(providers.map(|(_, text)| text)),
        }
        .to_structure()
    }
}
