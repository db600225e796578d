//! The bus messages of the element (structures documented in the module above).

use gst::glib;

/// Structure name of match start/end messages.
pub const MATCH: &str = "clipfilter-match";
/// Structure name of per-sample score messages.
pub const SCORES: &str = "clipfilter-scores";
/// Structure name of the message that says a reloaded labels file is in use.
pub const LABELS_RELOADED: &str = "clipfilter-labels-reloaded";
/// Structure name of the `stats` property.
pub const STATS: &str = "clipfilter-stats";

/// Where a sample (or the last buffer) sits in the stream.
#[derive(Debug, Clone, Default)]
pub(super) struct Position {
    pub pts: Option<gst::ClockTime>,
    pub running_time: Option<gst::ClockTime>,
    pub stream_time: Option<gst::ClockTime>,
    pub frame: u64,
}

/// Why an episode ended (or `Sample` for transitions decided by a verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Sample,
    Eos,
    Flush,
    Reload,
    Stop,
}

impl Reason {
    fn name(self) -> &'static str {
        match self {
            Reason::Sample => "sample",
            Reason::Eos => "eos",
            Reason::Flush => "flush",
            Reason::Reload => "reload",
            Reason::Stop => "stop",
        }
    }
}

/// One `clipfilter-match` message's content.
pub(super) struct MatchEvent<'a> {
    pub start: bool,
    pub label: &'a str,
    pub cosine: f32,
    pub probability: f32,
    pub position: &'a Position,
    pub reason: Reason,
    pub snapshot: Option<&'a gst::Sample>,
}

pub(super) fn match_structure(e: &MatchEvent<'_>) -> gst::Structure {
    gst::Structure::builder(MATCH)
        .field("state", if e.start { "start" } else { "end" })
        .field("label", e.label)
        .field("score", f64::from(e.cosine))
        .field("probability", f64::from(e.probability))
        .field("pts", e.position.pts)
        .field("running-time", e.position.running_time)
        .field("stream-time", e.position.stream_time)
        .field("frame", e.position.frame)
        .field("reason", e.reason.name())
        .field_if_some("snapshot", e.snapshot.filter(|_| e.start).cloned())
        .build()
}

pub(super) fn scores_structure(
    position: &Position,
    names: &[String],
    cosine: &[f32],
    probability: &[f32],
    latency: std::time::Duration,
) -> gst::Structure {
    let doubles = |v: &[f32]| gst::Array::new(v.iter().map(|x| f64::from(*x)));
    gst::Structure::builder(SCORES)
        .field("pts", position.pts)
        .field("running-time", position.running_time)
        .field("stream-time", position.stream_time)
        .field("frame", position.frame)
        .field("labels", gst::Array::new(names))
        .field("scores", doubles(cosine))
        .field("probabilities", doubles(probability))
        .field("latency", latency.as_nanos() as u64)
        .build()
}

pub(super) fn reloaded_structure(path: &std::path::Path, names: &[String]) -> gst::Structure {
    gst::Structure::builder(LABELS_RELOADED)
        .field("path", path.display().to_string())
        .field("labels", gst::Array::new(names))
        .build()
}

/// Posts an element message from `element`; a bus that refuses it is only logged.
pub(super) fn post(element: &impl glib::prelude::IsA<gst::Element>, s: gst::Structure) {
    use gst::prelude::*;
    let element = element.as_ref();
    let msg = gst::message::Element::builder(s).src(element).build();
    if element.post_message(msg).is_err() {
        gst::debug!(
            super::imp::CAT,
            obj = element,
            "no bus to post the message on"
        );
    }
}
