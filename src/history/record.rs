//! What goes into a history: the records a writer takes, in the order they happened.

/// The model whose embeddings the following samples carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// What identifies the image tower (`Engine::image_fingerprint`).
    pub fingerprint: String,
    /// Its folder (how `search --state-dir` finds a text tower for the query).
    pub dir: String,
    pub variant: String,
    pub dim: usize,
}

/// A region of the frame a sample was scored on (name and box relative to the frame, 0..1).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Crop {
    pub name: String,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// One scored sample of one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRecord {
    pub pipeline: String,
    /// The stream it belongs to ([`Record::Epoch`]).
    pub epoch: i64,
    /// Wall clock, ms since the Unix epoch.
    pub time_ms: i64,
    /// Positions in the stream, ns.
    pub pts: Option<i64>,
    pub stream_time: Option<i64>,
    pub running_time: Option<i64>,
    /// Frame number as events carry it.
    pub frame: u64,
    /// The frame's normalised image embedding; `None` when the scene gate repeated the previous
    /// sample's verdict (its embedding stands).
    pub embedding: Option<Vec<f32>>,
    /// Version of the label set that scored it, and its cosines in that set's order.
    pub labels_version: String,
    pub scores: Vec<f32>,
    /// JPEG thumbnail.
    pub thumbnail: Option<Vec<u8>>,
    /// The part of the frame it was scored on; `None`: the whole frame.
    pub crop: Option<Crop>,
}

/// An event the pipeline produced (as delivered).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub pipeline: String,
    pub epoch: i64,
    pub label: String,
    /// "start" or "end".
    pub state: String,
    /// "sample", "eos", "flush", "reload" or "stop".
    pub reason: String,
    pub time_ms: i64,
    pub pts: Option<i64>,
    pub stream_time: Option<i64>,
    pub running_time: Option<i64>,
    pub frame: u64,
    pub score: f32,
    pub probability: f32,
    pub snapshot: Option<String>,
}

/// One thing to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The model of the samples that follow.
    Model(ModelInfo),
    /// A label set a pipeline uses: `info` is the JSON of its `LabelSetInfo` (`None` when not
    /// known: its samples are then rescored from their embeddings in backtests).
    LabelSet {
        pipeline: String,
        version: String,
        info: Option<String>,
    },
    /// A pipeline's stream (re)started: matching starts afresh (no episode spans two epochs).
    Epoch {
        pipeline: String,
        id: i64,
        start_ms: i64,
    },
    /// A pipeline's stream ended (end of stream, stop, failure): its open episodes end there.
    EpochEnd {
        id: i64,
        end_ms: i64,
    },
    Sample(SampleRecord),
    Event(EventRecord),
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
