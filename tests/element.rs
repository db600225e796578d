//! The `clipfilter` element in real GStreamer pipelines, with the oracle model (frames' mean
//! colour -> colour words) so that the right answers are known.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use clipfilter::matcher::Transition::{End, Start};
use gst::prelude::*;
use gst_video::prelude::*;
use gstclipfilter::clipfilter::messages::{MatchMessage, Message, Reason, Stats};
use gstclipfilter::clipfilter::properties as props;

use crate::util::{self, PATIENCE, oracle, write_atomically};

pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstclipfilter::plugin_register_static().expect("clipfilter registers");
    });
}

pub(crate) const MS: u64 = 1_000_000;
const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];

/// A pipeline that is set to NULL when dropped (also when a test fails half-way).
pub(crate) struct Pipe(pub(crate) gst::Pipeline);

impl std::ops::Deref for Pipe {
    type Target = gst::Pipeline;

    fn deref(&self) -> &gst::Pipeline {
        &self.0
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

pub(crate) fn pipeline(desc: &str) -> Pipe {
    init();
    Pipe(
        gst::parse::launch(desc)
            .unwrap_or_else(|e| panic!("{desc}: {e}"))
            .downcast::<gst::Pipeline>()
            .expect("a pipeline"),
    )
}

pub(crate) fn by_name<T: IsA<gst::Element>>(p: &gst::Pipeline, name: &str) -> T {
    p.by_name(name)
        .unwrap_or_else(|| panic!("no element {name}"))
        .downcast::<T>()
        .unwrap_or_else(|_| panic!("{name} has another type"))
}

/// The element's message `msg` carries, read through the element's own types: `None` when it
/// is not one of the element's; a message that claims to be one but does not read fails the test.
pub(crate) fn element_message(msg: &gst::MessageRef) -> Option<Message> {
    Message::parse(msg).map(|m| m.unwrap_or_else(|e| panic!("{e}")))
}

/// The `clipfilter-match` message `msg` carries, if it is one.
fn as_match(msg: &gst::Message) -> Option<MatchMessage> {
    match element_message(msg)? {
        Message::Match(m) => Some(m),
        _ => None,
    }
}

/// The element's `stats` property, read through its type.
fn stats(cf: &gst::Element) -> Stats {
    Stats::from_structure(&cf.property::<gst::Structure>(props::STATS)).expect("stats read")
}

/// The time left until `deadline`, as a bus timeout.
pub(crate) fn left(deadline: Instant) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(
        deadline
            .saturating_duration_since(Instant::now())
            .as_nanos() as u64,
    )
}

/// Plays `p` to EOS and returns every message on the way; panics on an error or after
/// [`PATIENCE`]. The pipeline stays in PLAYING (appsinks keep their samples) until it is dropped.
pub(crate) fn run_to_eos(p: &gst::Pipeline) -> Vec<gst::Message> {
    let bus = p.bus().expect("bus");
    p.set_state(gst::State::Playing).expect("pipeline plays");
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    loop {
        let msg = bus.timed_pop(left(deadline)).expect("EOS in time");
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("pipeline error: {} ({:?})", e.error(), e.debug()),
            _ => out.push(msg),
        }
    }
    out
}

pub(crate) fn matches(msgs: &[gst::Message]) -> Vec<MatchMessage> {
    msgs.iter().filter_map(as_match).collect()
}

fn solid_rgb(w: usize, h: usize, rgb: [u8; 3]) -> Vec<u8> {
    rgb.iter().copied().cycle().take(w * h * 3).collect()
}

/// `n` frames of 25 fps video, the first `switch` of colour `a`, then colour `b`.
fn push_frames(src: &gst_app::AppSrc, n: u64, switch: u64, pixels: impl Fn(bool) -> Vec<u8>) {
    for i in 0..n {
        let mut buf = gst::Buffer::from_mut_slice(pixels(i < switch));
        {
            let b = buf.get_mut().expect("new buffer");
            b.set_pts(gst::ClockTime::from_nseconds(i * 40 * MS));
            b.set_duration(gst::ClockTime::from_nseconds(40 * MS));
        }
        src.push_buffer(buf).expect("appsrc takes the buffer");
    }
}

pub(crate) fn pull_all(sink: &gst_app::AppSink) -> Vec<gst::Sample> {
    std::iter::from_fn(|| sink.try_pull_sample(gst::ClockTime::ZERO)).collect()
}

pub(crate) fn pixels(sample: &gst::Sample) -> Vec<u8> {
    let map = sample
        .buffer()
        .expect("buffer")
        .map_readable()
        .expect("readable");
    map.as_slice().to_vec()
}

pub(crate) fn labels_file(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("labels.toml");
    write_atomically(&path, body);
    path
}

fn close_to(t: Option<gst::ClockTime>, expected_ms: u64, tolerance_ms: u64) -> bool {
    t.is_some_and(|t| t.mseconds().abs_diff(expected_ms) <= tolerance_ms)
}

#[test]
fn red_then_green_file_gives_one_episode_each_at_the_right_stream_times() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("red-green.mp4");
    // 2 s red then 2 s green, H.264 in MP4.
    let enc = pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width=64,height=48,framerate=25/1 \
         ! videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=25 \
         ! mp4mux ! filesink location={}",
        file.display()
    ));
    let src: gst_app::AppSrc = by_name(&enc, "src");
    push_frames(&src, 100, 50, |red| {
        solid_rgb(64, 48, if red { RED } else { GREEN })
    });
    src.end_of_stream().unwrap();
    run_to_eos(&enc);

    // Decoded (I420) and watched in sync mode: every sample gets its verdict.
    let p = pipeline(&format!(
        "filesrc location={} ! decodebin ! clipfilter name=cf model={} prompts=\"red;green;blue\" \
         mode=sync interval={} ! fakesink",
        file.display(),
        oracle().display(),
        500 * MS
    ));
    let m = matches(&run_to_eos(&p));
    let summary: Vec<_> = m
        .iter()
        .map(|m| {
            (
                m.transition,
                m.label.as_str(),
                m.position.stream_time.map(|t| t.mseconds()),
                m.reason,
            )
        })
        .collect();
    assert_eq!(m.len(), 4, "{summary:?}");
    let interval = 500;
    assert!(
        m[0].transition == Start
            && m[0].label == "red"
            && close_to(m[0].position.stream_time, 0, interval)
    );
    assert!(m[0].score > 0.9, "{summary:?}");
    // The red end and the green start come from the same sample, near 2 s.
    let end_red = m
        .iter()
        .position(|m| m.transition == End && m.label == "red")
        .unwrap();
    let start_green = m
        .iter()
        .position(|m| m.transition == Start && m.label == "green")
        .unwrap();
    assert!(
        close_to(m[end_red].position.stream_time, 2000, interval),
        "{summary:?}"
    );
    assert!(
        close_to(m[start_green].position.stream_time, 2000, interval),
        "{summary:?}"
    );
    assert_eq!(m[end_red].reason, Reason::Sample);
    // EOS ends the green episode at the end of the stream.
    let last = &m[3];
    assert!(
        last.transition == End && last.label == "green" && last.reason == Reason::Eos,
        "{summary:?}"
    );
    assert!(
        close_to(last.position.stream_time, 4000, interval),
        "{summary:?}"
    );
}

const RED_BLANKS: &str = r#"
[defaults]
min_cosine = 0.9

[[label]]
name = "red"
action = "blank"

[[label]]
name = "green"
"#;

fn blank_pipeline(labels: &Path, mode: &str, interval_ms: u64, sync: bool) -> Pipe {
    pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGBA,width=32,height=24,framerate=25/1 \
         ! clipfilter name=cf model={} labels={} mode={mode} interval={} snapshot=true \
         ! appsink name=sink sync={sync} wait-on-eos=false",
        oracle().display(),
        labels.display(),
        interval_ms * MS
    ))
}

fn rgba(rgb: [u8; 3]) -> Vec<u8> {
    [rgb[0], rgb[1], rgb[2], 255]
        .into_iter()
        .cycle()
        .take(32 * 24 * 4)
        .collect()
}

fn is_blank(px: &[u8]) -> bool {
    px.chunks_exact(4).all(|p| p == [0, 0, 0, 255])
}

#[test]
fn sync_blank_blanks_exactly_the_matched_frames_and_snapshots_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(dir.path(), RED_BLANKS);
    let p = blank_pipeline(&labels, "sync", 400, false);
    let src: gst_app::AppSrc = by_name(&p, "src");
    let sink: gst_app::AppSink = by_name(&p, "sink");
    // Green, red from 1 s to 3 s (frames 25..75), green again.
    for i in 0..100u64 {
        let red = (25..75).contains(&i);
        let mut buf = gst::Buffer::from_mut_slice(rgba(if red { RED } else { GREEN }));
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(i * 40 * MS));
        b.set_duration(gst::ClockTime::from_nseconds(40 * MS));
        src.push_buffer(buf).unwrap();
    }
    src.end_of_stream().unwrap();
    let msgs = run_to_eos(&p);
    let frames = pull_all(&sink);
    assert_eq!(frames.len(), 100);
    // Samples at 0, 0.4 s ... 1.2 s is the first red sample: red matches from frame 30 (1.2 s)
    // to frame 75 (3.0 s, the first green sample after it, 3.2 s -> frame 80).
    let blanked: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, s)| is_blank(&pixels(s)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(blanked, (30..80).collect::<Vec<_>>());
    for (i, s) in frames.iter().enumerate() {
        if !blanked.contains(&i) {
            let want = if (25..75).contains(&i) { RED } else { GREEN };
            assert_eq!(pixels(s), rgba(want), "frame {i} is changed");
        }
    }
    let m = matches(&msgs);
    let start = m
        .iter()
        .find(|m| m.transition == Start && m.label == "red")
        .unwrap();
    assert!(close_to(start.position.stream_time, 1200, 0));
    // The snapshot holds the frame as it came in, not the blanked copy sent downstream.
    let snap = start.snapshot.as_ref().expect("snapshot on start");
    assert_eq!(pixels(snap), rgba(RED));
    let caps = snap.caps().unwrap().structure(0).unwrap().to_owned();
    assert_eq!(caps.get::<i32>("width").unwrap(), 32);
}

#[test]
fn async_blank_applies_from_the_first_verdict_on() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(dir.path(), RED_BLANKS);
    // Paced at real time by the sink so that verdicts arrive while frames flow.
    let p = blank_pipeline(&labels, "async", 200, true);
    let src: gst_app::AppSrc = by_name(&p, "src");
    let sink: gst_app::AppSink = by_name(&p, "sink");
    push_frames(&src, 50, 25, |red| rgba(if red { RED } else { GREEN }));
    src.end_of_stream().unwrap();
    run_to_eos(&p);
    let blank: Vec<bool> = pull_all(&sink)
        .iter()
        .map(|s| is_blank(&pixels(s)))
        .collect();
    assert_eq!(blank.len(), 50);
    // Blanking starts with some red frame (the one after the first verdict) and covers every
    // red frame from there; it stops within the green stretch and never comes back.
    let first = blank
        .iter()
        .position(|b| *b)
        .expect("red frames get blanked");
    assert!(first < 25, "first blanked frame {first} is not red");
    assert!(blank[first..25].iter().all(|b| *b), "{blank:?}");
    let stop = first
        + blank[first..]
            .iter()
            .position(|b| !*b)
            .expect("green frames pass");
    assert!(stop >= 25 && blank[stop..].iter().all(|b| !*b), "{blank:?}");
}

#[test]
fn sync_drop_drops_the_matched_frames() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(dir.path(), &RED_BLANKS.replace("blank", "drop"));
    let p = blank_pipeline(&labels, "sync", 0, false);
    let src: gst_app::AppSrc = by_name(&p, "src");
    let sink: gst_app::AppSink = by_name(&p, "sink");
    push_frames(&src, 40, 15, |red| rgba(if red { RED } else { GREEN }));
    src.end_of_stream().unwrap();
    run_to_eos(&p);
    let out = pull_all(&sink);
    assert_eq!(out.len(), 25, "the 15 red frames are dropped");
    assert!(out.iter().all(|s| pixels(s) == rgba(GREEN)));
    assert_eq!(
        out[0].buffer().unwrap().pts(),
        Some(gst::ClockTime::from_mseconds(600))
    );
}

fn scores_labels(msg: &gst::MessageRef) -> Option<Vec<String>> {
    match element_message(msg)? {
        Message::Scores(s) => Some(s.labels),
        _ => None,
    }
}

#[test]
fn labels_file_edits_apply_while_playing_and_broken_edits_keep_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = "[defaults]\nmin_cosine = 0.9\n\n[[label]]\nname = \"green\"\n\n[[label]]\nname = \"blue\"\n";
    let v2 = format!("{v1}\n[[label]]\nname = \"red\"\n");
    let labels = labels_file(dir.path(), v1);
    let p = pipeline(&format!(
        "videotestsrc is-live=true pattern=red ! video/x-raw,width=32,height=24,framerate=30/1 \
         ! clipfilter name=cf model={} labels={} interval={} post-scores=true ! fakesink",
        oracle().display(),
        labels.display(),
        100 * MS
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let next = || {
        let msg = bus
            .timed_pop(left(deadline))
            .expect("the expected messages in time");
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("pipeline error: {}", e.error());
        }
        msg
    };

    // Running with green and blue: a red stream matches nothing.
    loop {
        let msg = next();
        assert!(as_match(&msg).is_none(), "{msg:?}");
        if scores_labels(&msg).is_some() {
            break;
        }
    }
    write_atomically(&labels, &v2);
    let mut reloaded = false;
    loop {
        let msg = next();
        if let Some(Message::LabelsReloaded(r)) = element_message(&msg) {
            assert_eq!(r.path, labels);
            reloaded = true;
        }
        if let Some(m) = as_match(&msg) {
            assert!(
                reloaded && m.transition == Start && m.label == "red",
                "{m:?}"
            );
            break;
        }
    }
    // A broken edit: a warning naming the file, and the set with red stays.
    write_atomically(&labels, "[[label]\nname = \"red\"\n");
    loop {
        let msg = next();
        assert!(as_match(&msg).is_none(), "{msg:?}");
        if let gst::MessageView::Warning(w) = msg.view() {
            let text = w.error().to_string();
            assert!(
                text.contains("labels.toml") && text.contains("line 1"),
                "{text}"
            );
            break;
        }
    }
    let mut scored = 0;
    while scored < 3 {
        let msg = next();
        assert!(as_match(&msg).is_none(), "{msg:?}");
        if let Some(l) = scores_labels(&msg) {
            assert_eq!(l, ["green", "blue", "red"]);
            scored += 1;
        }
    }
    p.send_event(gst::event::Eos::new());
    let mut end = None;
    loop {
        let msg = next();
        if let Some(m) = as_match(&msg) {
            end = Some(m);
        }
        if let gst::MessageView::Eos(_) = msg.view() {
            break;
        }
    }
    p.set_state(gst::State::Null).unwrap();
    let end = end.expect("the red episode ends");
    assert!(
        end.transition == End && end.label == "red" && end.reason == Reason::Eos,
        "{end:?}"
    );
}

#[test]
fn a_slow_model_never_stalls_the_stream_in_async_mode() {
    let p = pipeline(&format!(
        "videotestsrc num-buffers=60 pattern=red ! video/x-raw,width=32,height=24,framerate=30/1 \
         ! clipfilter name=cf model={} prompts=\"red;green\" interval=0 threads=1 \
         ! appsink name=sink sync=false wait-on-eos=false",
        util::model("oracle-slow").display()
    ));
    let sink: gst_app::AppSink = by_name(&p, "sink");
    let cf: gst::Element = by_name(&p, "cf");
    let msgs = run_to_eos(&p);
    assert_eq!(pull_all(&sink).len(), 60, "every buffer comes out");
    let stats = stats(&cf);
    // Every frame was sampled; inference (>= 150 ms per image) could not keep up, and the
    // streaming thread did not wait for it: newer frames replaced waiting ones.
    assert_eq!(stats.frames, 60);
    assert_eq!(stats.sampled, 60);
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(stats.inferred < 60, "{stats:?}");
    assert_eq!(stats.inferred + stats.dropped, 60, "{stats:?}");
    assert_eq!(stats.execution_provider, "cpu");
    // Verdicts still arrived, with a start and an end.
    let m = matches(&msgs);
    assert!(
        m.first()
            .is_some_and(|m| m.transition == Start && m.label == "red"),
        "{m:?}"
    );
    assert!(
        m.last()
            .is_some_and(|m| m.transition == End && m.reason == Reason::Eos),
        "{m:?}"
    );
}

#[test]
fn caps_change_mid_stream() {
    let p = pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width=64,height=48,framerate=25/1 \
         ! clipfilter model={} prompts=\"red;green\" mode=sync interval={} ! appsink name=sink sync=false wait-on-eos=false",
        oracle().display(),
        200 * MS
    ));
    let src: gst_app::AppSrc = by_name(&p, "src");
    let sink: gst_app::AppSink = by_name(&p, "sink");
    push_frames(&src, 25, 25, |_| solid_rgb(64, 48, RED));
    // Second half: another size and format (BGRx, green).
    src.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "BGRx")
            .field("width", 80)
            .field("height", 60)
            .field("framerate", gst::Fraction::new(25, 1))
            .build(),
    ));
    for i in 25..50u64 {
        let data: Vec<u8> = [0u8, 255, 0, 0]
            .into_iter()
            .cycle()
            .take(80 * 60 * 4)
            .collect();
        let mut buf = gst::Buffer::from_mut_slice(data);
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(i * 40 * MS));
        b.set_duration(gst::ClockTime::from_nseconds(40 * MS));
        src.push_buffer(buf).unwrap();
    }
    src.end_of_stream().unwrap();
    let m = matches(&run_to_eos(&p));
    let got: Vec<_> = m
        .iter()
        .map(|m| {
            (
                m.transition,
                m.label.as_str(),
                m.position.stream_time.unwrap().mseconds(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Start, "red", 0),
            (End, "red", 1000),
            (Start, "green", 1000),
            (End, "green", 2000),
        ]
    );
    let out = pull_all(&sink);
    assert_eq!(out.len(), 50);
    let last_caps = out[49].caps().unwrap().structure(0).unwrap().to_owned();
    assert_eq!(last_caps.get::<i32>("width").unwrap(), 80);
}

#[test]
fn seek_ends_open_episodes_and_restarts_sampling_at_the_new_position() {
    let p = pipeline(&format!(
        "videotestsrc pattern=red ! video/x-raw,width=32,height=24,framerate=30/1 \
         ! clipfilter model={} prompts=\"red;green\" interval={} ! fakesink sync=true",
        oracle().display(),
        100 * MS
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let next_match = || loop {
        let msg = bus.timed_pop(left(deadline)).expect("messages in time");
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("pipeline error: {}", e.error());
        }
        if let Some(m) = as_match(&msg) {
            return m;
        }
    };
    let first = next_match();
    assert!(
        first.transition == Start
            && first.label == "red"
            && close_to(first.position.stream_time, 0, 100)
    );
    p.seek_simple(
        gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
        gst::ClockTime::from_seconds(10),
    )
    .expect("seek");
    let end = next_match();
    assert!(
        end.transition == End && end.label == "red" && end.reason == Reason::Flush,
        "{end:?}"
    );
    let again = next_match();
    assert!(
        again.transition == Start && again.label == "red",
        "{again:?}"
    );
    assert!(
        close_to(again.position.stream_time, 10_000, 100),
        "{again:?}"
    );
    p.set_state(gst::State::Null).unwrap();
}

fn threads_of_this_process() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc/self/status")
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS: in /proc/self/status")
}

const CHILD: &str = "CLIPFILTER_ELEMENT_TEST_CHILD";

/// Runs this test alone in a child process (thread counts must not see other tests' threads).
fn in_own_process(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("the test binary runs");
    let (stdout, stderr) = util::text(&out);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process failed:\n{stdout}\n{stderr}"
    );
    false
}

#[test]
fn fifty_null_playing_cycles_leave_no_threads_behind() {
    if !in_own_process("element::fifty_null_playing_cycles_leave_no_threads_behind") {
        return;
    }
    let p = pipeline(&format!(
        "videotestsrc pattern=red ! video/x-raw,width=32,height=24,framerate=30/1 \
         ! clipfilter name=cf model={} prompts=\"red;green\" interval=0 post-scores=true \
         ! fakesink sync=false",
        oracle().display()
    ));
    let bus = p.bus().unwrap();
    let cycle = |i: usize| {
        p.set_state(gst::State::Playing).unwrap();
        // Wait for a verdict, so that every cycle really runs the model.
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(PATIENCE.as_secs()),
                &[gst::MessageType::Element, gst::MessageType::Error],
            )
            .unwrap_or_else(|| panic!("cycle {i}: no verdict"));
        assert!(element_message(&msg).is_some(), "cycle {i}: {msg:?}");
        p.set_state(gst::State::Null).unwrap();
        while bus.pop().is_some() {}
    };
    // Warm-up: the first cycles fill allocator pools and GStreamer's thread pool.
    for i in 0..10 {
        cycle(i);
    }
    let (threads, rss) = (threads_of_this_process(), rss_kib());
    for i in 10..60 {
        cycle(i);
    }
    // Threads end asynchronously (notify's, GStreamer's pool): give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_of_this_process() > threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        threads_of_this_process() <= threads,
        "threads: {threads} after 10 cycles, {} after 60",
        threads_of_this_process()
    );
    let grown = rss_kib().saturating_sub(rss);
    println!("RSS grew by {grown} KiB over 50 cycles");
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB over 50 cycles");
}

pub(crate) fn start_error(desc: &str) -> String {
    let p = pipeline(desc);
    let bus = p.bus().unwrap();
    assert!(
        p.set_state(gst::State::Playing).is_err(),
        "{desc} must fail to start"
    );
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(PATIENCE.as_secs()),
            &[gst::MessageType::Error],
        )
        .expect("an error message");
    p.set_state(gst::State::Null).unwrap();
    match msg.view() {
        gst::MessageView::Error(e) => e.error().to_string(),
        _ => unreachable!(),
    }
}

#[test]
fn bad_input_fails_the_start_with_a_message_naming_the_problem() {
    let src = "videotestsrc num-buffers=1 ! video/x-raw,width=32,height=24";
    let e = start_error(&format!(
        "{src} ! clipfilter model=/nonexistent/clip prompts=\"red;green\" ! fakesink"
    ));
    assert!(e.contains("/nonexistent/clip"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let broken = labels_file(
        dir.path(),
        "[[label]]\nname = \"red\"\nmin_cosine = 0.9\naction = \"explode\"\n",
    );
    let e = start_error(&format!(
        "{src} ! clipfilter model={} labels={} ! fakesink",
        oracle().display(),
        broken.display()
    ));
    assert!(
        e.contains("labels.toml") && e.contains("line 4") && e.contains("explode"),
        "{e}"
    );

    let e = start_error(&format!(
        "{src} ! clipfilter model={} prompts=\"red;green\" templates=imagenet81 ! fakesink",
        oracle().display()
    ));
    assert!(e.contains("imagenet81"), "{e}");

    let e = start_error(&format!(
        "{src} ! clipfilter prompts=\"red;green\" ! fakesink"
    ));
    assert!(e.contains("model"), "{e}");

    let e = start_error(&format!(
        "{src} ! clipfilter model={} prompts=red ! fakesink",
        oracle().display()
    ));
    assert!(e.contains("probability"), "{e}");
}

#[test]
fn pixelate_paints_uniform_blocks_on_planar_frames_with_padded_strides() {
    // 50x30 I420 has padded strides (52 for luma, 28 for chroma). A cosine threshold of -1
    // matches every frame, so every frame is pixelated: 4x4 luma blocks, 2x2 chroma blocks.
    let p = pipeline(&format!(
        "videotestsrc num-buffers=5 pattern=smpte ! video/x-raw,format=I420,width=50,height=30 \
         ! clipfilter model={} prompts=\"red;green\" threshold-kind=cosine threshold=-1 \
           action=pixelate mode=sync interval=0 \
         ! appsink name=sink sync=false wait-on-eos=false",
        oracle().display()
    ));
    let sink: gst_app::AppSink = by_name(&p, "sink");
    run_to_eos(&p);
    let frames = pull_all(&sink);
    assert_eq!(frames.len(), 5);
    for s in &frames {
        let info = gst_video::VideoInfo::from_caps(s.caps().unwrap()).unwrap();
        let frame =
            gst_video::VideoFrameRef::from_buffer_ref_readable(s.buffer().unwrap(), &info).unwrap();
        for (plane, block, w, h) in [
            (0u32, 4usize, 50usize, 30usize),
            (1, 2, 25, 15),
            (2, 2, 25, 15),
        ] {
            let stride = frame.plane_stride()[plane as usize] as usize;
            let data = frame.plane_data(plane).unwrap();
            for y in 0..h {
                for x in 0..w {
                    let corner = data[(y / block * block) * stride + x / block * block];
                    assert_eq!(data[y * stride + x], corner, "plane {plane} ({x},{y})");
                }
            }
            // Still a picture (the bars, coarsely), not a flat frame.
            assert_ne!(data[0], data[w - 1], "plane {plane}");
        }
    }
}

/// Live (camera-like) RGB frames through clipfilter in sync mode, with `extra` properties.
fn gate_run(live: bool, extra: &str) -> (Stats, Vec<MatchMessage>) {
    let p = pipeline(&format!(
        "appsrc name=src is-live={live} format=time \
         caps=video/x-raw,format=RGB,width=64,height=48,framerate=25/1 \
         ! clipfilter name=cf model={} prompts=\"red;green\" interval=100000000 mode=sync {extra} \
         ! fakesink sync=false",
        oracle().display()
    ));
    let src: gst_app::AppSrc = by_name(&p, "src");
    let cf: gst::Element = by_name(&p, "cf");
    push_frames(&src, 80, 40, |red| {
        solid_rgb(64, 48, if red { RED } else { GREEN })
    });
    src.end_of_stream().unwrap();
    let msgs = run_to_eos(&p);
    (stats(&cf), matches(&msgs))
}

#[test]
fn scene_gate_infers_a_static_camera_once_and_again_when_it_changes() {
    // 3.2 s of live video sampled every 100 ms: 32 samples, two different scenes.
    let (stats, m) = gate_run(true, "");
    assert_eq!(stats.sampled, 32, "{stats:?}");
    assert_eq!(stats.inferred, 2, "one inference per scene: {stats:?}");
    assert_eq!(stats.skipped, 30, "{stats:?}");
    // The skipped samples repeat the last verdict: the episodes are the same as without the gate.
    let starts: Vec<_> = m.iter().map(|m| (m.label.as_str(), m.transition)).collect();
    assert_eq!(
        starts,
        [
            ("red", Start),
            ("red", End),
            ("green", Start),
            ("green", End)
        ],
        "{m:?}"
    );
    assert!(close_to(m[1].position.stream_time, 1600, 100), "{m:?}");
    assert!(close_to(m[2].position.stream_time, 1600, 100), "{m:?}");

    // Off on request, and off by default for sources that are not live (files).
    let (off, _) = gate_run(true, "scene-gate=0");
    assert_eq!((off.inferred, off.skipped), (32, 0), "{off:?}");
    let (file, _) = gate_run(false, "");
    assert_eq!(file.skipped, 0, "{file:?}");
    // An explicit threshold gates files too.
    let (forced, _) = gate_run(false, "scene-gate=2");
    assert_eq!(forced.inferred, 2, "{forced:?}");
}
