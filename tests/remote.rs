//! Remote inference (`backend = "triton"`) against real `tritonserver` processes on 127.0.0.1
//! (tools/setup-triton.sh installs one; without it these tests fail and say so). The servers'
//! models are python-backend models running the fixtures' ONNX files through onnxruntime
//! (tools/triton_repo.py), so every answer can be compared with the local engine's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use gst::prelude::*;

use clipfilter::engine::{Backend, Engine, EngineConfig};
use clipfilter::remote::{RemoteConfig, WireFormat};
use gstclipfilter::clipfilter::messages::{MatchMessage, Stats};

use serde_json::Value;

use crate::util;
use crate::util::daemon::{Daemon, config_head, live_pattern};
use crate::util::triton::{self, TritonServer};

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

// ---------------------------------------------------------------- the daemon

/// A daemon config whose model (the oracle) runs on Triton at `endpoints` (its models named
/// `oracle_*`), with `extra` lines in `[model]`, and one live red pipeline `cam` without the
/// scene gate (the picture never changes: every sample goes to inference).
fn triton_daemon(dir: &Path, http: u16, endpoints: &[String], extra: &str) -> PathBuf {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let model = format!(
        "[model]\nbackend = \"triton\"\nendpoints = [{}]\nimage_model = \"oracle_image\"\n\
         text_model = \"oracle_text\"\ntimeout = \"2s\"\nconnect_timeout = \"1s\"\n{extra}",
        list.join(", ")
    );
    let head = config_head(&dir.join("state"), http);
    assert!(head.contains("[model]\n"), "{head}");
    let text = format!(
        "{}{}scene_gate = 0.0\n",
        head.replacen("[model]\n", &model, 1),
        live_pattern("cam", "red")
    );
    let path = dir.join("clipfilterd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn red_start(e: &Value) -> bool {
    e["pipeline"] == "cam" && e["label"] == "red" && e["state"] == "start"
}

/// The `/status` entries of the Triton endpoints.
fn endpoints(status: &Value) -> Vec<Value> {
    status["model"]["remote"]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no Triton endpoints in /status: {status:#}"))
        .clone()
}

fn all_in_state(status: &Value, state: &str) -> bool {
    endpoints(status).iter().all(|e| e["state"] == state)
}

fn count(status: &Value, key: &str) -> u64 {
    status["inference"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("inference.{key} in {status:#}"))
}

/// A per-endpoint Triton series in `/metrics`, for each endpoint of `status` in order.
fn endpoint_metric(daemon: &Daemon, family: &str, status: &Value) -> Vec<f64> {
    let metrics = daemon.get("/metrics");
    endpoints(status)
        .iter()
        .map(|e| {
            let series = format!(
                "{family}{{model=\"oracle-clip\",endpoint=\"{}\"}}",
                e["endpoint"].as_str().unwrap()
            );
            assert!(metrics.contains(&series), "{series} in\n{metrics}");
            util::metric_value(&metrics, &series)
        })
        .collect()
}

#[test]
fn the_daemon_on_triton_counts_dropped_samples_while_every_server_is_down_and_resumes() {
    let repo = tempfile::tempdir().unwrap();
    add_oracle(repo.path());
    let mut a = TritonServer::start(repo.path(), &ORACLE_MODELS);
    let mut b = TritonServer::start(repo.path(), &ORACLE_MODELS);
    let dir = tempfile::tempdir().unwrap();
    let http = util::free_port();
    let config = triton_daemon(dir.path(), http, &[a.grpc_url(), b.grpc_url()], "");
    let daemon = Daemon::start(&config, Some(http));

    // Served by Triton: events, and the endpoints' state in /status and /metrics.
    daemon.wait_event(0, "red through Triton", red_start);
    let status = daemon.wait_status("both endpoints serving", |s| {
        all_in_state(s, "ready")
            && endpoints(s)
                .iter()
                .all(|e| e["requests"].as_u64() > Some(0))
    });
    assert_eq!(status["model"]["backend"], "triton", "{status:#}");
    assert_eq!(status["model"]["image_provider"], "triton", "{status:#}");
    assert_eq!(status["model"]["remote"]["fallback"], "none", "{status:#}");
    let urls: Vec<String> = endpoints(&status)
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(urls, [a.grpc_url(), b.grpc_url()]);
    assert_eq!(
        endpoint_metric(&daemon, "clipfilter_triton_endpoint_up", &status),
        [1.0, 1.0]
    );
    assert!(
        endpoint_metric(&daemon, "clipfilter_triton_requests_total", &status)
            .iter()
            .all(|&n| n > 0.0)
    );
    assert_eq!(
        daemon.metric("clipfilter_inference_unavailable_total{model=\"oracle-clip\"}"),
        0.0
    );

    // Every server gone: the pipeline runs on, samples are dropped and counted, and /status,
    // /metrics and the log say why. Nothing is embedded locally behind the user's back.
    let log_from = daemon.stderr.len();
    a.kill();
    b.kill();
    let down = daemon.wait_status("samples dropped while no server is up", |s| {
        all_in_state(s, "down") && count(s, "unavailable") >= 10
    });
    let reason = down["inference"]["unavailable_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason given: {down:#}"));
    assert!(
        reason.contains("no Triton endpoint is ready for model 'oracle_image'"),
        "{reason}"
    );
    for e in endpoints(&down) {
        assert!(e["last_error"].as_str().is_some(), "{e}");
    }
    let (_, line) = daemon.wait_log(log_from, "inference backend unavailable");
    assert!(
        line["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no Triton endpoint is ready")),
        "{line}"
    );
    daemon.wait_log(log_from, "Triton endpoint down");
    let frames = daemon.frames("cam");
    let later = daemon.wait_status("more samples dropped, frames still flowing", |s| {
        count(s, "unavailable") >= count(&down, "unavailable") + 10
            && s["pipelines"][0]["frames"]["seen"].as_u64() > Some(frames + 10)
    });
    let cam = &later["pipelines"][0];
    assert_eq!(
        (&cam["state"], &cam["restarts"]),
        (&"running".into(), &0.into()),
        "{cam}"
    );
    assert_eq!(
        count(&later, "images"),
        count(&down, "images"),
        "no silent local inference"
    );
    assert_eq!(
        count(&later, "errors"),
        0,
        "an outage is not an error: {later:#}"
    );
    assert_eq!(later["model"]["remote"]["fallback_batches"], 0);
    assert!(daemon.metric("clipfilter_inference_unavailable_total{model=\"oracle-clip\"}") >= 20.0);
    assert_eq!(
        endpoint_metric(&daemon, "clipfilter_triton_endpoint_up", &later),
        [0.0, 0.0]
    );
    assert_eq!(
        daemon.metric("clipfilter_inference_fallback_batches_total{model=\"oracle-clip\"}"),
        0.0
    );

    // One server back on its port: inference resumes, same daemon, same pipeline.
    let log_from = daemon.stderr.len();
    a.restart(&ORACLE_MODELS);
    let back = daemon.wait_status("inference resumed", |s| {
        endpoints(s)[0]["state"] == "ready" && count(s, "images") >= count(&later, "images") + 5
    });
    assert!(
        back["inference"]["unavailable_reason"].is_null(),
        "{back:#}"
    );
    daemon.wait_log(log_from, "inference backend available again");
    let cam = &back["pipelines"][0];
    assert_eq!(
        (&cam["state"], &cam["restarts"]),
        (&"running".into(), &0.into()),
        "{cam}"
    );
    assert_eq!(
        endpoint_metric(&daemon, "clipfilter_triton_endpoint_up", &back),
        [1.0, 0.0]
    );
    assert!(daemon.stop(), "clean exit on SIGTERM");
}

#[test]
fn with_fallback_local_the_daemon_infers_locally_while_no_server_is_up_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let http = util::free_port();
    let nowhere = format!("grpc://127.0.0.1:{}", util::free_port());
    let config = triton_daemon(
        dir.path(),
        http,
        &[nowhere],
        "fallback = \"local\"\nstart_timeout = \"1s\"\n",
    );
    let daemon = Daemon::start(&config, Some(http));
    daemon.wait_log(0, "starting on the local fallback");
    daemon.wait_event(0, "red from the local fallback", red_start);
    let status = daemon.wait_status("the fallback in use", |s| {
        s["model"]["remote"]["fallback_active"] == true
            && s["model"]["remote"]["fallback_batches"].as_u64() > Some(0)
    });
    assert_eq!(status["model"]["remote"]["fallback"], "local");
    assert!(all_in_state(&status, "down"), "{status:#}");
    assert_eq!(count(&status, "unavailable"), 0, "{status:#}");
    daemon.wait_log(0, "running the image tower locally");
    assert_eq!(
        daemon.metric("clipfilter_inference_fallback_active{model=\"oracle-clip\"}"),
        1.0
    );
    assert!(
        daemon.metric("clipfilter_inference_fallback_batches_total{model=\"oracle-clip\"}") > 0.0
    );
    assert_eq!(
        endpoint_metric(&daemon, "clipfilter_triton_endpoint_up", &status),
        [0.0]
    );
    assert!(daemon.stop(), "clean exit on SIGTERM");
}

#[test]
fn the_daemon_reaches_triton_over_tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    triton::certificates(certs.path());
    let repo = tempfile::tempdir().unwrap();
    add_oracle(repo.path());
    let server =
        TritonServer::start_with(repo.path(), &ORACLE_MODELS, &triton::tls_args(certs.path()));
    let dir = tempfile::tempdir().unwrap();
    let http = util::free_port();
    let url = format!("grpcs://127.0.0.1:{}", server.grpc);
    let ca = certs.path().join("ca.pem");
    let config = triton_daemon(
        dir.path(),
        http,
        std::slice::from_ref(&url),
        &format!(
            "tls_ca = {:?}\ntls_domain = \"localhost\"\n",
            ca.display().to_string()
        ),
    );
    let daemon = Daemon::start(&config, Some(http));
    daemon.wait_event(0, "red through Triton over TLS", red_start);
    let status = daemon.wait_status("the endpoint serving", |s| {
        all_in_state(s, "ready") && endpoints(s)[0]["requests"].as_u64() > Some(0)
    });
    assert_eq!(endpoints(&status)[0]["endpoint"], url.as_str());
    assert!(daemon.stop(), "clean exit on SIGTERM");

    // Without the CA the server's certificate is not trusted: the start fails and says why.
    let config = triton_daemon(
        dir.path(),
        http,
        &[url],
        "tls_domain = \"localhost\"\nstart_timeout = \"2s\"\n",
    );
    let out = util::clipfilterd()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("no Triton endpoint became ready"), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}
