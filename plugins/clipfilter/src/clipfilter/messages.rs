//! The element's bus messages and its `stats` structure, as types (the fields are documented in
//! the parent module). The element builds them with `to_structure`; applications (clipfilterd,
//! the tests) read them back with [`Message::parse`] or `from_structure`, so that both sides
//! share one definition of every name and field.

use std::path::PathBuf;
use std::time::Duration;

use clipfilter::crops::{CropId, CropKind, Placement, Rect};
use clipfilter::matcher::Transition;
use clipfilter::preprocess::PixelBox;
use gst::glib;

/// Structure name of match start/end messages.
pub const MATCH: &str = "clipfilter-match";
/// Structure name of per-sample score messages.
pub const SCORES: &str = "clipfilter-scores";
/// Structure name of the message that says a reloaded labels file is in use.
pub const LABELS_RELOADED: &str = "clipfilter-labels-reloaded";
/// Structure name of the `stats` property.
pub const STATS: &str = "clipfilter-stats";

/// A structure that claims to be one of the element's but lacks a field or has the wrong type.
#[derive(Debug, thiserror::Error)]
#[error("{structure}: field `{field}`: {message}")]
pub struct MessageError {
    pub structure: &'static str,
    pub field: &'static str,
    pub message: String,
}

/// Reads field `field` of structure `name`.
fn get<'a, T: glib::value::FromValue<'a>>(
    s: &'a gst::StructureRef,
    name: &'static str,
    field: &'static str,
) -> Result<T, MessageError> {
    s.get::<T>(field).map_err(|e| MessageError {
        structure: name,
        field,
        message: e.to_string(),
    })
}

/// A `gst::Array` of `T` (strings, doubles) as a vector.
fn get_array<T: for<'a> glib::value::FromValue<'a>>(
    s: &gst::StructureRef,
    name: &'static str,
    field: &'static str,
) -> Result<Vec<T>, MessageError> {
    get::<gst::Array>(s, name, field)?
        .iter()
        .map(|v| {
            v.get::<T>().map_err(|e| MessageError {
                structure: name,
                field,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Where a sample (or the last buffer) sits in the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub pts: Option<gst::ClockTime>,
    pub running_time: Option<gst::ClockTime>,
    pub stream_time: Option<gst::ClockTime>,
    /// 0-based number of the frame among those the element has seen since it started.
    pub frame: u64,
}

impl Position {
    fn add_to(&self, b: gst::structure::Builder) -> gst::structure::Builder {
        b.field("pts", self.pts)
            .field("running-time", self.running_time)
            .field("stream-time", self.stream_time)
            .field("frame", self.frame)
    }

    fn read(s: &gst::StructureRef, name: &'static str) -> Result<Position, MessageError> {
        Ok(Position {
            pts: get(s, name, "pts")?,
            running_time: get(s, name, "running-time")?,
            stream_time: get(s, name, "stream-time")?,
            frame: get(s, name, "frame")?,
        })
    }
}

/// A crop's placement as structure values: its box (4 unsigned ints) and rect (4 doubles).
fn box_value(p: &Placement) -> gst::Array {
    gst::Array::new(p.pixels.to_array())
}

fn rect_value(p: &Placement) -> gst::Array {
    gst::Array::new(p.rect.to_array())
}

/// Reads a placement from its parts; `field` names the field in errors.
fn placement(
    name: &'static str,
    field: &'static str,
    crop: String,
    kind: &str,
    pixels: &gst::Array,
    rect: &gst::Array,
) -> Result<Placement, MessageError> {
    let bad = |message: String| MessageError {
        structure: name,
        field,
        message,
    };
    let kind =
        CropKind::from_name(kind).ok_or_else(|| bad(format!("unknown crop kind {kind:?}")))?;
    let ints: Vec<u32> = pixels
        .iter()
        .map(|v| v.get::<u32>().map_err(|e| bad(e.to_string())))
        .collect::<Result<_, _>>()?;
    let floats: Vec<f64> = rect
        .iter()
        .map(|v| v.get::<f64>().map_err(|e| bad(e.to_string())))
        .collect::<Result<_, _>>()?;
    let (Ok(b), Ok(r)) = (<[u32; 4]>::try_from(ints), <[f64; 4]>::try_from(floats)) else {
        return Err(bad("a box and a rect have 4 values each".into()));
    };
    Ok(Placement {
        id: CropId { kind, name: crop },
        pixels: PixelBox::from(b),
        rect: Rect::from(r),
    })
}

/// Why an episode ended (or `Sample` for transitions decided by a verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Sample,
    Eos,
    Flush,
    Reload,
    Stop,
}

impl Reason {
    const ALL: [Reason; 5] = [
        Reason::Sample,
        Reason::Eos,
        Reason::Flush,
        Reason::Reload,
        Reason::Stop,
    ];

    /// The `reason` field's value.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Sample => "sample",
            Reason::Eos => "eos",
            Reason::Flush => "flush",
            Reason::Reload => "reload",
            Reason::Stop => "stop",
        }
    }

    fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// `clipfilter-match`: a label started or stopped matching.
#[derive(Debug, Clone)]
pub struct MatchMessage {
    /// `state`: start or end.
    pub transition: Transition,
    pub label: String,
    /// Cosine similarity of the deciding sample with the label.
    pub score: f64,
    /// Softmax probability of the label among the set.
    pub probability: f64,
    pub position: Position,
    pub reason: Reason,
    /// The crop whose score decided (`crop`, `crop-kind`, `box`, `rect`), when known.
    pub place: Option<Placement>,
    /// The frame that started the match (starts only, with `snapshot=true`).
    pub snapshot: Option<gst::Sample>,
}

impl MatchMessage {
    pub fn to_structure(&self) -> gst::Structure {
        let mut b = gst::Structure::builder(MATCH)
            .field("state", self.transition.name())
            .field("label", &self.label)
            .field("score", self.score)
            .field("probability", self.probability);
        if let Some(p) = &self.place {
            b = b
                .field("crop", &p.id.name)
                .field("crop-kind", p.id.kind.name())
                .field("box", box_value(p))
                .field("rect", rect_value(p));
        }
        self.position
            .add_to(b)
            .field("reason", self.reason.name())
            .field_if_some(
                "snapshot",
                self.snapshot
                    .as_ref()
                    .filter(|_| self.transition == Transition::Start)
                    .cloned(),
            )
            .build()
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<MatchMessage, MessageError> {
        let state: &str = get(s, MATCH, "state")?;
        let transition = Transition::from_name(state).ok_or_else(|| MessageError {
            structure: MATCH,
            field: "state",
            message: format!("{state:?} is neither start nor end"),
        })?;
        let reason: &str = get(s, MATCH, "reason")?;
        let reason = Reason::from_name(reason).ok_or_else(|| MessageError {
            structure: MATCH,
            field: "reason",
            message: format!("unknown reason {reason:?}"),
        })?;
        let place = match s.get_optional::<String>("crop").ok().flatten() {
            Some(crop) => Some(placement(
                MATCH,
                "crop",
                crop,
                get(s, MATCH, "crop-kind")?,
                &get::<gst::Array>(s, MATCH, "box")?,
                &get::<gst::Array>(s, MATCH, "rect")?,
            )?),
            None => None,
        };
        Ok(MatchMessage {
            transition,
            label: get(s, MATCH, "label")?,
            score: get(s, MATCH, "score")?,
            probability: get(s, MATCH, "probability")?,
            position: Position::read(s, MATCH)?,
            reason,
            place,
            snapshot: s.get_optional::<gst::Sample>("snapshot").ok().flatten(),
        })
    }
}

/// `clipfilter-scores`: every label's score for one sampled frame, in label-set order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoresMessage {
    pub position: Position,
    pub labels: Vec<String>,
    /// Cosine similarities.
    pub scores: Vec<f64>,
    pub probabilities: Vec<f64>,
    /// Each label's winning crop (`crops`, `crop-kinds`, `boxes`, `rects`; an empty name, kind,
    /// box and rect for a label that may use none of the sample's crops).
    pub places: Vec<Option<Placement>>,
    /// Crops inferred for this sample (the others were unchanged, see `scene-gate`).
    pub inferred: u32,
    /// From submission to verdict.
    pub latency: Duration,
}

impl ScoresMessage {
    pub fn to_structure(&self) -> gst::Structure {
        let b = gst::Structure::builder(SCORES);
        let names = self
            .places
            .iter()
            .map(|p| p.as_ref().map_or(String::new(), |p| p.id.name.clone()));
        let kinds = self
            .places
            .iter()
            .map(|p| p.as_ref().map_or("", |p| p.id.kind.name()));
        let boxes = self.places.iter().map(|p| {
            p.as_ref()
                .map_or_else(|| gst::Array::new(Vec::<u32>::new()), box_value)
        });
        let rects = self.places.iter().map(|p| {
            p.as_ref()
                .map_or_else(|| gst::Array::new(Vec::<f64>::new()), rect_value)
        });
        self.position
            .add_to(b)
            .field("labels", gst::Array::new(&self.labels))
            .field("scores", gst::Array::new(&self.scores))
            .field("probabilities", gst::Array::new(&self.probabilities))
            .field("crops", gst::Array::new(names))
            .field("crop-kinds", gst::Array::new(kinds))
            .field("boxes", gst::Array::new(boxes))
            .field("rects", gst::Array::new(rects))
            .field("inferred", self.inferred)
            .field(
                "latency",
                u64::try_from(self.latency.as_nanos()).unwrap_or(u64::MAX),
            )
            .build()
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<ScoresMessage, MessageError> {
        let names: Vec<String> = get_array(s, SCORES, "crops")?;
        let kinds: Vec<String> = get_array(s, SCORES, "crop-kinds")?;
        let boxes: Vec<gst::Array> = get_array(s, SCORES, "boxes")?;
        let rects: Vec<gst::Array> = get_array(s, SCORES, "rects")?;
        if [kinds.len(), boxes.len(), rects.len()] != [names.len(); 3] {
            return Err(MessageError {
                structure: SCORES,
                field: "crops",
                message: "crops, crop-kinds, boxes and rects differ in length".into(),
            });
        }
        let mut places = Vec::with_capacity(names.len());
        for (((name, kind), b), r) in names.into_iter().zip(&kinds).zip(&boxes).zip(&rects) {
            places.push(if kind.is_empty() {
                None
            } else {
                Some(placement(SCORES, "crops", name, kind, b, r)?)
            });
        }
        Ok(ScoresMessage {
            position: Position::read(s, SCORES)?,
            labels: get_array(s, SCORES, "labels")?,
            scores: get_array(s, SCORES, "scores")?,
            probabilities: get_array(s, SCORES, "probabilities")?,
            places,
            inferred: get(s, SCORES, "inferred")?,
            latency: Duration::from_nanos(get(s, SCORES, "latency")?),
        })
    }
}

/// `clipfilter-labels-reloaded`: a changed labels file is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelsReloaded {
    pub path: PathBuf,
    /// The new set's label names.
    pub labels: Vec<String>,
}

impl LabelsReloaded {
    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(LABELS_RELOADED)
            .field("path", self.path.display().to_string())
            .field("labels", gst::Array::new(&self.labels))
            .build()
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<LabelsReloaded, MessageError> {
        Ok(LabelsReloaded {
            path: PathBuf::from(get::<String>(s, LABELS_RELOADED, "path")?),
            labels: get_array(s, LABELS_RELOADED, "labels")?,
        })
    }
}

/// One of the element's messages.
#[derive(Debug, Clone)]
pub enum Message {
    Match(MatchMessage),
    Scores(ScoresMessage),
    LabelsReloaded(LabelsReloaded),
}

impl Message {
    /// The element message `msg` carries: `None` when it is not one of the element's, an error
    /// when it claims to be one but does not read as one.
    pub fn parse(msg: &gst::MessageRef) -> Option<Result<Message, MessageError>> {
        let gst::MessageView::Element(e) = msg.view() else {
            return None;
        };
        Message::from_structure(e.structure()?)
    }

    /// As [`Message::parse`], from the structure.
    pub fn from_structure(s: &gst::StructureRef) -> Option<Result<Message, MessageError>> {
        Some(match s.name().as_str() {
            MATCH => MatchMessage::from_structure(s).map(Message::Match),
            SCORES => ScoresMessage::from_structure(s).map(Message::Scores),
            LABELS_RELOADED => LabelsReloaded::from_structure(s).map(Message::LabelsReloaded),
            _ => return None,
        })
    }
}

/// The `stats` property (`clipfilter-stats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub frames: u64,
    pub sampled: u64,
    pub inferred: u64,
    /// Model inputs inferred: one per crop inferred (several per sample with tiles, regions or
    /// the `crops` fit; fewer when the scene-change gate finds crops unchanged).
    pub crops_inferred: u64,
    /// Samples replaced by a newer one while inference was busy.
    pub dropped: u64,
    /// Samples the scene-change gate found unchanged.
    pub skipped: u64,
    pub errors: u64,
    /// Samples dropped because the backend could not serve them (backend=triton, no endpoint
    /// ready).
    pub unavailable: u64,
    pub latency_last_ms: f64,
    /// From submission to verdict.
    pub latency_mean_ms: f64,
    /// Where the image tower runs (empty before the first start).
    pub execution_provider: String,
    pub text_execution_provider: String,
}

impl Stats {
    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(STATS)
            .field("frames", self.frames)
            .field("sampled", self.sampled)
            .field("inferred", self.inferred)
            .field("crops-inferred", self.crops_inferred)
            .field("dropped", self.dropped)
            .field("skipped", self.skipped)
            .field("errors", self.errors)
            .field("unavailable", self.unavailable)
            .field("latency-last-ms", self.latency_last_ms)
            .field("latency-mean-ms", self.latency_mean_ms)
            .field("execution-provider", &self.execution_provider)
            .field("text-execution-provider", &self.text_execution_provider)
            .build()
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<Stats, MessageError> {
        Ok(Stats {
            frames: get(s, STATS, "frames")?,
            sampled: get(s, STATS, "sampled")?,
            inferred: get(s, STATS, "inferred")?,
            crops_inferred: get(s, STATS, "crops-inferred")?,
            dropped: get(s, STATS, "dropped")?,
            skipped: get(s, STATS, "skipped")?,
            errors: get(s, STATS, "errors")?,
            unavailable: get(s, STATS, "unavailable")?,
            latency_last_ms: get(s, STATS, "latency-last-ms")?,
            latency_mean_ms: get(s, STATS, "latency-mean-ms")?,
            execution_provider: get(s, STATS, "execution-provider")?,
            text_execution_provider: get(s, STATS, "text-execution-provider")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_what_they_wrote() {
        gst::init().unwrap();
        let position = Position {
            pts: Some(gst::ClockTime::from_mseconds(1500)),
            running_time: Some(gst::ClockTime::from_mseconds(500)),
            stream_time: None,
            frame: 45,
        };
        let m = MatchMessage {
            transition: Transition::End,
            label: "red".into(),
            score: 0.25,
            probability: 0.75,
            position: position.clone(),
            reason: Reason::Reload,
            place: None,
            snapshot: None,
        };
        let back = MatchMessage::from_structure(&m.to_structure()).unwrap();
        assert_eq!(back.place, None);
        let tile = Placement {
            id: CropId {
                kind: CropKind::Tile,
                name: "r1c3".into(),
            },
            pixels: PixelBox::new(1234, 0, 686, 386),
            rect: Rect::new(0.64, 0.0, 0.36, 0.36).unwrap(),
        };
        let placed = MatchMessage {
            place: Some(tile.clone()),
            ..m.clone()
        };
        let back = MatchMessage::from_structure(&placed.to_structure()).unwrap();
        assert_eq!(back.place.as_ref(), Some(&tile));
        assert_eq!(
            (back.transition, back.label, back.score, back.probability),
            (Transition::End, "red".to_string(), 0.25, 0.75)
        );
        assert_eq!(
            (back.position, back.reason),
            (position.clone(), Reason::Reload)
        );

        let s = ScoresMessage {
            position,
            labels: vec!["red".into(), "green".into()],
            scores: vec![0.5, -0.25],
            probabilities: vec![0.9, 0.1],
            places: vec![Some(tile), None],
            inferred: 3,
            latency: Duration::from_millis(12),
        };
        let Some(Ok(Message::Scores(back))) = Message::from_structure(&s.to_structure()) else {
            panic!("not read back as scores");
        };
        assert_eq!(back, s);

        let stats = Stats {
            frames: 3,
            execution_provider: "cpu".into(),
            ..Stats::default()
        };
        assert_eq!(Stats::from_structure(&stats.to_structure()).unwrap(), stats);

        let broken = gst::Structure::builder(MATCH)
            .field("state", "middle")
            .build();
        let e = MatchMessage::from_structure(&broken).unwrap_err();
        assert_eq!(e.field, "state", "{e}");
        assert!(Message::from_structure(&gst::Structure::new_empty("other")).is_none());
    }
}
