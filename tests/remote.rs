//! Remote inference (`backend = "triton"`) against real `tritonserver` processes on 127.0.0.1
//! (tools/setup-triton.sh installs one; without it these tests fail and say so). The servers'
//! models are python-backend models running the fixtures' ONNX files through onnxruntime
//! (tools/triton_repo.py), so every answer can be compared with the local engine's.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use gst::prelude::*;

use clipfilter::engine::{Backend, Engine, EngineConfig};
use clipfilter::remote::{RemoteConfig, WireFormat};
use gstclipfilter::clipfilter::messages::{MatchMessage, Stats};

use crate::util;

#[path = "../crates/triton/tests/triton/util.rs"]
#[allow(dead_code)]
mod triton;

use triton::TritonServer;

const CLIP_MODELS: [&str; 4] = [
    "clip_image",
    "clip_image_fp16",
    "clip_image_uint8",
    "clip_text",
];
const ORACLE_MODELS: [&str; 2] = ["oracle_image", "oracle_text"];

/// One server for the tests that only read: tiny-clip as `clip_*` (the default names) and
/// oracle-clip as `oracle_*`, in one repository.
struct Shared {
    server: TritonServer,
    _repo: tempfile::TempDir,
}

fn shared() -> Arc<Shared> {
    static SHARED: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let repo = triton::named_model_repository(
        "tiny-clip",
        "image,image_fp16,image_uint8,text",
        Some("clip"),
    );
    add_oracle(repo.path());
    let models: Vec<&str> = CLIP_MODELS.iter().chain(&ORACLE_MODELS).copied().collect();
    let server = TritonServer::start(repo.path(), &models);
    let s = Arc::new(Shared {
        server,
        _repo: repo,
    });
    *slot = Arc::downgrade(&s);
    s
}

/// Adds oracle-clip's image (fp32) and text models as `oracle_*` to the repository at `repo`.
fn add_oracle(repo: &std::path::Path) {
    let out = std::process::Command::new(triton::python())
        .arg(triton::repo_root().join("tools/triton_repo.py"))
        .arg(util::model("oracle-clip"))
        .arg(repo)
        .args([
            "--name",
            "oracle",
            "--variants",
            "image,text",
            "--max-batch-size",
            "16",
        ])
        .output()
        .expect("tools/triton_repo.py runs");
    assert!(out.status.success(), "{:?}", util::text(&out));
}

fn remote_engine(model: &str, remote: RemoteConfig) -> clipfilter::Result<Engine> {
    let mut cfg = EngineConfig::new(util::model(model));
    cfg.backend = Backend::Triton(Box::new(remote));
    Engine::load(&cfg)
}

/// Preprocessed pseudo-random 300x200 frames, as `engine` preprocesses them.
fn frames(engine: &Engine, n: usize) -> Vec<f32> {
    let mut pre = engine.preprocessor().unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let rgb = triton::rgb_batch(1, 200, 300, i as u64 + 1);
        let mut buf = vec![0.0; pre.output_len()];
        pre.run_rgb8(&rgb, 300, 200, &mut buf).unwrap();
        out.extend(buf);
    }
    out
}

fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| triton::max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

#[test]
fn every_wire_format_gives_the_local_embeddings() {
    let s = shared();
    let local = Engine::load(&EngineConfig::new(util::model("tiny-clip"))).unwrap();
    let want = local.embed_pixels(&frames(&local, 5)).unwrap();
    let texts = ["a red car", "a photo of a cat", "smoke"];
    let want_text = local.embed_texts(&texts).unwrap();
    for wire in WireFormat::ALL {
        let remote = remote_engine(
            "tiny-clip",
            RemoteConfig::new([s.server.grpc_url()]).with_wire(wire),
        )
        .unwrap_or_else(|e| panic!("{wire}: {e}"));
        assert_eq!(remote.providers().0.name(), "triton");
        let got = remote.embed_pixels(&frames(&remote, 5)).unwrap();
        let diff = worst(&got, &want);
        let reference = match wire {
            // fp16 rounds the inputs: the same rounding locally gives the same embeddings.
            WireFormat::Fp16 => {
                let pixels = frames(&local, 5);
                let rounded =
                    clipfilter_triton::Tensor::f16_from_f32("x", vec![pixels.len()], &pixels)
                        .and_then(|t| t.to_f32())
                        .unwrap();
                worst(&got, &local.embed_pixels(&rounded).unwrap())
            }
            _ => diff,
        };
        eprintln!(
            "{wire}: largest difference from the local embeddings {diff:e}, from the local embeddings of the same input {reference:e}"
        );
        assert!(reference <= 1e-5, "{wire}: {reference}");
        if wire == WireFormat::Fp16 {
            assert!(diff <= 1e-3, "fp16 strays too far: {diff}");
        }
        let text = remote.embed_texts(&texts).unwrap();
        assert!(worst(&text, &want_text) <= 1e-5, "{wire}: text");
        assert_eq!(
            remote
                .stats()
                .unavailable
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}

#[test]
fn a_server_model_that_does_not_match_the_local_folder_is_refused_at_start() {
    let s = shared();
    // tiny-clip-odd: 96x96 images, embeddings of width 24, no attention mask.
    let e = remote_engine("tiny-clip-odd", RemoteConfig::new([s.server.grpc_url()])).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("does not match the local model"), "{text}");
    assert!(
        text.contains("embedding size 32, the local model has 24"),
        "{text}"
    );
    assert!(e.is_user_error(), "a mismatch is the user's to fix: {text}");

    // A wire format whose model takes another type: fp32 data to the uint8 model.
    let mut cfg = RemoteConfig::new([s.server.grpc_url()]);
    cfg.image_model = "clip_image_uint8".into();
    let text = remote_engine("tiny-clip", cfg).unwrap_err().to_string();
    assert!(
        text.contains("input 'pixel_values' is UINT8, expected FP32"),
        "{text}"
    );
}

#[test]
fn nothing_listening_fails_the_start_within_its_timeout() {
    let mut cfg = RemoteConfig::new([format!("grpc://127.0.0.1:{}", util::free_port())]);
    cfg.start_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let text = remote_engine("tiny-clip", cfg).unwrap_err().to_string();
    assert!(text.contains("no Triton endpoint became ready"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Plays `desc` to EOS; returns the match messages and the element's final stats.
fn run_matches(desc: &str) -> (Vec<MatchMessage>, Stats) {
    init();
    let p = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = bus
            .timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            .expect("EOS within 120 s");
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{desc}: {} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(e) => {
                if let Some(m) = e
                    .structure()
                    .and_then(|s| MatchMessage::from_structure(s).ok())
                {
                    out.push(m);
                }
            }
            _ => {}
        }
    }
    let stats = element_stats(&p);
    p.set_state(gst::State::Null).unwrap();
    (out, stats)
}

fn element_stats(p: &gst::Pipeline) -> Stats {
    let cf = p.by_name("cf").expect("clipfilter named cf");
    Stats::from_structure(&cf.property::<gst::Structure>("stats")).unwrap()
}

fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstclipfilter::plugin_register_static().expect("clipfilter registers");
    });
}

/// Red, green, blue and red again, one second each, through `clipfilter` with `extra`.
fn colours(extra: &str) -> String {
    let part = |pattern: &str| {
        format!(
            "videotestsrc pattern={pattern} num-buffers=25 ! video/x-raw,format=RGB,width=64,height=48,framerate=25/1 ! c. "
        )
    };
    format!(
        "concat name=c ! clipfilter name=cf model={} prompts=\"red;green;blue\" mode=sync interval=200000000 {extra} ! fakesink {}{}{}{}",
        util::model("oracle-clip").display(),
        part("red"),
        part("green"),
        part("blue"),
        part("red"),
    )
}

#[test]
fn the_oracle_colour_video_gives_the_same_events_through_triton() {
    let s = shared();
    let (local, local_stats) = run_matches(&colours(""));
    for wire in ["fp32"] {
        let (remote, stats) = run_matches(&colours(&format!(
            "backend=triton endpoints={} wire-format={wire} image-model-name=oracle_image text-model-name=oracle_text",
            s.server.grpc_url()
        )));
        let key = |m: &MatchMessage| {
            (
                m.transition,
                m.label.clone(),
                m.position.stream_time,
                m.reason,
            )
        };
        assert_eq!(
            remote.iter().map(key).collect::<Vec<_>>(),
            local.iter().map(key).collect::<Vec<_>>()
        );
        assert!(local.len() >= 7, "{} events", local.len());
        for (r, l) in remote.iter().zip(&local) {
            assert!(
                (r.score - l.score).abs() <= 1e-5,
                "{} vs {}",
                r.score,
                l.score
            );
        }
        assert_eq!(stats.inferred, local_stats.inferred);
        assert_eq!((stats.errors, stats.unavailable), (0, 0));
        assert_eq!(stats.execution_provider, "triton");
    }
}

/// Polls the element's stats until `done` (panics with them after `within`); fails on a bus
/// error: the pipeline must keep running whatever the servers do.
fn wait_stats(
    p: &gst::Pipeline,
    within: Duration,
    what: &str,
    done: impl Fn(&Stats) -> bool,
) -> Stats {
    let bus = p.bus().unwrap();
    let start = Instant::now();
    loop {
        while let Some(msg) = bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                panic!(
                    "the pipeline failed ({what}): {} ({:?})",
                    e.error(),
                    e.debug()
                );
            }
        }
        let stats = element_stats(p);
        if done(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < within,
            "{what}: not after {within:?}: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn servers_killed_and_restarted_mid_stream() {
    let repo = tempfile::tempdir().unwrap();
    add_oracle(repo.path());
    let mut a = TritonServer::start(repo.path(), &ORACLE_MODELS);
    let mut b = TritonServer::start(repo.path(), &ORACLE_MODELS);
    init();
    // scene-gate=0: the live red picture never changes, and the automatic gate would skip it.
    let desc = format!(
        "videotestsrc is-live=true pattern=red ! video/x-raw,format=RGB,width=64,height=48,framerate=25/1 ! \
         clipfilter name=cf model={} prompts=\"red;green;blue\" interval=100000000 scene-gate=0 backend=triton \
         endpoints={},{} image-model-name=oracle_image text-model-name=oracle_text remote-timeout=2000000000 ! fakesink",
        util::model("oracle-clip").display(),
        a.grpc_url(),
        b.grpc_url(),
    );
    let p = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    struct Stop(gst::Pipeline);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.set_state(gst::State::Null);
        }
    }
    let p = Stop(p);
    p.0.set_state(gst::State::Playing).unwrap();
    let minute = Duration::from_secs(60);
    let before = wait_stats(&p.0, minute, "inferring", |s| s.inferred >= 5);

    // One of two killed: the other takes every sample.
    a.kill();
    let after_one = wait_stats(&p.0, minute, "one server left", |s| {
        s.inferred >= before.inferred + 10
    });
    assert_eq!(after_one.unavailable, 0, "{after_one:?}");
    assert_eq!(after_one.errors, 0, "{after_one:?}");

    // Both gone: the pipeline runs on, samples are dropped and counted.
    b.kill();
    let down = wait_stats(&p.0, minute, "dropping", |s| s.unavailable >= 10);
    let frames = down.frames;
    let still = wait_stats(&p.0, minute, "frames flowing", |s| s.frames >= frames + 25);
    assert_eq!(still.errors, 0, "an outage is not an error: {still:?}");

    // One back: inference resumes by itself (probes with backoff).
    a.restart(&ORACLE_MODELS);
    let resumed = wait_stats(&p.0, Duration::from_secs(90), "resumed", |s| {
        s.inferred >= still.inferred + 5
    });
    eprintln!(
        "inferred {} before, {} with one server, dropped {} while none was up, {} after the restart",
        before.inferred, after_one.inferred, resumed.unavailable, resumed.inferred
    );
    assert_eq!(resumed.errors, 0, "{resumed:?}");
}
