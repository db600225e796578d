//! The bounds of the numbers users give: label sets, the daemon's configuration, the element's
//! properties and the command line all check against this one table, so that a value one of
//! them accepts is one the others take.

use std::ops::RangeInclusive;

/// Largest inference batch.
pub const MAX_BATCH: RangeInclusive<u32> = 1..=256;
/// Default largest inference batch.
pub const DEFAULT_MAX_BATCH: u32 = 8;
/// ONNX Runtime threads per operator (0: one per core).
pub const THREADS: RangeInclusive<u32> = 0..=1024;
/// Consecutive samples to start (`enter`) or end (`leave`) a match.
pub const SAMPLES: RangeInclusive<u32> = 1..=1000;
/// Stream time between sampled frames, in nanoseconds (the element's `interval`, a pipeline's
/// `interval`): 0 (every frame) to 24 hours.
pub const INTERVAL_NS: RangeInclusive<u64> = 0..=86_400_000_000_000;
/// Pixels of one decoded frame the element takes (`max-frame-pixels`, a pipeline's
/// `max_frame_pixels`): a larger frame is an error, not gigabytes of memory.
pub const FRAME_PIXELS: RangeInclusive<u64> = 1..=16384 * 16384;
/// Default of the frame cap: 8K UHD (7680x4320).
pub const DEFAULT_FRAME_PIXELS: u64 = 7680 * 4320;
/// Scene-change gate threshold: mean 8-bit level difference (0 turns the gate off).
pub const SCENE_GATE: RangeInclusive<f64> = 0.0..=255.0;
/// Precision a calibration may ask for (`calibrate --precision`): above 0.99 it would need more
/// than 100 positive examples (see `calibrate::Target::positives_needed`).
pub const CALIBRATION_PRECISION: RangeInclusive<f32> = 0.5..=0.99;
/// A label's `min_zscore`: standard deviations above its pipeline's recent scores (above 0).
pub const MIN_ZSCORE: RangeInclusive<f32> = 0.0..=1000.0;
/// A label's `zscore_window`: the recent samples its baseline holds (and needs before it
/// matches).
pub const ZSCORE_WINDOW: RangeInclusive<u32> = 10..=10_000;
/// Default `zscore_window`: 10 minutes at one sample per second.
pub const DEFAULT_ZSCORE_WINDOW: u32 = 600;
/// The smallest standard deviation a baseline divides by: a still scene's scores barely move,
/// and without a floor the encoder's noise alone would be many deviations away.
pub const ZSCORE_MIN_STD: f32 = 0.01;
/// Fewest positive examples of a label that calibration takes.
pub const MIN_CALIBRATION_POSITIVES: usize = 10;
/// Fewest negative examples (every other folder) that calibration takes.
pub const MIN_CALIBRATION_NEGATIVES: usize = 10;
/// Newton iterations a probe fit may take (it converges in a few dozen).
pub const PROBE_MAX_ITERATIONS: usize = 200;
/// Cross-validation folds when training a probe (the seed's sweep uses 5).
pub const PROBE_FOLDS: usize = 5;

/// Tiles per side of a tile grid (`tiles = "3x3"`: columns x rows): 8x8 at most, so that a
/// tiled frame stays a few batches of inference.
pub const TILES: RangeInclusive<u32> = 1..=8;
/// Overlap of neighbouring tiles, as a fraction of a tile's width (height).
pub const TILE_OVERLAP: RangeInclusive<f64> = 0.0..=0.5;
/// Example pictures of one label (`images = [...]`): each is embedded when the label set loads.
pub const MAX_LABEL_IMAGES: usize = 1000;
/// Named regions of one stream (pipeline or element and its label set together).
pub const MAX_REGIONS: usize = 32;
/// Points of a region's polygon.
pub const POLYGON_POINTS: RangeInclusive<usize> = 3..=64;
/// Squares of the `crops` fit: as many as cover the frame (2 for 16:9), at most this many
/// (frames longer than 4:1 get wider, letterboxed, crops).
pub const MAX_FIT_CROPS: u32 = 4;
/// Model inputs per sampled frame (whole frame, tiles and regions together).
pub const MAX_CROPS: usize = 100;

/// "between MIN and MAX" for error messages.
pub fn describe<T: std::fmt::Display>(range: &RangeInclusive<T>) -> String {
    format!("between {} and {}", range.start(), range.end())
}

/// Largest file read from a path a user gives (label set, daemon configuration, model
/// configuration, image to classify): 64 MiB. Only regular files are read (after following
/// symbolic links), so that a FIFO, a device such as `/dev/zero` or a directory is refused at
/// once instead of blocking or filling memory.
pub const MAX_INPUT_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Fewest characters of the daemon's `[http] token` (a shorter one is guessed too easily).
pub const MIN_HTTP_TOKEN_CHARS: usize = 16;
