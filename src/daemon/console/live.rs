//! What the console shows as it happens: each pipeline's scores (with the thresholds and the
//! labels matching) and its events, broadcast to the open console tabs (server-sent events),
//! and the last minutes of scores kept so that a tab opened now draws its timelines at once.
//!
//! The pipeline threads never wait here: a point is pushed into a bounded ring and offered to a
//! bounded broadcast channel (a tab that falls behind loses points, and is told so).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use tokio::sync::broadcast;

use crate::daemon::event::Event;
use clipfilter::labels::{LabelSetInfo, Threshold};
use clipfilter::matcher::Transition;
use gstclipfilter::clipfilter::messages::ScoresMessage;
use gstclipfilter::clipfilter::properties as props;

/// Score points kept per pipeline for a tab that opens (10 minutes at a sample a second).
pub const TIMELINE_POINTS: usize = 600;
/// Messages a slow tab may lag behind before it loses some.
const CHANNEL: usize = 1024;
/// Snapshot paths of recent events kept in memory (the history has them a moment later).
const SNAPSHOTS_KEPT: usize = 256;

/// One message to the tabs: its SSE event name and its JSON.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: &'static str,
    pub data: Arc<str>,
}

/// The daemon's live feed.
#[derive(Debug)]
pub struct Live {
    tx: broadcast::Sender<Message>,
    timelines: Mutex<HashMap<String, VecDeque<Arc<str>>>>,
    snapshots: Mutex<VecDeque<(String, PathBuf)>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            tx: broadcast::channel(CHANNEL).0,
            timelines: Mutex::default(),
            snapshots: Mutex::default(),
        }
    }
}

impl Live {
    /// A feed nobody listens to yet.
    pub fn new() -> Arc<Live> {
        Arc::new(Live::default())
    }

    /// A receiver of everything sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.tx.subscribe()
    }

    /// Tabs listening now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }

    fn send(&self, kind: &'static str, data: Arc<str>) {
        // No tab open: nothing to send to, which is fine.
        let _ = self.tx.send(Message { kind, data });
    }

    /// The score points kept, of every pipeline, oldest first per pipeline (JSON texts).
    pub fn timeline(&self) -> Vec<Arc<str>> {
        self.timelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|ring| ring.iter().cloned())
            .collect()
    }

    /// Forgets the points of pipelines not in `names` (removed by a reload).
    pub fn retain_pipelines(&self, names: &HashSet<&str>) {
        self.timelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| names.contains(name.as_str()));
    }

    /// The snapshot of a recent event, when it had one.
    pub fn snapshot(&self, event: &str) -> Option<PathBuf> {
        self.snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, _)| id == event)
            .map(|(_, p)| p.clone())
    }

    fn point(&self, pipeline: &str, json: Arc<str>) {
        {
            let mut timelines = self.timelines.lock().unwrap_or_else(|p| p.into_inner());
            let ring = timelines.entry(pipeline.to_owned()).or_default();
            if ring.len() >= TIMELINE_POINTS {
                ring.pop_front();
            }
            ring.push_back(json.clone());
        }
        self.send("scores", json);
    }

    /// A tap for pipeline `name` (one per pipeline thread).
    pub fn tap(self: &Arc<Self>, name: &str) -> LiveTap {
        LiveTap {
            live: self.clone(),
            pipeline: name.to_owned(),
            version: String::new(),
            thresholds: HashMap::new(),
            matched: HashSet::new(),
        }
    }
}

/// What one pipeline thread sends to the feed.
#[derive(Debug)]
pub struct LiveTap {
    live: Arc<Live>,
    pipeline: String,
    /// The label-set version `thresholds` belong to.
    version: String,
    thresholds: HashMap<String, Threshold>,
    /// Labels matching now.
    matched: HashSet<String>,
}

impl LiveTap {
    /// A sample's scores; `element` says what its label set's thresholds are.
    pub fn scores(&mut self, m: &ScoresMessage, element: Option<&gst::Element>) {
        if m.labels_version != self.version {
            self.version = m.labels_version.clone();
            self.thresholds = element
                .and_then(|e| e.property::<Option<String>>(props::LABEL_SET))
                .and_then(|json| serde_json::from_str::<LabelSetInfo>(&json).ok())
                .map(|info| {
                    info.labels
                        .into_iter()
                        .filter(|l| !l.negative)
                        .map(|l| (l.name, l.threshold))
                        .collect()
                })
                .unwrap_or_default();
        }
        let mut values = Vec::with_capacity(m.labels.len());
        let mut thresholds = Vec::with_capacity(m.labels.len());
        let mut kinds = Vec::with_capacity(m.labels.len());
        for (i, label) in m.labels.iter().enumerate() {
            let (value, threshold, kind) = match self.thresholds.get(label) {
                Some(Threshold::Cosine(t)) => (m.scores.get(i), Some(*t), "cosine"),
                Some(Threshold::Probability(t)) => {
                    (m.probabilities.get(i), Some(*t), "probability")
                }
                None => (m.probabilities.get(i), None, "probability"),
            };
            values.push(value.copied().unwrap_or(0.0) as f32);
            thresholds.push(threshold);
            kinds.push(kind);
        }
        let matched: Vec<bool> = m.labels.iter().map(|l| self.matched.contains(l)).collect();
        let json = serde_json::json!({
            "pipeline": self.pipeline,
            "t": crate::history::record::now_ms(),
            "labels": m.labels,
            "values": values,
            "thresholds": thresholds,
            "kinds": kinds,
            "matched": matched,
        });
        self.live.point(&self.pipeline, json.to_string().into());
    }

    /// An event of the pipeline (its snapshot already saved).
    pub fn event(&mut self, event: &Event) {
        match event.state {
            Transition::Start => {
                self.matched.insert(event.label.clone());
            }
            Transition::End => {
                self.matched.remove(&event.label);
            }
        }
        let id = event.id.to_string();
        if let Some(path) = &event.snapshot {
            let mut kept = self
                .live
                .snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if kept.len() >= SNAPSHOTS_KEPT {
                kept.pop_front();
            }
            kept.push_back((id.clone(), path.clone()));
        }
        let json = serde_json::json!({
            "id": id,
            "pipeline": event.pipeline,
            "label": event.label,
            "state": event.state.name(),
            "time_ms": event.time.as_millisecond(),
            "score": event.score,
            "probability": event.probability,
            "stream_time": event.stream_time,
            "has_snapshot": event.snapshot.is_some(),
        });
        self.live.send("event", json.to_string().into());
    }

    /// The stream ended: no label matches any more.
    pub fn stream_ended(&mut self) {
        self.matched.clear();
    }
}
