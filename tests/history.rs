//! The sample history: recorded by a real daemon on the oracle model from generated colour
//! videos, searched and backtested by the real commands and over HTTP; retention, crashes and
//! bad input.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::daemon::{Daemon, config_head, make_clip, mean_colour};
use crate::util::{PATIENCE, clipfilterd, free_port, model, oracle};
use clipfilterd::history::backtest::Window;
use clipfilterd::history::{
    History, Limits, ModelInfo, Record, SampleRecord, Writer, query, review,
};

const INTERVAL: f64 = 0.25;

const LABELS: &str = r#"
[defaults]
min_probability = 0.5

[[label]]
name = "red"

[[label]]
name = "green"

[[label]]
name = "blue"
"#;

fn cli(args: &[&str]) -> Output {
    clipfilterd()
        .args(args)
        .env("CLIPFILTER_LOG", "warn")
        .output()
        .expect("clipfilterd runs")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

fn http(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        (_, Some(b)) => agent.post(&url).send(b),
        (_, None) => agent.post(&url).send_empty(),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

/// Ranges of `pipeline` sorted by stream time: (start, end) in seconds.
fn ranges(found: &Value, pipeline: &str) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = found["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pipeline"] == pipeline)
        .map(|r| {
            (
                r["start_stream_time"].as_f64().unwrap(),
                r["end_stream_time"].as_f64().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Each found range covers exactly one expected segment [from, to), within one interval.
fn assert_segments(found: &Value, pipeline: &str, want: &[(f64, f64)]) {
    let got = ranges(found, pipeline);
    assert_eq!(
        got.len(),
        want.len(),
        "{pipeline}: {got:?} vs {want:?}\n{found:#}"
    );
    for ((s, e), (from, to)) in got.iter().zip(want) {
        assert!(
            *s >= *from - 1e-6 && *s <= from + INTERVAL + 1e-6,
            "{pipeline}: range starts at {s}, segment at {from}"
        );
        assert!(
            *e < *to && *e >= to - INTERVAL - 0.1 - 1e-6,
            "{pipeline}: range ends at {e}, segment at {to}"
        );
    }
}

struct Recorded {
    _dir: tempfile::TempDir,
    config: PathBuf,
    labels: PathBuf,
    daemon: Daemon,
    port: u16,
    state: PathBuf,
}

/// A daemon that played two colour clips to their end, with the history on.
fn record() -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let a = dir.path().join("a.mp4");
    let b = dir.path().join("b.mp4");
    // cam-a: red 0-2 s, green 2-4, blue 4-6, red 6-8, white 8-10; cam-b: green 0-3, red 3-4.
    make_clip(
        &a,
        &[
            ("red", 20),
            ("green", 20),
            ("blue", 20),
            ("red", 20),
            ("white", 20),
        ],
    );
    make_clip(&b, &[("green", 30), ("red", 10)]);
    let labels = dir.path().join("labels.toml");
    std::fs::write(&labels, LABELS).unwrap();
    let port = free_port();
    let mut text = config_head(&state, port);
    for (name, clip) in [("cam-a", &a), ("cam-b", &b)] {
        text.push_str(&format!(
            "\n[[pipeline]]\nname = \"{name}\"\nsource = \"{}\"\ninterval = \"250ms\"\nlabels = \"{}\"\nsnapshots = false\n",
            clip.display(),
            labels.display()
        ));
    }
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(port));
    for name in ["cam-a", "cam-b"] {
        daemon.wait_pipeline(name, "finished", |p| p["finished"] == true);
    }
    // The recorder writes at least every 250 ms.
    std::thread::sleep(Duration::from_millis(800));
    Recorded {
        _dir: dir,
        config,
        labels,
        daemon,
        port,
        state,
    }
}

#[test]
fn search_and_backtest_a_recorded_history() {
    let r = record();
    let config = r.config.to_str().unwrap();

    // Over HTTP while the daemon runs.
    let (status, found) = http(r.port, "GET", "/api/search?q=red", None);
    assert_eq!(status, 200, "{found}");
    assert_segments(&found, "cam-a", &[(0.0, 2.0), (6.0, 8.0)]);
    assert_segments(&found, "cam-b", &[(3.0, 4.0)]);
    let (_, green) = http(r.port, "GET", "/api/search?q=green&pipeline=cam-b", None);
    assert_segments(&green, "cam-b", &[(0.0, 3.0)]);
    assert!(ranges(&green, "cam-a").is_empty(), "{green}");
    let (status, bad) = http(r.port, "GET", "/api/search?q=red&since=whenever", None);
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("whenever"), "{bad}");

    // The command line, per pipeline, with --since.
    let out = cli(&[
        "search",
        "blue",
        "--config",
        config,
        "--json",
        "--pipeline",
        "cam-a",
    ]);
    let blue = stdout_json(&out);
    assert_segments(&blue, "cam-a", &[(4.0, 6.0)]);
    let thumb = blue["ranges"][0]["thumbnail"]
        .as_str()
        .expect("a thumbnail path");
    let [red, green_, b] = mean_colour(Path::new(thumb));
    assert!(
        b > 150.0 && red < 80.0 && green_ < 80.0,
        "thumbnail colour {red} {green_} {b}"
    );
    let first_red_end = ranges(&found, "cam-a")[0];
    let first_end_ms = found["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["pipeline"] == "cam-a" && x["start_stream_time"].as_f64() == Some(first_red_end.0)
        })
        .unwrap()["end_ms"]
        .as_i64()
        .unwrap();
    let since = clipfilterd::history::time::format_ms(first_end_ms + 1000);
    let later = stdout_json(&cli(&[
        "search",
        "red",
        "--config",
        config,
        "--json",
        "--pipeline",
        "cam-a",
        "--since",
        &since,
    ]));
    assert_segments(&later, "cam-a", &[(6.0, 8.0)]);
    let text = cli(&["search", "red", "--config", config, "--pipeline", "cam-b"]);
    assert!(text.status.success());
    let line = String::from_utf8_lossy(&text.stdout);
    assert!(
        line.starts_with("cam-b  ") && line.contains("thumbnail"),
        "{line}"
    );

    // By example image.
    let red_png = r.state.join("red.png");
    image::RgbImage::from_pixel(32, 24, image::Rgb([250, 5, 5]))
        .save(&red_png)
        .unwrap();
    let by_image = stdout_json(&cli(&[
        "search",
        "--image",
        red_png.to_str().unwrap(),
        "--config",
        config,
        "--json",
    ]));
    assert_segments(&by_image, "cam-a", &[(0.0, 2.0), (6.0, 8.0)]);
    let (status, over_http) = http(
        r.port,
        "POST",
        "/api/search?pipeline=cam-b",
        Some(&std::fs::read(&red_png).unwrap()),
    );
    assert_eq!(status, 200, "{over_http}");
    assert_segments(&over_http, "cam-b", &[(3.0, 4.0)]);

    // Backtest with the live set: the live events, exactly.
    let live = stdout_json(&cli(&[
        "backtest",
        "--labels",
        r.labels.to_str().unwrap(),
        "--config",
        config,
        "--json",
    ]));
    assert_eq!(live["summary"]["changed"], 0, "{live:#}");
    assert_eq!(live["summary"]["added"], 0, "{live:#}");
    assert_eq!(live["summary"]["removed"], 0, "{live:#}");
    assert_eq!(live["summary"]["same"], 6, "{live:#}");
    assert_eq!(live["rescored_cosines"], 0, "every cosine is the live one");
    let events = r.daemon.events();
    let mut from_events: Vec<(String, String, String, u64, f64)> = events
        .iter()
        .map(|e| {
            (
                e["pipeline"].as_str().unwrap().to_string(),
                e["label"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
                e["frame"].as_u64().unwrap(),
                e["score"].as_f64().unwrap(),
            )
        })
        .collect();
    let mut replayed: Vec<(String, String, String, u64, f64)> = Vec::new();
    for e in live["episodes"].as_array().unwrap() {
        for (state, b) in [("start", &e["start"]), ("end", &e["end"])] {
            replayed.push((
                e["pipeline"].as_str().unwrap().to_string(),
                e["label"].as_str().unwrap().to_string(),
                state.to_string(),
                b["frame"].as_u64().unwrap(),
                // Ends at the end of a stream carry no score of their own.
                if b["reason"] == "sample" {
                    b["score"].as_f64().unwrap()
                } else {
                    -1.0
                },
            ));
        }
    }
    for e in &mut from_events {
        let reason_sample = events.iter().any(|x| {
            x["pipeline"] == e.0.as_str() && x["label"] == e.1.as_str() && x["frame"] == e.3
        });
        assert!(reason_sample);
    }
    // Events at the end of the stream: compare without their score.
    let eos: Vec<u64> = replayed.iter().filter(|x| x.4 < 0.0).map(|x| x.3).collect();
    for e in &mut from_events {
        if e.2 == "end" && eos.contains(&e.3) {
            e.4 = -1.0;
        }
    }
    from_events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    replayed.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let round = |v: Vec<(String, String, String, u64, f64)>| {
        v.into_iter()
            .map(|(p, l, s, f, sc)| (p, l, s, f, (sc * 1e5).round() as i64))
            .collect::<Vec<_>>()
    };
    assert_eq!(round(replayed), round(from_events));

    // A changed hysteresis and a new label.
    let changed = r.state.join("changed.toml");
    std::fs::write(
        &changed,
        LABELS.replace("name = \"red\"", "name = \"red\"\nenter = 3")
            + "\n[[label]]\nname = \"white\"\n",
    )
    .unwrap();
    let report = stdout_json(&cli(&[
        "backtest",
        "--labels",
        changed.to_str().unwrap(),
        "--config",
        config,
        "--json",
    ]));
    assert_eq!(report["summary"]["changed"], 3, "{report:#}");
    assert_eq!(report["summary"]["added"], 1, "{report:#}");
    assert_eq!(report["summary"]["removed"], 0, "{report:#}");
    let added = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["difference"] == "added")
        .unwrap();
    assert_eq!(added["label"], "white");
    assert_eq!(added["pipeline"], "cam-a");
    let start = added["new"]["start"]["stream_time"].as_f64().unwrap();
    assert!((8.0..8.0 + INTERVAL + 1e-6).contains(&start), "{added}");
    for d in report["differences"].as_array().unwrap() {
        if d["difference"] == "changed" {
            assert_eq!(d["label"], "red");
            let (new, live) = (
                d["new"]["start"]["stream_time"].as_f64().unwrap(),
                d["live"]["start"]["stream_time"].as_f64().unwrap(),
            );
            // Two samples later (samples fall on the first frame past each 250 ms step).
            assert!((new - live - 2.0 * INTERVAL).abs() < 0.11, "{d}");
        }
    }
    let (status, over_http) = http(
        r.port,
        "POST",
        "/api/backtest?pipeline=cam-a",
        Some(std::fs::read(&changed).unwrap().as_slice()),
    );
    assert_eq!(status, 200, "{over_http}");
    assert_eq!(over_http["summary"]["changed"], 2, "{over_http:#}");
    assert_eq!(over_http["summary"]["added"], 1, "{over_http:#}");
    let (status, broken) = http(
        r.port,
        "POST",
        "/api/backtest",
        Some(b"[[label]]\nnom = 1\n"),
    );
    assert_eq!(status, 400, "{broken}");

    // Review marks, by event and by sample; they outlive the daemon.
    let start_event = events.iter().find(|e| e["state"] == "start").unwrap();
    let body = serde_json::json!({"event": start_event["id"], "label": start_event["label"], "verdict": "true_positive"});
    let (status, mark) = http(
        r.port,
        "POST",
        "/api/review",
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(status, 201, "{mark}");
    assert!(mark["sample"].as_i64().is_some(), "{mark}");
    let sample = found["ranges"][0]["sample"].as_i64().unwrap();
    let body = serde_json::json!({"sample": sample, "label": "red", "verdict": "false_positive", "note": "a red car"});
    let (status, _) = http(
        r.port,
        "POST",
        "/api/review",
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(status, 201);
    let (status, bad) = http(
        r.port,
        "POST",
        "/api/review",
        Some(br#"{"label": "red", "verdict": "true_positive"}"#),
    );
    assert_eq!(status, 400, "{bad}");
    let (_, listed) = http(r.port, "GET", "/api/reviews", None);
    assert_eq!(listed["reviews"].as_array().unwrap().len(), 2, "{listed}");

    let metrics = r.daemon.get("/metrics");
    let stored: f64 = metrics
        .lines()
        .find(|l| l.starts_with("clipfilter_history_samples_stored_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no stored counter:\n{metrics}"));
    // 10 s and 4 s at 4 samples per second.
    assert!((50.0..=60.0).contains(&stored), "{stored}");
    assert!(metrics.contains("clipfilter_history_paused 0"), "{metrics}");
    assert!(r.daemon.stop());

    let history = History::open(&r.state.join("history")).unwrap();
    let marks = review::list(&history, None).unwrap();
    assert_eq!(marks.len(), 2);
    assert_eq!(marks[1].note.as_deref(), Some("a red car"));
    let e = marks[1]
        .embedding
        .as_ref()
        .expect("the mark keeps the embedding");
    assert!(e[0] > 0.95, "red dimension of the oracle: {e:?}");
}

fn oracle_model() -> (clipfilter::engine::Engine, ModelInfo) {
    let engine =
        clipfilter::engine::Engine::load(&clipfilter::engine::EngineConfig::new(oracle())).unwrap();
    let info = ModelInfo {
        fingerprint: engine.image_fingerprint().unwrap(),
        dir: oracle().display().to_string(),
        variant: "fp32".into(),
        dim: engine.dim(),
    };
    (engine, info)
}

fn sample(pipeline: &str, time_ms: i64, colour: usize, thumbnail: Option<Vec<u8>>) -> Record {
    let mut e = vec![0.0f32; 10];
    e[colour] = 1.0;
    e[9] = 0.05;
    let n = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    e.iter_mut().for_each(|x| *x /= n);
    Record::Sample(SampleRecord {
        pipeline: pipeline.into(),
        epoch: 1,
        time_ms,
        pts: Some(time_ms * 1_000_000),
        stream_time: Some(time_ms * 1_000_000),
        running_time: None,
        frame: time_ms as u64,
        embedding: Some(e),
        labels_version: "v".into(),
        scores: vec![0.5],
        thumbnail,
        crop: None,
    })
}

#[test]
fn retention_holds_by_bytes_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = oracle_model();
    let limits = Limits {
        keep: Some(Duration::from_secs(3600)),
        max_bytes: 1 << 20,
    };
    let mut w = Writer::open(dir.path(), limits).unwrap();
    let now = clipfilterd::history::record::now_ms();
    let jpeg = vec![0xAB; 4096];
    // Two hours of samples, 2 per second at first, far past both limits.
    let start = now - 2 * 3600 * 1000;
    let mut batch = vec![Record::Model(model)];
    for i in 0..(2 * 3600 * 2) {
        batch.push(sample(
            "cam",
            start + i * 500,
            (i % 3) as usize,
            Some(jpeg.clone()),
        ));
        if batch.len() >= 1000 {
            w.write(&batch).unwrap();
            batch.clear();
            w.retain(now).unwrap();
        }
    }
    w.write(&batch).unwrap();
    let usage = w.retain(now).unwrap();
    assert!(usage.bytes <= limits.max_bytes, "{usage:?}");
    assert!(usage.samples > 50, "{usage:?}");
    let oldest = usage.oldest_ms.unwrap();
    assert!(
        oldest >= now - 3600 * 1000,
        "kept beyond an hour: {}",
        now - oldest
    );
    let on_disk: u64 = walk(dir.path());
    assert!(on_disk <= limits.max_bytes, "{on_disk} bytes on disk");

    // By age alone: a generous byte bound, samples older than keep go.
    let dir2 = tempfile::tempdir().unwrap();
    let (_, model) = oracle_model();
    let mut w = Writer::open(
        dir2.path(),
        Limits {
            keep: Some(Duration::from_secs(600)),
            max_bytes: 1 << 30,
        },
    )
    .unwrap();
    let mut batch = vec![Record::Model(model)];
    for i in 0..1200 {
        batch.push(sample("cam", now - 1200 * 1000 + i * 1000, 0, None));
    }
    w.write(&batch).unwrap();
    let usage = w.retain(now).unwrap();
    assert!((595..=601).contains(&usage.samples), "{usage:?}");
    assert!(usage.oldest_ms.unwrap() >= now - 600 * 1000);
}

fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() { walk(&e.path()) } else { m.len() }
        })
        .sum()
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let (engine, model) = oracle_model();
    let mut w = Writer::open(
        &history,
        Limits {
            keep: None,
            max_bytes: 1 << 30,
        },
    )
    .unwrap();
    w.write(&[Record::Model(model), sample("cam", 1_000, 0, None)])
        .unwrap();
    drop(w);
    // The library answers the same question the command asks.
    let found = query::search(
        &History::open(&history).unwrap(),
        &engine,
        &query::SearchRequest {
            text: Some("red".into()),
            top: 5,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(found.ranges.len(), 1);

    let h = history.to_str().unwrap();
    let not_image = dir.path().join("photo.jpg");
    std::fs::write(&not_image, b"not an image at all").unwrap();
    let labels = dir.path().join("bad.toml");
    std::fs::write(&labels, "[[label]]\nname = \"a\"\ncolour = 1\n").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["search", "red", "--history", h, "--pipeline", "nope"],
            "`nope`",
        ),
        (vec!["search", "", "--history", h], "empty"),
        (
            vec!["search", "red", "--history", h, "--since", "last tuesday"],
            "last tuesday",
        ),
        (
            vec![
                "search",
                "red",
                "--state-dir",
                empty.path().to_str().unwrap(),
            ],
            "no sample history",
        ),
        (
            vec![
                "search",
                "--image",
                not_image.to_str().unwrap(),
                "--history",
                h,
            ],
            "not a readable image",
        ),
        (
            vec![
                "backtest",
                "--labels",
                labels.to_str().unwrap(),
                "--history",
                h,
            ],
            "colour",
        ),
    ];
    for (args, want) in cases {
        let out = cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    for (version, word) in [("0", "older"), ("2", "newer")] {
        let conn = rusqlite::Connection::open(history.join("index.sqlite3")).unwrap();
        conn.execute("UPDATE info SET value = ?1 WHERE key = 'format'", [version])
            .unwrap();
        drop(conn);
        let out = cli(&["search", "red", "--history", h]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(word) && err.contains(&format!("version {version}")),
            "{err}"
        );
    }
}

#[test]
fn kill_9_during_writes_leaves_a_history_that_opens_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut text = config_head(&state, port);
    for (name, colour) in [("live-red", "red"), ("live-green", "green")] {
        text.push_str(&format!(
            "\n[[pipeline]]\nname = \"{name}\"\nlaunch = \"videotestsrc is-live=true pattern={colour} ! video/x-raw,width=64,height=64,framerate=20/1\"\ninterval = \"50ms\"\nscene_gate = 0.0\nprompts = [\"red\", \"green\", \"blue\"]\nsnapshots = false\n"
        ));
    }
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(port));
    // Serving first (the metrics below are read in a loop without waiting).
    daemon.status();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = daemon.get("/metrics");
        let stored = m
            .lines()
            .find(|l| l.starts_with("clipfilter_history_samples_stored_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if stored >= 100.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "too few samples stored: {stored}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let killed_at = clipfilterd::history::record::now_ms();
    daemon.signal("KILL");
    drop(daemon);
    let history = state.join("history");
    let h = History::open(&history).unwrap();
    let newest: i64 = {
        let samples = h.pipelines().unwrap();
        assert_eq!(samples.len(), 2);
        rusqlite::Connection::open(history.join("index.sqlite3"))
            .unwrap()
            .query_row("SELECT max(time_ms) FROM samples", [], |r| r.get(0))
            .unwrap()
    };
    // At most the last second is lost (with slack for a loaded machine).
    assert!(
        killed_at - newest < 1500,
        "newest sample {} ms before the kill",
        killed_at - newest
    );
    drop(h);
    let out = cli(&[
        "search",
        "red",
        "--history",
        history.to_str().unwrap(),
        "--json",
    ]);
    let found = stdout_json(&out);
    assert_eq!(found["ranges"][0]["pipeline"], "live-red", "{found}");
    // A writer opening it again cuts off what was not committed and goes on.
    let mut w = Writer::open(
        &history,
        Limits {
            keep: None,
            max_bytes: 1 << 30,
        },
    )
    .unwrap();
    let (_, model) = oracle_model();
    w.write(&[
        Record::Model(model),
        sample("live-red", killed_at + 10, 0, None),
    ])
    .unwrap();
}

/// Mounts a small tmpfs on `dir` (the tests run as root; a refused mount fails the test).
fn tmpfs(dir: &Path, size: &str, read_only: bool) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let mut opts = format!("size={size}");
    if read_only {
        opts.push_str(",ro");
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .output()
        .expect("mount runs");
    assert!(
        out.status.success(),
        "cannot mount a tmpfs on {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Mount(dir.to_path_buf())
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_or_read_only_history_pauses_without_stopping_events() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let full = dir.path().join("full");
    let _mount = tmpfs(&full, "2m", false);
    let ro = dir.path().join("ro");
    let _ro_mount = tmpfs(&ro, "1m", true);
    // Most of the small tmpfs is taken by a file the test deletes later.
    let filler = full.join("filler");
    std::fs::write(&filler, vec![0u8; 1536 << 10]).unwrap();
    let clip = dir.path().join("cycle.mp4");
    make_clip(&clip, &[("red", 5), ("green", 5)]);
    for (history_dir, expect_resume) in [(&full, true), (&ro, false)] {
        let port = free_port();
        let text = format!(
            "{}\n[history]\ndir = \"{}\"\nmax_bytes = \"64MiB\"\n\n[[pipeline]]\nname = \"cycle\"\nsource = \"{}\"\nloop = true\ninterval = \"100ms\"\nprompts = [\"red\", \"green\"]\nsnapshots = false\n",
            config_head(&state, port),
            history_dir.join("history").display(),
            clip.display()
        );
        let config = dir.path().join("clipfilterd.toml");
        std::fs::write(&config, text).unwrap();
        let daemon = Daemon::start(&config, Some(port));
        let (at, _) = daemon.wait_log(0, "sample history paused");
        // Events go on: two more starts after the pause.
        let n = daemon.events().len();
        daemon.wait_event(n, "an event after the pause", |e| e["state"] == "start");
        daemon.wait_event(n + 1, "another event after the pause", |e| {
            e["state"] == "start"
        });
        let m = daemon.get("/metrics");
        assert!(m.contains("clipfilter_history_paused 1"), "{m}");
        assert_eq!(
            daemon
                .stderr
                .all()
                .iter()
                .filter(|l| l.contains("sample history paused"))
                .count(),
            1,
            "one warning"
        );
        if expect_resume {
            std::fs::remove_file(&filler).unwrap();
            daemon.wait_log(at, "sample history resumed");
            let m = daemon.get("/metrics");
            assert!(m.contains("clipfilter_history_paused 0"), "{m}");
        }
        assert!(daemon.stop());
    }
}

#[test]
fn the_element_posts_embeddings_frames_and_its_label_set() {
    use gst::prelude::*;
    clipfilterd::gstreamer::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc pattern=red num-buffers=3 ! video/x-raw,width=32,height=32 ! clipfilter name=f model={} prompts=red;green interval=0 mode=sync post-scores=true post-embedding=true post-frame=true ! fakesink",
        oracle().display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut scores = Vec::new();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{}", e.error()),
            _ => {
                if let Some(Ok(gstclipfilter::clipfilter::messages::Message::Scores(s))) =
                    gstclipfilter::clipfilter::messages::Message::parse(&msg)
                {
                    scores.push(s);
                }
            }
        }
    }
    let element = pipeline.by_name("f").unwrap();
    let info: clipfilter::labels::LabelSetInfo =
        serde_json::from_str(&element.property::<Option<String>>("label-set").unwrap()).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(scores.len(), 3);
    for s in &scores {
        let e = s.embedding.as_ref().expect("an embedding");
        assert_eq!(e.len(), 10);
        assert!(e[0] > 0.99 && e[1].abs() < 1e-3, "{e:?}");
        assert!(s.image.is_some(), "the sampled frame");
        assert_eq!(s.labels_version, info.version);
    }
    assert_eq!(info.labels.len(), 2);
    assert_eq!(info.labels[0].name, "red");
}

#[test]
fn text_embeddings_are_cached_on_disk_across_encoders() {
    use clipfilter::encoder::cache::DiskCache;
    use clipfilter::encoder::{SessionConfig, TextEncoder};
    use clipfilter::model::{ModelDir, Variant};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(DiskCache::open(dir.path()).unwrap());
    let model = ModelDir::open(model("oracle-clip"), Variant::Fp32).unwrap();
    let texts: Vec<String> = (0..300)
        .map(|i| format!("a red thing number {i}"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut first = TextEncoder::load(&model, &SessionConfig::default()).unwrap();
    first.set_disk_cache(cache.clone(), "oracle".into());
    let a = first.embed(&refs).unwrap();
    let mut second = TextEncoder::load(&model, &SessionConfig::default()).unwrap();
    second.set_disk_cache(cache.clone(), "oracle".into());
    let b = second.embed(&refs).unwrap();
    assert_eq!(a, b);
    // Another model key misses (and computes the same numbers here: same tower).
    let mut third = TextEncoder::load(&model, &SessionConfig::default()).unwrap();
    third.set_disk_cache(cache, "another model".into());
    assert_eq!(third.embed(&refs).unwrap(), a);
    let rows: i64 = rusqlite::Connection::open(dir.path().join("embeddings.sqlite3"))
        .unwrap()
        .query_row("SELECT count(*) FROM embeddings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 600);
    let _ = Window::default();
}

/// `calibrate --from-reviews`: review marks posted to the running daemon (POST /api/review) on
/// the samples of the recorded clips, by what the clip showed at each sample's stream time; the
/// thresholds come from the marks' stored embeddings, scored as the live matcher scores them,
/// and --write rewrites the label file. Bad input: no history, no marks in the window, too few
/// marks for the precision, another model, marks of a label the file lacks.
#[test]
fn calibrate_from_review_marks() {
    let r = record();
    let history_dir = r.state.join("history");
    // What each clip shows at a stream time (s); None within 0.15 s of a change.
    let shown = |pipeline: &str, t: f64| -> Option<&'static str> {
        let plan: &[(f64, &str)] = if pipeline == "cam-a" {
            &[
                (0.0, "red"),
                (2.0, "green"),
                (4.0, "blue"),
                (6.0, "red"),
                (8.0, "white"),
            ]
        } else {
            &[(0.0, "green"), (3.0, "red")]
        };
        if plan.iter().skip(1).any(|(at, _)| (t - at).abs() < 0.15) {
            return None;
        }
        plan.iter().rev().find(|(at, _)| t >= *at).map(|(_, c)| *c)
    };
    let history = History::open(&history_dir).unwrap();
    let mut marked = 0;
    let mut positives = [0usize; 2];
    for id in 1..400 {
        let Some(s) = history.sample(id).unwrap() else {
            continue;
        };
        let Some(colour) = shown(&s.pipeline, s.stream_time.unwrap() as f64 / 1e9) else {
            continue;
        };
        for (k, label) in ["red", "green"].into_iter().enumerate() {
            // All four verdicts: positives are true positives (cam-a) or false negatives
            // (cam-b), negatives false positives (the other label's colour) or true negatives.
            let verdict = match (colour == label, s.pipeline.as_str()) {
                (true, "cam-a") => "true_positive",
                (true, _) => "false_negative",
                (false, _) if colour == "red" || colour == "green" => "false_positive",
                (false, _) => "true_negative",
            };
            positives[k] += usize::from(colour == label);
            let body = serde_json::json!({"sample": id, "label": label, "verdict": verdict});
            let (status, mark) = http(
                r.port,
                "POST",
                "/api/review",
                Some(body.to_string().as_bytes()),
            );
            assert_eq!(status, 201, "{mark}");
            marked += 1;
        }
    }
    assert!(positives.iter().all(|n| *n >= 10), "{positives:?}");
    let after_marks = jiff::Timestamp::now().to_string();

    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("calibrated.toml");
    let original = "# thresholds to calibrate\n[[label]]\nname = \"red\"\nmin_cosine = 0.2   # raw cosine\n\n[[label]]\nname = \"green\"\nmin_probability = 0.3\n\n[[label]]\nname = \"blue\"\nnegative = true\n";
    std::fs::write(&labels, original).unwrap();
    let oracle = oracle();
    let calibrate = |extra: &[&str]| {
        let mut args = vec![
            "calibrate",
            "-m",
            oracle.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--from-reviews",
            "--history",
            history_dir.to_str().unwrap(),
            "--no-plots",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let out = calibrate(&["--precision", "0.9", "--write", "--json"]);
    let report = stdout_json(&out);
    assert_eq!(report["reviews"]["used"], marked, "{report:#}");
    assert_eq!(report["written"], true, "{report:#}");
    let rows = report["labels"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the negative label is not calibrated: {report:#}"
    );
    for (row, kind, n) in [
        (&rows[0], "cosine", positives[0]),
        (&rows[1], "probability", positives[1]),
    ] {
        assert_eq!(row["score"], kind, "{row}");
        assert_eq!(row["positives"], n, "{row}");
        assert!(row["precision"].as_f64().unwrap() >= 0.9, "{row}");
        assert!(
            row["recall"].as_f64().unwrap() > 0.9,
            "the oracle separates colours: {row}"
        );
    }
    let written = std::fs::read_to_string(&labels).unwrap();
    let numbers_out = |t: &str| -> String {
        t.chars()
            .map(|c| {
                if c.is_ascii_digit() || c == '.' {
                    '#'
                } else {
                    c
                }
            })
            .collect::<String>()
            .split('#')
            .collect()
    };
    assert_eq!(
        numbers_out(&written),
        numbers_out(original),
        "only the numbers change:\n{written}"
    );
    let parsed: toml::Table = written.parse().unwrap();
    let value = |i: usize, key: &str| parsed["label"][i][key].as_float().unwrap();
    for (i, key, before) in [(0, "min_cosine", 0.2), (1, "min_probability", 0.3)] {
        let after = rows[i]["after"].as_f64().unwrap();
        assert!(
            (value(i, key) - after).abs() < 1e-6,
            "{written}\n{report:#}"
        );
        assert!((after - before).abs() > 1e-3, "{report:#}");
    }
    // The table names the marks it used.
    let out = calibrate(&[]);
    let (stdout, _) = crate::util::text(&out);
    assert!(
        stdout.contains(&format!("reviews: {marked} of {marked} marks")),
        "{stdout}"
    );

    let fails = |out: Output, want: &str| {
        let (stdout, stderr) = crate::util::text(&out);
        assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
        assert!(stderr.contains(want), "want `{want}`:\n{stderr}");
    };
    // Too few marks for precision 0.99 (100 positives): each label fails, same rule as examples.
    fails(calibrate(&["--precision", "0.99"]), "too few examples");
    fails(
        calibrate(&["--since", &after_marks]),
        &format!("no review marks since {after_marks}"),
    );
    fails(
        cli(&[
            "calibrate",
            "-m",
            model("digits").to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--from-reviews",
            "--history",
            history_dir.to_str().unwrap(),
        ]),
        "embedded by another model",
    );
    fails(
        cli(&[
            "calibrate",
            "-m",
            oracle.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--from-reviews",
            "--history",
            dir.path().join("none").to_str().unwrap(),
        ]),
        "no sample history here",
    );
    let body = serde_json::json!({"sample": 1, "label": "yellow", "verdict": "true_positive"});
    let (status, _) = http(
        r.port,
        "POST",
        "/api/review",
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(status, 201);
    fails(calibrate(&[]), "label `yellow` is not in");
    assert!(r.daemon.stop());
}

/// `calibrate --from-reviews` on the digits model, whose scores overlap: its training pictures
/// played as a lossless video (RGB in Matroska, one picture per 250 ms sample) by a real daemon,
/// each sample marked over HTTP as its picture's folder says (true_positive for its digit,
/// true_negative for the others). Calibrating on those marks gives what calibrating on the
/// pictures themselves gives: the same examples per label, thresholds within 0.01, both at the
/// asked precision.
#[test]
fn calibrate_from_reviews_of_the_digits_agrees_with_calibrate_on_their_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let digits = model("digits");
    let train = digits.join("examples").join("train");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    // A lead-in frame first: the first frame of a stream is not always sampled.
    std::fs::copy(
        train.join("none").join("000-zero.png"),
        frames.join("0000.png"),
    )
    .unwrap();
    let mut shown: Vec<&str> = vec!["lead-in"];
    for folder in ["three", "seven", "eight", "none"] {
        let mut pictures: Vec<PathBuf> = std::fs::read_dir(train.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        pictures.sort();
        for p in pictures {
            std::fs::copy(&p, frames.join(format!("{:04}.png", shown.len()))).unwrap();
            shown.push(folder);
        }
    }
    let video = dir.path().join("digits.mkv");
    crate::util::daemon::run_to_eos(
        &format!(
            "imagesequencesrc location={}/%04d.png start-index=0 stop-index={} framerate=4/1 ! pngdec ! videoconvert ! video/x-raw,format=RGB ! matroskamux ! filesink location={}",
            frames.display(),
            shown.len() - 1,
            video.display()
        ),
        &video,
    );
    let labels = dir.path().join("labels.toml");
    std::fs::copy(digits.join("labels.toml"), &labels).unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let text = config_head(&state, port).replace(
        &format!("path = \"{}\"", oracle().display()),
        &format!("path = \"{}\"", digits.display()),
    ) + &format!(
        "\n[[pipeline]]\nname = \"digits\"\nsource = \"{}\"\ninterval = \"250ms\"\nlabels = \"{}\"\nsnapshots = false\n",
        video.display(),
        labels.display()
    );
    assert!(text.contains(&digits.display().to_string()), "{text}");
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(port));
    daemon.wait_pipeline("digits", "finished", |p| p["finished"] == true);
    std::thread::sleep(Duration::from_millis(800));

    let history_dir = state.join("history");
    let history = History::open(&history_dir).unwrap();
    let mut sampled = vec![0; shown.len()];
    for id in 1..1000 {
        let Some(s) = history.sample(id).unwrap() else {
            continue;
        };
        let i = (s.stream_time.unwrap() as f64 / 0.25e9).round() as usize;
        sampled[i] += 1;
        if i == 0 {
            continue;
        }
        for label in ["three", "seven", "eight"] {
            let verdict = if shown[i] == label {
                "true_positive"
            } else {
                "true_negative"
            };
            let body = serde_json::json!({"sample": id, "label": label, "verdict": verdict});
            let (status, mark) = http(
                port,
                "POST",
                "/api/review",
                Some(body.to_string().as_bytes()),
            );
            assert_eq!(status, 201, "{mark}");
        }
    }
    assert!(
        sampled[1..].iter().all(|n| *n == 1),
        "one sample per picture: {sampled:?}"
    );
    assert!(daemon.stop());

    let calibrate = |source: &[&str]| {
        let mut args = vec![
            "calibrate",
            "-m",
            digits.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--precision",
            "0.9",
            "--no-plots",
            "--json",
        ];
        args.extend_from_slice(source);
        stdout_json(&cli(&args))
    };
    let reviews = calibrate(&["--from-reviews", "--history", history_dir.to_str().unwrap()]);
    let pictures = calibrate(&["--examples", train.to_str().unwrap()]);
    let (r, p) = (
        reviews["labels"].as_array().unwrap(),
        pictures["labels"].as_array().unwrap(),
    );
    assert_eq!(r.len(), 3);
    for (r, p) in r.iter().zip(p) {
        assert_eq!(r["label"], p["label"]);
        assert_eq!(
            (&r["positives"], &r["negatives"]),
            (&p["positives"], &p["negatives"]),
            "{r}\n{p}"
        );
        assert_eq!(r["before"], p["before"]);
        let (a, b) = (r["after"].as_f64().unwrap(), p["after"].as_f64().unwrap());
        // Measured: 0.4823/0.4804, 0.2939/0.2933, 0.6392/0.6391 (the stored embeddings are int8).
        assert!(
            (a - b).abs() <= 0.01,
            "{}: {a} from reviews, {b} from pictures",
            r["label"]
        );
        assert!(r["precision"].as_f64().unwrap() >= 0.9, "{r}");
        assert!(
            (r["recall"].as_f64().unwrap() - p["recall"].as_f64().unwrap()).abs() <= 0.1,
            "{r}\n{p}"
        );
    }
}

/// A `videotestsrc` pattern of one solid colour, red at `level` (0..255): a scene's brightness.
fn dim_red(level: u32) -> String {
    format!(
        "solid-color foreground-color={}",
        0xff00_0000u32 | (level << 16)
    )
}

/// `min_zscore`: two cameras whose scenes differ (a dim and a bright red background), the same
/// event on both (the red brightening by a tenth for one second at 6 s), one label set. The
/// label fires on each camera's event and never on its background, where no fixed `min_cosine`
/// can do both (the bright background scores above the dim camera's event). The baselines live
/// in the engine's matcher: a backtest of the same set replays the same episodes; they are
/// saved under state_dir and outlive a `kill -9` and a restart.
#[test]
fn min_zscore_fires_on_each_cameras_event_where_no_fixed_cosine_can() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // 10 fps: background 0-6 s, the event 6-7 s, background 7-9 s.
    let scenes = [("dim", 128, 153), ("bright", 158, 179)];
    let port = free_port();
    let mut text = config_head(&state, port);
    let labels = dir.path().join("labels.toml");
    std::fs::write(
        &labels,
        "[[label]]\nname = \"red\"\nmin_zscore = 3.0\nzscore_window = 20\n",
    )
    .unwrap();
    for (name, background, event) in scenes {
        let clip = dir.path().join(format!("{name}.mp4"));
        make_clip(
            &clip,
            &[
                (dim_red(background).as_str(), 60),
                (dim_red(event).as_str(), 10),
                (dim_red(background).as_str(), 20),
            ],
        );
        text.push_str(&format!(
            "\n[[pipeline]]\nname = \"{name}\"\nsource = \"{}\"\ninterval = \"250ms\"\nlabels = \"{}\"\nsnapshots = false\n",
            clip.display(),
            labels.display()
        ));
    }
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(&config, &text).unwrap();
    let out = cli(&["check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", crate::util::text(&out));

    let starts = |daemon: &Daemon, pipeline: &str| -> Vec<Value> {
        daemon
            .events()
            .into_iter()
            .filter(|e| e["pipeline"] == pipeline && e["state"] == "start")
            .collect()
    };
    let daemon = Daemon::start(&config, Some(port));
    for (name, _, _) in scenes {
        daemon.wait_pipeline(name, "finished", |p| p["finished"] == true);
    }
    let mut event_cosine = std::collections::HashMap::new();
    for (name, _, _) in scenes {
        let s = starts(&daemon, name);
        assert_eq!(s.len(), 1, "{name}: one episode, at the event: {s:#?}");
        let t = s[0]["stream_time"].as_f64().unwrap();
        assert!((6.0..7.0).contains(&t), "{name}: started at {t} s: {s:#?}");
        event_cosine.insert(name, s[0]["score"].as_f64().unwrap());
    }
    // The first samples could not match: the log says so, per pipeline.
    let warming = daemon.logs(|m| m.contains("no match until the baseline is full"));
    assert_eq!(warming.len(), 2, "{warming:#?}");
    // Saved at the end of each file: a kill -9 keeps them (after the history's last write,
    // at least every 250 ms).
    std::thread::sleep(Duration::from_millis(800));
    daemon.signal("KILL");
    drop(daemon);
    for (name, _, _) in scenes {
        let saved = crate::util::json(&state.join("baselines").join(format!("{name}.json")));
        let scores = saved["baselines"][0]["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 20, "{name}: {saved}");
    }

    // The same set replayed over the history: the engine's matcher, the same episodes.
    let backtest = |set: &Path| {
        stdout_json(&cli(&[
            "backtest",
            "--labels",
            set.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--json",
        ]))
    };
    let replayed = backtest(&labels);
    assert_eq!(replayed["summary"]["same"], 2, "{replayed:#}");
    for d in ["changed", "added", "removed"] {
        assert_eq!(replayed["summary"][d], 0, "{replayed:#}");
    }
    // A fixed cosine low enough for the dim camera's event fires on the bright background from
    // its first sample: no one min_cosine does both.
    let fixed = dir.path().join("fixed.toml");
    let dim_event = event_cosine["dim"];
    std::fs::write(
        &fixed,
        format!(
            "[[label]]\nname = \"red\"\nmin_cosine = {}\n",
            dim_event - 1e-3
        ),
    )
    .unwrap();
    let with_fixed = backtest(&fixed);
    let episodes = with_fixed["episodes"].as_array().unwrap();
    let bright: Vec<&Value> = episodes
        .iter()
        .filter(|e| e["pipeline"] == "bright")
        .collect();
    assert!(
        bright
            .iter()
            .any(|e| e["start"]["stream_time"].as_f64().unwrap() < 1.0),
        "the bright background passes a cosine of {dim_event}: {with_fixed:#}"
    );
    let background = bright[0]["start"]["score"].as_f64().unwrap();
    assert!(
        background > dim_event && background < event_cosine["bright"],
        "bright background {background}, dim event {dim_event}, bright event {}",
        event_cosine["bright"]
    );

    // A restart: the baselines are read back, so the label needs no new warm-up and still
    // fires on each event.
    let daemon = Daemon::start(&config, Some(port));
    for (name, _, _) in scenes {
        daemon.wait_pipeline(name, "finished", |p| p["finished"] == true);
        let s = starts(&daemon, name);
        assert_eq!(s.len(), 1, "{name}: {s:#?}");
    }
    assert!(
        daemon
            .logs(|m| m.contains("no match until the baseline is full"))
            .is_empty(),
        "restored baselines are full"
    );
    assert!(daemon.stop());
}
