//! Round-trip time of image batches through a pool, per wire format and batch size (for
//! `clipfilterd bench`; `examples/round_trip.rs` runs it against a server).
//!
//! The tensor is built once before timing, so the figures are the client's encoding, the
//! transfer, the server's queueing and decoding, the model and the way back.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::pool::Pool;
use crate::tensor::{Tensor, WireFormat};

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    pub input: String,
    pub height: usize,
    pub width: usize,
    /// Untimed calls first.
    pub warmup: usize,
    /// Timed calls.
    pub runs: usize,
}

impl BenchOptions {
    /// `pixel_values`, `height` x `width`, 3 warm-up calls, 30 timed ones.
    pub fn new(height: usize, width: usize) -> Self {
        BenchOptions {
            input: "pixel_values".into(),
            height,
            width,
            warmup: 3,
            runs: 30,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundTrip {
    pub model: String,
    pub wire: WireFormat,
    pub batch: usize,
    /// Tensor bytes of one sample on the wire.
    pub bytes_per_sample: usize,
    pub runs: usize,
    pub min: Duration,
    pub median: Duration,
    pub mean: Duration,
    pub p95: Duration,
}

impl RoundTrip {
    /// Median time per sample.
    pub fn per_sample(&self) -> Duration {
        self.median / self.batch.max(1) as u32
    }

    /// Samples per second at the median.
    pub fn samples_per_s(&self) -> f64 {
        self.batch as f64 / self.median.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// A deterministic batch in `wire` format: RGB bytes from a smooth pattern, normalised with
/// CLIP's mean and std for the float formats.
pub fn pixel_batch(
    input: &str,
    wire: WireFormat,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<Tensor> {
    let shape = vec![batch, 3, height, width];
    let n = crate::fold::Normalisation::CLIP;
    let plane = height * width;
    let rgb: Vec<u8> = (0..batch * 3 * plane)
        .map(|i| {
            let (b, c, p) = (i / (3 * plane), (i / plane) % 3, i % plane);
            let (y, x) = (p / width, p % width);
            ((x * 7 + y * 3 + c * 50 + b * 31) % 256) as u8
        })
        .collect();
    let normalised = || -> Vec<f32> {
        rgb.iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / plane) % 3;
                ((v as f64 * n.rescale) as f32 - n.mean[c]) / n.std[c]
            })
            .collect()
    };
    match wire {
        WireFormat::Uint8 => Tensor::from_u8(input, shape, rgb),
        WireFormat::Fp32 => Tensor::from_f32(input, shape, &normalised()),
        WireFormat::Fp16 => Tensor::f16_from_f32(input, shape, &normalised()),
    }
}

/// Times `options.runs` calls of `model` with a batch of `batch` samples in `wire` format.
pub fn round_trip(
    pool: &Pool,
    model: &str,
    wire: WireFormat,
    batch: usize,
    options: &BenchOptions,
) -> Result<RoundTrip> {
    let tensor = pixel_batch(&options.input, wire, batch, options.height, options.width)?;
    for _ in 0..options.warmup {
        pool.infer(model, vec![tensor.clone()])?;
    }
    let mut times = Vec::with_capacity(options.runs);
    for _ in 0..options.runs.max(1) {
        let start = Instant::now();
        pool.infer(model, vec![tensor.clone()])?;
        times.push(start.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(RoundTrip {
        model: model.to_string(),
        wire,
        batch,
        bytes_per_sample: wire.bytes_per_sample(options.height, options.width),
        runs: times.len(),
        min: times[0],
        median: at(0.5),
        mean: times.iter().sum::<Duration>() / times.len() as u32,
        p95: at(0.95),
    })
}
