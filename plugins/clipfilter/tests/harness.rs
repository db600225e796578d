//! The `clipfilter` element alone in a `gst_check::Harness`: explicit caps, explicit timestamps,
//! `mode=sync` (each sampled buffer is held until its verdict, so verdicts are deterministic), on
//! the committed oracle model, whose verdicts are known in advance: a frame's mean colour is its
//! colour word ("red" scores a cosine of 1.00 on a red frame, "green" 0.0025).

use std::path::PathBuf;
use std::sync::Once;

use clipfilter::matcher::Transition::{End, Start};
use gst::glib;
use gst::prelude::*;
use gst_check::Harness;
use gstclipfilter::clipfilter::messages::{MatchMessage, Message, Reason, ScoresMessage, Stats};
use gstclipfilter::clipfilter::properties as props;
use gstclipfilter::clipfilter::{ClipFilterAction, ClipFilterMode, ClipFilterThresholdKind};

/// The caps the harness pushes (64x64 is the oracle's input size: no resizing).
const CAPS: &str = "video/x-raw,format=RGB,width=64,height=64,framerate=10/1";
const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstclipfilter::plugin_register_static().expect("clipfilter registers");
    });
}

/// The committed oracle model (tests/fixtures/oracle-clip at the repository's root).
fn oracle() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/oracle-clip");
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir
}

fn ms(n: u64) -> gst::ClockTime {
    gst::ClockTime::from_mseconds(n)
}

/// A harness around `clipfilter` on the oracle model with the prompts "red;green", in sync mode
/// with the scene gate off (every sample is inferred), with the properties `set` on top; and the
/// bus the element posts to.
fn harness(set: &[(&str, glib::Value)]) -> (Harness, gst::Bus) {
    init();
    let mut builder = gst::ElementFactory::make("clipfilter")
        .property(props::MODEL, oracle().display().to_string())
        .property(props::PROMPTS, "red;green")
        .property(props::MODE, ClipFilterMode::Sync)
        .property(props::SCENE_GATE, 0.0)
        .property(props::THREADS, 1u32);
    for (name, value) in set {
        builder = builder.property(name, value.clone());
    }
    let element = builder.build().expect("a clipfilter element");
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    // The harness starts the element (which loads the model) and links its pads.
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str(CAPS);
    (h, bus)
}

/// Frame `i` of the 10 fps stream: a solid `rgb` picture at 100 ms * `i`.
fn frame(i: u64, rgb: [u8; 3]) -> gst::Buffer {
    let mut buf = gst::Buffer::from_mut_slice(rgb.repeat(64 * 64));
    let b = buf.get_mut().expect("a new buffer is writable");
    b.set_pts(ms(100 * i));
    b.set_duration(ms(100));
    buf
}

fn push(h: &mut Harness, i: u64, rgb: [u8; 3]) {
    h.push(frame(i, rgb))
        .unwrap_or_else(|e| panic!("frame {i}: {e:?}"));
}

/// The match and score messages posted since the last call, read through the element's types.
fn posted(bus: &gst::Bus) -> (Vec<MatchMessage>, Vec<ScoresMessage>) {
    let (mut matches, mut scores) = (Vec::new(), Vec::new());
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("element error: {} ({:?})", e.error(), e.debug());
        }
        match Message::parse(&msg) {
            Some(Ok(Message::Match(m))) => matches.push(m),
            Some(Ok(Message::Scores(s))) => scores.push(s),
            Some(Err(e)) => panic!("{e}"),
            _ => {}
        }
    }
    (matches, scores)
}

fn stats(h: &Harness) -> Stats {
    let element = h.element().expect("the harnessed element");
    Stats::from_structure(&element.property::<gst::Structure>(props::STATS)).expect("stats read")
}

/// Transition, label, pts in ms and reason of each match message, for comparisons.
fn summary(m: &[MatchMessage]) -> Vec<(clipfilter::matcher::Transition, String, u64, Reason)> {
    m.iter()
        .map(|m| {
            (
                m.transition,
                m.label.clone(),
                m.position.pts.expect("a pts").mseconds(),
                m.reason,
            )
        })
        .collect()
}

#[test]
fn sampling_follows_stream_time() {
    // One sample per 500 ms of stream time; a frame every 100 ms, pushed as fast as the element
    // takes them: the frames at 0, 0.5, 1 and 1.5 s are sampled, whatever the wall clock says.
    let (mut h, bus) = harness(&[
        (props::INTERVAL, ms(500).nseconds().to_value()),
        (props::POST_SCORES, true.to_value()),
    ]);
    for i in 0..20 {
        push(&mut h, i, RED);
    }
    let s = stats(&h);
    assert_eq!(
        (s.frames, s.sampled, s.inferred, s.skipped),
        (20, 4, 4, 0),
        "{s:?}"
    );
    let (_, scores) = posted(&bus);
    let sampled: Vec<u64> = scores
        .iter()
        .map(|s| s.position.pts.expect("a pts").mseconds())
        .collect();
    assert_eq!(sampled, [0, 500, 1000, 1500]);
    assert_eq!(h.buffers_in_queue(), 20, "every frame passes");
}

#[test]
fn a_red_frame_starts_red_and_green_frames_end_it_after_leave_samples() {
    // Every frame sampled; red ends after two green samples in a row.
    let (mut h, bus) = harness(&[
        (props::INTERVAL, ms(100).nseconds().to_value()),
        (props::LEAVE_SAMPLES, 2u32.to_value()),
    ]);
    push(&mut h, 0, RED);
    let (started, _) = posted(&bus);
    assert_eq!(
        summary(&started),
        [(Start, "red".into(), 0, Reason::Sample)],
        "sync mode: the verdict is out before push returns"
    );
    assert!(started[0].score > 0.99, "{:?}", started[0]);
    assert_eq!(started[0].position.frame, 0);

    for i in 1..5 {
        push(&mut h, i, GREEN);
    }
    assert!(h.push_event(gst::event::Eos::new()));
    let (m, _) = posted(&bus);
    assert_eq!(
        summary(&m),
        [
            (Start, "green".into(), 100, Reason::Sample),
            (End, "red".into(), 200, Reason::Sample),
            (End, "green".into(), 500, Reason::Eos),
        ],
        "the end of the last frame (400 ms + 100 ms) closes green at EOS"
    );
    assert_eq!(m[1].position.frame, 2);
}

#[test]
fn sync_drop_drops_exactly_the_matched_buffers() {
    // `action` applies to every label of the prompts: "red" and "blue", so that green frames
    // (cosine 0.0025 with both) match nothing. A sample every 200 ms (even frames); frames
    // 6..=11 are red. The red sample at frame 6 is held until its verdict and dropped, and so is
    // every frame after it until the green sample at frame 12 ends the match: exactly the red
    // frames go, every other one passes.
    let (mut h, bus) = harness(&[
        (props::PROMPTS, "red;blue".to_value()),
        (
            props::THRESHOLD_KIND,
            ClipFilterThresholdKind::Cosine.to_value(),
        ),
        (props::THRESHOLD, 0.5.to_value()),
        (props::INTERVAL, ms(200).nseconds().to_value()),
        (props::ACTION, ClipFilterAction::Drop.to_value()),
    ]);
    let red = 6..=11;
    for i in 0..20 {
        push(&mut h, i, if red.contains(&i) { RED } else { GREEN });
    }
    let passed: Vec<u64> = std::iter::from_fn(|| h.try_pull())
        .map(|b| b.pts().expect("a pts").mseconds() / 100)
        .collect();
    let want: Vec<u64> = (0..20).filter(|i| !red.contains(i)).collect();
    assert_eq!(passed, want, "frames that came out");
    assert_eq!(stats(&h).frames, 20);
    let (m, _) = posted(&bus);
    assert_eq!(
        summary(&m),
        [
            (Start, "red".into(), 600, Reason::Sample),
            (End, "red".into(), 1200, Reason::Sample)
        ]
    );
}

#[test]
fn a_threshold_set_while_playing_applies_from_the_next_frame() {
    // A dark red frame (128, 0, 0) lies between red and black: the oracle gives "red" a cosine
    // of about 0.13 and "green" about 0.05. At a cosine threshold of 0.5 nothing matches; at 0.1
    // red does, from the first frame after the change.
    let dark_red = [128, 0, 0];
    let (mut h, bus) = harness(&[
        (props::INTERVAL, ms(100).nseconds().to_value()),
        (
            props::THRESHOLD_KIND,
            ClipFilterThresholdKind::Cosine.to_value(),
        ),
        (props::THRESHOLD, 0.5.to_value()),
        (props::POST_SCORES, true.to_value()),
    ]);
    for i in 0..3 {
        push(&mut h, i, dark_red);
    }
    let (m, s) = posted(&bus);
    assert!(m.is_empty(), "{m:?}");
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].labels, ["red", "green"]);
    let (red, green) = (s[0].scores[0], s[0].scores[1]);
    assert!(
        (0.1..0.5).contains(&red) && green < 0.1,
        "the oracle's cosines: red {red}, green {green}"
    );

    let element = h.element().expect("the harnessed element");
    element.set_property(props::THRESHOLD, 0.1);
    for i in 3..6 {
        push(&mut h, i, dark_red);
    }
    let (m, _) = posted(&bus);
    assert_eq!(summary(&m), [(Start, "red".into(), 300, Reason::Sample)]);
    assert_eq!(element.property::<f64>(props::THRESHOLD), 0.1);
}
