//! The events clipfilterd delivers: a label started or stopped matching in a pipeline.
//!
//! An [`Event`] is serialised once as JSON (see [`Event::to_json`]) and that text is what every
//! output sends: a JSON line, a webhook body, an MQTT payload. Its `id` is a UUIDv7 (time-ordered),
//! so a consumer can detect the duplicates that at-least-once delivery allows after a crash.

use std::path::PathBuf;

use clipfilter::crops::Placement;
use clipfilter::matcher::Transition;
use serde::{Deserialize, Serialize};

/// One match transition of one label in one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// UUIDv7: unique and time-ordered; duplicates after a crash share it.
    pub id: uuid::Uuid,
    /// Wall-clock time the verdict was made (RFC 3339 in JSON).
    pub time: jiff::Timestamp,
    /// Name of the pipeline that saw the frame.
    pub pipeline: String,
    /// Name of the label that matched or stopped matching.
    pub label: String,
    /// Start or end of the match.
    pub state: Transition,
    /// Cosine similarity of the sampled frame with the label.
    pub score: f32,
    /// Softmax probability of the label over the label set.
    pub probability: f32,
    /// Frame number in the stream.
    pub frame: u64,
    /// Presentation timestamp of the frame, in seconds.
    pub pts: Option<f64>,
    /// Position in the media, in seconds.
    pub stream_time: Option<f64>,
    /// Running time of the pipeline, in seconds.
    pub running_time: Option<f64>,
    /// JPEG snapshot of the frame that started the match, when one was saved.
    pub snapshot: Option<PathBuf>,
    /// Where in the frame: the crop (whole frame, `crops` square, tile or region) whose score
    /// decided, with its box in pixels and in fractions of the frame
    /// (`{"kind": "tile", "name": "r1c3", "box": [x, y, w, h], "rect": [x, y, w, h]}`).
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub place: Option<Placement>,
}

impl Event {
    /// A new event with a fresh UUIDv7 and the current time; stream positions and the snapshot
    /// are unset (set the public fields when known).
    pub fn new(
        pipeline: impl Into<String>,
        label: impl Into<String>,
        state: Transition,
        score: f32,
        probability: f32,
        frame: u64,
    ) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            time: jiff::Timestamp::now(),
            pipeline: pipeline.into(),
            label: label.into(),
            state,
            score,
            probability,
            frame,
            pts: None,
            stream_time: None,
            running_time: None,
            snapshot: None,
            place: None,
        }
    }

    /// The event as one line of compact JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        // Serialising this struct cannot fail: every field is a plain value and map keys are fixed.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("event JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut event = Event::new("cam1", "white van", Transition::Start, 0.3125, 0.75, 1234);
        event.pts = Some(41.125);
        event.stream_time = Some(41.0);
        event.running_time = Some(12.5);
        event.snapshot = Some(PathBuf::from("/var/lib/clipfilter/snapshots/a.jpg"));
        event.place = Some(Placement {
            id: clipfilter::crops::CropId {
                kind: clipfilter::crops::CropKind::Tile,
                name: "r1c3".into(),
            },
            pixels: clipfilter::preprocess::PixelBox::new(1234, 0, 686, 386),
            rect: clipfilter::crops::Rect::new(0.64, 0.0, 0.36, 0.36).unwrap(),
        });
        let json = event.to_json();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);

        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["state"], "start");
        assert_eq!(value["pipeline"], "cam1");
        assert_eq!(value["frame"], 1234);
        assert_eq!(value["where"]["kind"], "tile");
        assert_eq!(value["where"]["name"], "r1c3");
        assert_eq!(
            value["where"]["box"],
            serde_json::json!([1234, 0, 686, 386])
        );
        assert_eq!(value["where"]["rect"][0], 0.64);
        assert_eq!(value["id"].as_str().unwrap(), event.id.to_string());
        assert_eq!(event.id.get_version_num(), 7);
        let time = value["time"].as_str().unwrap();
        assert_eq!(time.parse::<jiff::Timestamp>().unwrap(), event.time);
        assert!(time.ends_with('Z'), "RFC 3339 in UTC: {time}");
    }

    #[test]
    fn unset_positions_are_null_and_end_is_lowercase() {
        let event = Event::new("p", "l", Transition::End, 0.1, 0.2, 0);
        let value: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(value["state"], "end");
        assert!(value["pts"].is_null());
        assert!(value["snapshot"].is_null());
        assert!(value.get("where").is_none(), "no crop known: no `where`");
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = Event::new("p", "l", Transition::Start, 0.0, 0.0, 0);
        let b = Event::new("p", "l", Transition::End, 0.0, 0.0, 1);
        assert!(a.id < b.id);
    }
}
