//! The sample history: what the cameras saw, kept to search it ("when did a white van pass the
//! gate?") and to replay label changes over it ("what would this threshold have fired last
//! week?").
//!
//! For every inferred sample the daemon stores its image embedding (int8 with a scale, see
//! [`quant`]), the pipeline, wall-clock time, stream positions and frame number, the cosines of
//! the label set in use and that set's version, and a small JPEG thumbnail; samples the scene
//! gate skipped are stored as repeats of the previous one. Events and stream boundaries (epochs)
//! are kept too, so that a backtest can be compared with what happened. Review marks (a
//! person's true/false-positive verdicts) live here as well.
//!
//! Layout and formats: [`format`]; the metadata database: [`store`]. One writer ([`Writer`],
//! driven by the daemon's [`Recorder`] thread) and any number of readers ([`History`]: the
//! `search` and `backtest` commands, the daemon's HTTP API), also while the writer writes.
//!
//! This module knows nothing of the daemon: the command line reads a history without one.

pub mod backtest;
pub mod events;
pub mod format;
pub mod quant;
pub mod query;
pub mod reader;
pub mod record;
pub mod recorder;
pub mod review;
pub mod search;
pub mod store;
pub mod time;
pub mod writer;

pub use reader::History;
pub use record::{Crop, EventRecord, ModelInfo, Record, SampleRecord};
pub use recorder::{RawThumbnail, Recorder, RecorderConfig, RecorderStats, ThumbnailConfig};
pub use writer::{Limits, Usage, Writer};

/// Folder of the history inside the daemon's state folder.
pub const DIR_NAME: &str = "history";
