//! The metrics and health HTTP server, scraped over real HTTP on 127.0.0.1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clipfilterd::daemon::http::{HttpServer, core_routes};
use clipfilterd::daemon::metrics::{CONTENT_TYPE, FrameCounts, Metrics, PipelineState};

use crate::util::PATIENCE;

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into()
}

/// (status, content type, body) of a GET.
pub(crate) fn get(agent: &ureq::Agent, url: &str) -> (u16, String, String) {
    let mut response = agent.get(url).call().unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.body_mut().read_to_string().unwrap();
    (response.status().as_u16(), content_type, body)
}

#[test]
fn metrics_healthz_and_status_over_http() {
    let metrics = Arc::new(Metrics::new());
    let seen = Arc::new(AtomicU64::new(1000));
    {
        let seen = Arc::clone(&seen);
        metrics.set_frame_source("cam1", move || FrameCounts {
            seen: seen.load(Ordering::Relaxed),
            sampled: 100,
            inferred: 98,
            dropped: 2,
            skipped_by_gate: 40,
        });
    }
    let pipeline = metrics.pipeline("cam1");
    pipeline.set_state(PipelineState::Running);
    pipeline.restarted();
    metrics
        .model("clip-vit-b32")
        .observe_batch(Duration::from_millis(20), 4);
    metrics.set_execution_provider("clip-vit-b32", "cpu");
    metrics.label("cam1", "white van").observe_score(0.3);
    metrics.output("alerts").delivered.inc_by(7);

    let healthy = Arc::new(AtomicBool::new(true));
    let reason = Arc::new(Mutex::new(String::new()));
    let server = {
        let healthy = Arc::clone(&healthy);
        let reason = Arc::clone(&reason);
        HttpServer::start(
            "127.0.0.1:0",
            core_routes(
                Arc::clone(&metrics),
                move || {
                    if healthy.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err(reason.lock().unwrap().clone())
                    }
                },
                || serde_json::json!({ "pipelines": { "cam1": { "state": "running" } } }),
            ),
        )
        .unwrap()
    };
    let base = format!("http://{}", server.local_addr());
    let agent = agent();

    let (status, content_type, body) = get(&agent, &format!("{base}/metrics"));
    assert_eq!(status, 200);
    assert_eq!(content_type, CONTENT_TYPE);
    for line in [
        "clipfilter_frames_seen_total{pipeline=\"cam1\"} 1000",
        "clipfilter_frames_sampled_total{pipeline=\"cam1\"} 100",
        "clipfilter_frames_inferred_total{pipeline=\"cam1\"} 98",
        "clipfilter_frames_dropped_total{pipeline=\"cam1\"} 2",
        "clipfilter_frames_skipped_by_gate_total{pipeline=\"cam1\"} 40",
        "clipfilter_pipeline_state{pipeline=\"cam1\",state=\"running\"} 1",
        "clipfilter_pipeline_state{pipeline=\"cam1\",state=\"starting\"} 0",
        "clipfilter_pipeline_restarts_total{pipeline=\"cam1\"} 1",
        "clipfilter_inference_latency_seconds_count{model=\"clip-vit-b32\"} 1",
        "clipfilter_inference_batch_size_sum{model=\"clip-vit-b32\"} 4.0",
        "clipfilter_execution_provider{model=\"clip-vit-b32\",provider=\"cpu\"} 1",
        "clipfilter_label_score_count{pipeline=\"cam1\",label=\"white van\"} 1",
        "clipfilter_output_events_delivered_total{output=\"alerts\"} 7",
        "# TYPE clipfilter_inference_latency_seconds histogram",
        "# UNIT clipfilter_inference_latency_seconds seconds",
        "# EOF",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    // Scrape-time values are read at each scrape.
    seen.store(1234, Ordering::Relaxed);
    let (_, _, body) = get(&agent, &format!("{base}/metrics?x=1"));
    assert!(body.contains("clipfilter_frames_seen_total{pipeline=\"cam1\"} 1234\n"));

    assert_eq!(
        get(&agent, &format!("{base}/healthz")),
        (200, "text/plain; charset=utf-8".into(), "ok\n".into())
    );
    *reason.lock().unwrap() = "inference worker stalled for 12s".into();
    healthy.store(false, Ordering::SeqCst);
    let (status, _, body) = get(&agent, &format!("{base}/healthz"));
    assert_eq!(
        (status, body.as_str()),
        (503, "inference worker stalled for 12s\n")
    );

    let (status, content_type, body) = get(&agent, &format!("{base}/status"));
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let status_doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_doc["pipelines"]["cam1"]["state"], "running");

    assert_eq!(get(&agent, &format!("{base}/nope")).0, 404);
    let response = agent.post(&format!("{base}/metrics")).send("x").unwrap();
    assert_eq!(response.status().as_u16(), 405);

    server.shutdown();
    // The listening socket is closed once the server's thread ends: nothing answers any more.
    let quick: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    assert!(
        quick.get(&format!("{base}/healthz")).call().is_err(),
        "still serving after shutdown"
    );
}

#[test]
fn a_taken_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = HttpServer::start(
        &addr,
        core_routes(
            Arc::new(Metrics::new()),
            || Ok(()),
            || serde_json::json!({}),
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains(&addr), "{err}");
    assert!(err.is_user_error());
}

const CHILD_FLAG: &str = "CLIPFILTER_TEST_IDLE_CONNECTIONS_CHILD";

/// Threads of this process (Linux).
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// In its own process (so that other tests' threads do not count): opens 500 connections that
/// never send a request, then asks for /healthz, and prints the thread counts.
#[test]
#[ignore = "helper process, run by idle_connections_cost_no_thread_and_do_not_block_requests"]
fn idle_connections_child() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        return;
    }
    let server = HttpServer::start(
        "127.0.0.1:0",
        core_routes(
            Arc::new(Metrics::new()),
            || Ok(()),
            || serde_json::json!({}),
        ),
    )
    .unwrap();
    let addr = server.local_addr();
    let before = thread_count();
    let idle: Vec<std::net::TcpStream> = (0..500)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let (status, _, body) = get(&agent(), &format!("http://{addr}/healthz"));
    println!(
        "IDLE {} STATUS {status} BODY {} THREADS {before} {}",
        idle.len(),
        body.trim(),
        thread_count()
    );
    drop(idle);
    server.shutdown();
}

#[test]
fn idle_connections_cost_no_thread_and_do_not_block_requests() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "daemon_http::idle_connections_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FLAG, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("IDLE ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no report from the child:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    // 500 STATUS 200 BODY ok THREADS <before> <after>
    assert_eq!(
        &words[..5],
        ["500", "STATUS", "200", "BODY", "ok"],
        "{line}"
    );
    let (before, after): (usize, usize) = (words[6].parse().unwrap(), words[7].parse().unwrap());
    assert!(
        after < before + 8,
        "500 idle connections took {} threads",
        after.saturating_sub(before)
    );
}

/// Label names are any text a label set holds: on `/metrics` each stays inside its label value
/// (escaped as the exposition format says), and a real parser reads the page back.
#[test]
fn hostile_label_names_stay_inside_their_label_values() {
    use crate::util::daemon::{Daemon, Sample, config_head, parse_metrics};
    let hostile = [
        "red\"} 99\nclipfilter_injected 1\n#",
        "green \\ back\\slash \"quoted\"",
        "blue\nsecond line",
    ];
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.toml");
    let mut set = String::from("[defaults]\ntemplates = \"none\"\n");
    for (name, prompt) in hostile.iter().zip(["red", "green", "blue"]) {
        // Rust's `{:?}` of these strings is a valid TOML basic string.
        set.push_str(&format!(
            "\n[[label]]\nname = {name:?}\nprompts = [{prompt:?}]\n"
        ));
    }
    std::fs::write(&labels, set).unwrap();
    let http = crate::util::free_port();
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(
        &config,
        format!(
            "{}
[[pipeline]]
name = \"cam\"
launch = \"videotestsrc is-live=true pattern=red ! video/x-raw,width=64,height=64,framerate=10/1\"
interval = \"200ms\"
labels = \"{}\"
",
            config_head(&dir.path().join("state"), http),
            labels.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, Some(http));
    daemon.wait_event(0, "a match of the red label", |e| {
        e["label"] == hostile[0] && e["state"] == "start"
    });
    let page = daemon.get("/metrics");
    let samples = parse_metrics(&page).unwrap_or_else(|e| panic!("{e}\n{page}"));
    assert!(
        samples.iter().all(
            |s| s.name.starts_with("clipfilter_") && !s.name.starts_with("clipfilter_injected")
        ),
        "{samples:?}"
    );
    let scored: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "clipfilter_label_score_count" && s.labels["pipeline"] == "cam")
        .map(|s| s.labels["label"].as_str())
        .collect();
    let expected: std::collections::BTreeSet<&str> = hostile.into_iter().collect();
    assert_eq!(scored, expected, "{page}");
    let matched: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "clipfilter_label_matches_total" && s.value >= 1.0)
        .collect();
    assert!(
        matched.len() == 1 && matched[0].labels["label"] == hostile[0],
        "{matched:?}"
    );
    assert!(daemon.stop());
}
