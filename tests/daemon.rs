//! clipfilterd end to end: the real binary, real GStreamer pipelines, a real RTSP server in
//! another process, a real webhook server, a real NOTIFY_SOCKET, all on 127.0.0.1. Models: the
//! 64x64 oracle (frames are their mean colour; prompts "red", "green"... match exactly).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::daemon::{Daemon, Hook, config_head, live_pattern, make_clip, mean_colour};
use crate::util::rtsp::{CHILD_ENV, RtspServer};
use crate::util::{PATIENCE, free_port, notify_until, oracle, write_atomically};

/// Helper process: the RTSP server of [`rtsp_camera_reconnects_by_itself_and_others_carry_on`].
#[test]
#[ignore = "helper process, started by the RTSP tests"]
fn rtsp_server_process() {
    if let Some(port) = std::env::var_os(CHILD_ENV) {
        crate::util::rtsp::serve(port.to_str().unwrap().parse().unwrap());
    }
}

fn is(event: &Value, pipeline: &str, label: &str, state: &str) -> bool {
    event["pipeline"] == pipeline && event["label"] == label && event["state"] == state
}

/// For each label, states alternate start, end, start...; returns the labels in start order.
fn check_alternation(events: &[Value]) -> Vec<String> {
    let mut open: std::collections::HashMap<String, bool> = Default::default();
    let mut starts = Vec::new();
    for e in events {
        let label = e["label"].as_str().unwrap().to_string();
        let was_open = open.get(&label).copied().unwrap_or(false);
        match e["state"].as_str().unwrap() {
            "start" => {
                assert!(!was_open, "{label} started twice: {events:#?}");
                starts.push(label.clone());
                open.insert(label, true);
            }
            "end" => {
                assert!(was_open, "{label} ended without a start: {events:#?}");
                open.insert(label, false);
            }
            other => panic!("state {other}"),
        }
    }
    starts
}

#[test]
fn rtsp_camera_reconnects_by_itself_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = RtspServer::start(free_port());
    let port = server.port;
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        r#"{head}
[[pipeline]]
name = "cam"
source = "{url}"
transport = "tcp"
latency = "100ms"
username = "viewer"
password = "hunter2"
interval = "200ms"
prompts = ["red", "green"]
{other}"#,
        head = config_head(&dir.path().join("state"), http),
        url = server.url("/cycle"),
        other = live_pattern("other", "blue"),
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(http));

    // Live colours become events: red and green take turns.
    let (_, first) = daemon.wait_event(0, "a red start from the camera", |e| {
        is(e, "cam", "red", "start")
    });
    let (_, _) = daemon.wait_event(0, "a green start from the camera", |e| {
        is(e, "cam", "green", "start")
    });
    assert!(first["score"].as_f64().unwrap() > 0.99, "{first}");
    assert!(first["probability"].as_f64().unwrap() > 0.99, "{first}");
    let other_before = daemon.frames("other");
    assert_eq!(daemon.pipeline("cam").unwrap()["state"], "running");

    // The server dies for 10 seconds.
    server.kill();
    let killed = Instant::now();
    let cam = daemon.wait_pipeline("cam", "backing off", |p| {
        p["state"] == "backing_off" && p["restarts"].as_u64().unwrap() >= 1
    });
    assert!(cam["last_error"]["message"].as_str().is_some(), "{cam}");
    let mut other_frames = vec![other_before];
    while killed.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        let p = daemon.pipeline("other").unwrap();
        assert_eq!(p["state"], "running", "{p}");
        assert_eq!(p["restarts"], 0, "{p}");
        other_frames.push(p["frames"]["seen"].as_u64().unwrap());
    }
    assert!(
        other_frames.windows(2).all(|w| w[1] > w[0]),
        "the other pipeline's frame counter must keep increasing: {other_frames:?}"
    );
    let cam = daemon.pipeline("cam").unwrap();
    assert!(
        cam["restarts"].as_u64().unwrap() >= 2,
        "retried meanwhile: {cam}"
    );

    // The server comes back on the same port: the camera reconnects by itself.
    let events_before = daemon.stdout.len();
    let server = RtspServer::start(port);
    daemon.wait_pipeline("cam", "running again", |p| p["state"] == "running");
    daemon.wait_event(events_before, "red after the reconnection", |e| {
        is(e, "cam", "red", "start")
    });
    daemon.wait_event(events_before, "green after the reconnection", |e| {
        is(e, "cam", "green", "start")
    });
    let other = daemon.pipeline("other").unwrap();
    assert_eq!(other["restarts"], 0);
    assert!(other["frames"]["seen"].as_u64().unwrap() > *other_frames.last().unwrap());

    // Every start of the camera has its end, in order (ends forced by the failure included).
    let cam_events: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| e["pipeline"] == "cam")
        .collect();
    let starts = check_alternation(&cam_events);
    assert!(starts.len() >= 4, "{cam_events:#?}");

    // The password never shows: logs, events, /status, /metrics.
    let metrics = daemon.get("/metrics");
    for series in [
        "clipfilter_pipeline_restarts_total{pipeline=\"cam\"}",
        "clipfilter_pipeline_state{pipeline=\"cam\",state=\"running\"} 1",
        "clipfilter_pipeline_state{pipeline=\"other\",state=\"running\"} 1",
        "clipfilter_frames_seen_total{pipeline=\"other\"}",
        "clipfilter_label_matches_total{pipeline=\"cam\",label=\"red\"}",
        "clipfilter_label_score_bucket{le=\"0.5\",pipeline=\"cam\",label=\"green\"}",
        "clipfilter_execution_provider{model=\"oracle-clip\",provider=\"cpu\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let status = daemon.status().to_string();
    assert!(status.contains("rtsp://***@127.0.0.1"), "{status}");
    drop(server);
    let (logs, events) = (
        daemon.stderr.all().join("\n"),
        daemon.stdout.all().join("\n"),
    );
    assert!(daemon.stop(), "clean exit on SIGTERM");
    for (what, text) in [
        ("logs", &logs),
        ("events", &events),
        ("status", &status),
        ("metrics", &metrics),
    ] {
        assert!(
            !text.contains("hunter2"),
            "the password shows in the {what}"
        );
    }
}

#[test]
fn video_to_webhook_events_arrive_in_order_with_their_fields_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("red-green.mp4");
    make_clip(&clip, &[("red", 15), ("green", 15)]);
    let hook_port = free_port();
    let hook = Hook::start(hook_port);
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        r#"{head}
[[output]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/events"

[[pipeline]]
name = "clip"
source = "red-green.mp4"
loop = true
interval = "200ms"
prompts = ["red", "green"]
min_probability = 0.9
outputs = ["hook", "log"]
"#,
        head = config_head(&dir.path().join("state"), http),
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(http));

    // Two loops of the file: red, green, red, green.
    let mut received: Vec<Value> = Vec::new();
    while received.iter().filter(|e| e["state"] == "start").count() < 4 {
        received.push(hook.next());
    }
    let starts = check_alternation(&received);
    assert_eq!(
        starts[..4],
        ["red", "green", "red", "green"],
        "{received:#?}"
    );
    let mut last_frame = 0;
    for e in &received {
        assert_eq!(e["pipeline"], "clip");
        let id = uuid::Uuid::parse_str(e["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        e["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap();
        let frame = e["frame"].as_u64().unwrap();
        assert!(frame >= last_frame, "frames go forward: {received:#?}");
        last_frame = frame;
        assert!(
            e["pts"].as_f64().unwrap() < 3.1,
            "positions within the 3 s file: {e}"
        );
        if e["state"] == "start" {
            assert!(e["probability"].as_f64().unwrap() >= 0.9, "{e}");
            assert!(e["score"].as_f64().unwrap() > 0.99, "{e}");
            let snapshot = Path::new(e["snapshot"].as_str().expect("a snapshot"));
            assert!(
                snapshot.starts_with(dir.path().join("state/snapshots")),
                "{e}"
            );
            let [r, g, b] = mean_colour(snapshot);
            match e["label"].as_str().unwrap() {
                "red" => assert!(r > 200.0 && g < 60.0 && b < 60.0, "{r} {g} {b}"),
                _ => assert!(g > 200.0 && r < 60.0 && b < 60.0, "{r} {g} {b}"),
            }
        } else {
            assert!(e["snapshot"].is_null());
        }
    }
    // The JSON-lines output got the same events in the same order.
    let ids: Vec<Value> = received.iter().map(|e| e["id"].clone()).collect();
    let (n, _) = daemon.wait_event(0, "the same events on stdout", |e| {
        e["id"] == *ids.last().unwrap()
    });
    let logged: Vec<Value> = daemon.events()[..=n]
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(logged, ids);
    let status = daemon.pipeline("clip").unwrap();
    assert_eq!(status["restarts"], 0, "looping is not a failure: {status}");
    assert!(daemon.stop());
}

#[test]
fn kill_9_with_events_pending_then_restart_delivers_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let hook_port = free_port();
    let record = dir.path().join("record.jsonl");
    let config = dir.path().join("clipfilterd.toml");
    let clip = dir.path().join("red-green.mp4");
    make_clip(&clip, &[("red", 5), ("green", 5)]);
    let text = format!(
        r#"{head}
[[output]]
name = "record"
type = "jsonl"
path = "record.jsonl"

[[output]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/events"
retry_initial = "200ms"
retry_max = "1s"

[[pipeline]]
name = "clip"
source = "red-green.mp4"
loop = true
interval = "100ms"
prompts = ["red", "green"]
outputs = ["record", "hook"]
"#,
        head = config_head(&dir.path().join("state"), free_port()),
    );
    std::fs::write(&config, text).unwrap();

    // The endpoint is down: events pile up in the outbox.
    let mut daemon = Daemon::start(&config, None);
    let deadline = Instant::now() + PATIENCE;
    let recorded = loop {
        let lines: Vec<String> = std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        if lines.len() >= 6 {
            break lines;
        }
        assert!(Instant::now() < deadline, "no events recorded");
        std::thread::sleep(Duration::from_millis(100));
    };
    daemon.signal("KILL");
    daemon.child.wait().unwrap();
    let ids: Vec<String> = recorded
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // The endpoint comes up, the daemon starts again on the same state folder.
    let hook = Hook::start(hook_port);
    let daemon = Daemon::start(&config, None);
    let mut seen: Vec<String> = Vec::new();
    while !ids.iter().all(|id| seen.contains(id)) {
        seen.push(hook.next()["id"].as_str().unwrap().to_string());
    }
    // In order: the events from before the crash arrive in the order they were made.
    let positions: Vec<usize> = ids
        .iter()
        .map(|id| seen.iter().position(|s| s == id).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(daemon.stop());
}

fn reload_config(dir: &Path, http: u16, pipelines: &[(&str, &str)]) -> String {
    let mut text = config_head(&dir.join("state"), http);
    for (name, colour) in pipelines {
        text.push_str(&live_pattern(name, colour));
    }
    text
}

#[test]
fn config_reload_adds_and_removes_pipelines_and_leaves_the_others_alone() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    // The daemon is given a symbolic link: edits of the real file (in another folder) are not
    // seen by the file watcher, so the SIGHUP step below proves SIGHUP itself.
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(
        &config,
        reload_config(dir.path(), http, &[("keep", "red"), ("old", "green")]),
    )
    .unwrap();
    let daemon = Daemon::start(&config, Some(http));
    daemon.wait_event(0, "keep matches red", |e| is(e, "keep", "red", "start"));
    daemon.wait_pipeline("old", "running", |p| p["state"] == "running");
    let keep_since = daemon.pipeline("keep").unwrap()["since"].clone();
    let mut keep_frames = vec![daemon.frames("keep")];

    // The file changes: "old" goes, "new" comes, "keep" is not touched.
    let log_at = daemon.stderr.len();
    write_atomically(
        &config,
        &reload_config(dir.path(), http, &[("keep", "red"), ("new", "blue")]),
    );
    let (_, line) = daemon.wait_log(log_at, "configuration reloaded");
    let changes = line["fields"]["changes"].as_str().unwrap();
    assert!(
        changes.contains("added: new") && changes.contains("removed: old"),
        "{changes}"
    );
    assert!(changes.contains("untouched: keep"), "{changes}");
    daemon.wait_event(0, "new matches blue", |e| is(e, "new", "blue", "start"));
    let (_, end) = daemon.wait_event(0, "old's match ended when it stopped", |e| {
        is(e, "old", "green", "end")
    });
    assert!(end["frame"].as_u64().is_some());
    assert!(daemon.pipeline("old").is_none());
    keep_frames.push(daemon.frames("keep"));

    // A broken file is refused with its line; everything keeps running.
    let log_at = daemon.stderr.len();
    let broken = reload_config(
        dir.path(),
        http,
        &[("keep", "red"), ("new", "blue"), ("new", "green")],
    );
    write_atomically(&config, &broken);
    let (at, line) = daemon.wait_log(log_at, "configuration NOT reloaded");
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains("duplicate pipeline name `new`") && error.contains("line "),
        "{error}"
    );
    write_atomically(&config, "[model\npath = 3");
    let (_, line) = daemon.wait_log(at + 1, "configuration NOT reloaded");
    assert!(
        line["fields"]["error"].as_str().unwrap().contains("line 1"),
        "{line}"
    );
    keep_frames.push(daemon.frames("keep"));
    assert_eq!(daemon.pipeline("new").unwrap()["state"], "running");

    // SIGHUP: the real file behind a link changes; only the signal makes the daemon read it.
    let target = real.join("clipfilterd.toml");
    std::fs::write(
        &target,
        reload_config(
            dir.path(),
            http,
            &[("keep", "red"), ("new", "blue"), ("third", "green")],
        ),
    )
    .unwrap();
    let log_at = daemon.stderr.len();
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("link.tmp")).unwrap();
    // (Replacing the file by a link is itself a change in the watched folder: wait for that
    // reload first, then edit the target, which the watcher cannot see.)
    std::fs::rename(dir.path().join("link.tmp"), &config).unwrap();
    daemon.wait_log(log_at, "configuration reloaded");
    daemon.wait_pipeline("third", "running", |p| p["state"] == "running");
    std::fs::write(
        &target,
        reload_config(dir.path(), http, &[("keep", "red"), ("fourth", "green")]),
    )
    .unwrap();
    let log_at = daemon.stderr.len();
    daemon.signal("HUP");
    let (_, line) = daemon.wait_log(log_at, "configuration reloaded");
    let changes = line["fields"]["changes"].as_str().unwrap();
    assert!(
        changes.contains("added: fourth") && changes.contains("untouched: keep"),
        "{changes}"
    );
    assert!(
        daemon.stderr.all()[log_at..]
            .iter()
            .any(|l| l.contains("SIGHUP")),
        "the reload came from the signal"
    );
    daemon.wait_pipeline("fourth", "running", |p| p["state"] == "running");
    keep_frames.push(daemon.frames("keep"));

    // "keep" was never restarted: same state since the start, no restarts, counter only grew.
    let keep = daemon.pipeline("keep").unwrap();
    assert_eq!(keep["since"], keep_since, "{keep}");
    assert_eq!(keep["restarts"], 0);
    assert!(
        keep_frames.windows(2).all(|w| w[1] > w[0]),
        "{keep_frames:?}"
    );
    let keep_starts = daemon
        .events()
        .iter()
        .filter(|e| is(e, "keep", "red", "start"))
        .count();
    assert_eq!(keep_starts, 1, "keep's match never restarted");
    // Every element of every pipeline used the daemon's one engine.
    let loads = daemon
        .stderr
        .all()
        .iter()
        .filter(|l| l.contains("\"message\":\"model loaded\""))
        .count();
    assert_eq!(loads, 1, "the model is loaded once");
    assert!(daemon.stop());
}

/// Starts the daemon under a real `NOTIFY_SOCKET` with a watchdog, as systemd would.
fn notified_daemon(config: &Path, socket: &Path, watchdog: Duration) -> Daemon {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_clipfilterd"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("CLIPFILTER_LOG", "info,ort=warn")
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Daemon::spawn(cmd, None)
}

#[test]
fn sd_notify_ready_status_and_watchdog_on_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.path().join("clipfilterd.toml");
    let mut text = config_head(&dir.path().join("state"), free_port());
    text.push_str(&live_pattern("a", "red"));
    text.push_str(&live_pattern("b", "green"));
    text.push_str("\n[[pipeline]]\nname = \"down\"\nsource = \"rtsp://127.0.0.1:9/nothing\"\nprompts = [\"red\", \"green\"]\n");
    std::fs::write(&config, text).unwrap();
    let daemon = notified_daemon(&config, &socket_path, Duration::from_secs(2));
    let mut all = notify_until(&socket, PATIENCE, "READY=1", |l| l == "READY=1");
    assert!(
        all.iter().any(|l| l == "STATUS=loading the model"),
        "{all:?}"
    );
    let mut pings = 0;
    all.extend(notify_until(&socket, PATIENCE, "three pings", |l| {
        pings += usize::from(l == "WATCHDOG=1");
        pings >= 3
    }));
    if !all
        .iter()
        .any(|l| l == "STATUS=2 pipelines running, 1 backing off")
    {
        all.extend(notify_until(
            &socket,
            PATIENCE,
            "a status line with running and backing-off pipelines",
            |l| l == "STATUS=2 pipelines running, 1 backing off",
        ));
    }
    assert!(
        !all.iter()
            .any(|l| l.starts_with("STATUS=watchdog withheld")),
        "{all:?}"
    );
    daemon.signal("TERM");
    notify_until(&socket, PATIENCE, "STOPPING=1", |l| l == "STOPPING=1");
    drop(daemon);
}

#[test]
fn a_stalled_inference_worker_stops_the_watchdog_pings() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.path().join("clipfilterd.toml");
    // The slow oracle runs ~0.2 s per image on one thread; 16 cameras fill batches of 16, so one
    // inference takes seconds, far longer than the 1 s watchdog.
    let mut text = config_head(&dir.path().join("state"), free_port())
        .replace(
            &oracle().display().to_string(),
            &crate::util::model("oracle-slow").display().to_string(),
        )
        .replace("max_batch = 4", "max_batch = 16");
    // The scene gate (on by default for live sources) would skip these static pictures and
    // leave the worker idle: turn it off so that every sample is inferred.
    for i in 0..16 {
        text.push_str(
            &live_pattern(&format!("cam{i}"), "red").replace("framerate=10/1", "framerate=5/1"),
        );
        text.push_str("scene_gate = 0\n");
    }
    std::fs::write(&config, text).unwrap();
    let daemon = notified_daemon(&config, &socket_path, Duration::from_secs(1));
    notify_until(&socket, PATIENCE, "READY=1", |l| l == "READY=1");
    let seen = notify_until(&socket, PATIENCE, "the watchdog withheld", |l| {
        l.starts_with("STATUS=watchdog withheld")
    });
    let withheld = seen.last().unwrap();
    assert!(
        withheld.contains("inference") && !withheld.contains("supervisor"),
        "{withheld}"
    );
    assert!(
        seen.iter().any(|l| l == "WATCHDOG=1"),
        "pings before the stall: {seen:?}"
    );
    // While it is withheld, no ping comes until the worker beats again; then they resume.
    let after = notify_until(&socket, PATIENCE, "pings again", |l| l == "WATCHDOG=1");
    let log = daemon.stderr.all().join("\n");
    assert!(log.contains("withholding WATCHDOG=1"), "{after:?}");
    drop(daemon);
}

#[test]
fn bad_sources_fail_alone_with_clear_errors_and_the_daemon_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("notes.txt"), "this is not a video\n".repeat(100)).unwrap();
    let clip = d.join("whole.mp4");
    make_clip(&clip, &[("red", 30)]);
    let bytes = std::fs::read(&clip).unwrap();
    std::fs::write(d.join("truncated.mp4"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(
        d.join("broken-labels.toml"),
        "[[label]]\nname = \"red\"\nmin_cosine = \"high\"\n",
    )
    .unwrap();
    let closed = free_port();
    let http = free_port();
    let config = d.join("clipfilterd.toml");
    let text = format!(
        r#"{head}{good}
[[pipeline]]
name = "unreachable"
source = "rtsp://admin:hunter2@127.0.0.1:{closed}/stream"
prompts = ["red", "green"]

[[pipeline]]
name = "not-video"
source = "notes.txt"
prompts = ["red", "green"]

[[pipeline]]
name = "truncated"
source = "truncated.mp4"
prompts = ["red", "green"]

[[pipeline]]
name = "bad-labels"
launch = "videotestsrc is-live=true ! video/x-raw,width=64,height=64"
labels = "broken-labels.toml"

[[pipeline]]
name = "missing-labels"
launch = "videotestsrc is-live=true ! video/x-raw,width=64,height=64"
labels = "no-such-labels.toml"
"#,
        head = config_head(&d.join("state"), http),
        good = live_pattern("good", "red"),
    );
    std::fs::write(&config, text).unwrap();

    // `check` finds the label problems before anything runs.
    let out = crate::util::run(&["check", config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pipeline[4].labels") && stderr.contains("broken-labels.toml"),
        "{stderr}"
    );

    let daemon = Daemon::start(&config, Some(http));
    let expect = [
        ("unreachable", "rtsp://***@127.0.0.1"),
        ("not-video", "decode"),
        ("truncated", "no playable streams"),
        ("bad-labels", "broken-labels.toml"),
        ("missing-labels", "no-such-labels.toml"),
    ];
    for (name, words) in expect {
        let p = daemon.wait_pipeline(name, "failed and backing off", |p| {
            p["restarts"].as_u64().unwrap_or(0) >= 1 && p["last_error"]["message"].is_string()
        });
        let message = p["last_error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{name}: {message}");
    }
    let labels = daemon.pipeline("bad-labels").unwrap()["last_error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        labels.contains("line 3") && labels.contains("\"high\""),
        "{labels}"
    );
    let not_video = daemon.pipeline("not-video").unwrap()["last_error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(not_video.contains("text file"), "{not_video}");

    // The good pipeline runs on and reports; the daemon answers.
    daemon.wait_event(0, "good matches red", |e| is(e, "good", "red", "start"));
    let good = daemon.pipeline("good").unwrap();
    assert_eq!(
        (good["state"].as_str(), good["restarts"].as_u64()),
        (Some("running"), Some(0))
    );
    assert_eq!(daemon.get("/healthz"), "ok\n");
    let all = format!("{}{}", daemon.stderr.all().join("\n"), daemon.status());
    assert!(!all.contains("hunter2"), "the password leaked");
    assert!(daemon.stop());
}

#[test]
fn bad_configs_are_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "source = \"gopher://host/x\"",
            "gopher",
            "unknown source scheme `gopher://`",
        ),
        (
            "source = \"rtsp://cam/x\"\ncolour = \"red\"",
            "colour",
            "unknown field `colour`",
        ),
        (
            "source = \"rtsp://cam/x\"\noutputs = [\"pager\"]",
            "pager",
            "unknown output \"pager\"",
        ),
    ];
    for (i, (extra, key, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        let text = format!(
            "{}{}\n[[pipeline]]\nname = \"second\"\nprompts = [\"red\", \"green\"]\n{extra}\n",
            config_head(&dir.path().join("state"), free_port()),
            live_pattern("first", "red"),
        );
        let line = 1 + text.lines().position(|l| l.contains(key)).unwrap();
        std::fs::write(&path, &text).unwrap();
        let out = crate::util::run(&["check", path.to_str().unwrap()]);
        let (_, stderr) = crate::util::text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(message) && stderr.contains(path.to_str().unwrap()),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("line {line},")),
            "line {line}: {stderr}"
        );
        // `run` refuses it the same way, before starting anything.
        let out = crate::util::run(&["run", "--config", path.to_str().unwrap()]);
        let (_, stderr) = crate::util::text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
    let dup = dir.path().join("dup.toml");
    let text = format!(
        "{}{}{}",
        config_head(&dir.path().join("state"), free_port()),
        live_pattern("same", "red"),
        live_pattern("same", "green")
    );
    std::fs::write(&dup, &text).unwrap();
    let out = crate::util::run(&["check", dup.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("duplicate pipeline name `same`") && stderr.contains("pipeline[1].name"),
        "{stderr}"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed (apt install systemd): not checked");
        return;
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/clipfilterd.service");
    // The unit names /usr/bin/clipfilterd: verify a copy pointing at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("/usr/bin/clipfilterd", env!("CARGO_BIN_EXE_clipfilterd"));
    let copy = dir.path().join("clipfilterd.service");
    std::fs::write(&copy, text).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let (stdout, stderr) = crate::util::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn every_example_config_and_label_set_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let cache = crate::util::daemon::fake_hub_cache(dir.path());
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for folder in [
        crate::util::daemon::examples(),
        crate::util::daemon::examples().join("labels"),
        crate::util::daemon::examples().join("fleet"),
    ] {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    let out = crate::util::clipfilterd()
        .arg("check")
        .args(&files)
        .env("CLIPFILTER_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let (stdout, stderr) = crate::util::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.matches(": ok: daemon config").count(), 6, "{stdout}");
    assert!(
        stdout.contains("models--Xenova--clip-vit-base-patch32/snapshots/"),
        "{stdout}"
    );

    // Without the model in the cache, the error says how to get it.
    let out = crate::util::clipfilterd()
        .args(["check"])
        .arg(crate::util::daemon::examples().join("demo.toml"))
        .env("CLIPFILTER_CACHE_DIR", dir.path().join("empty"))
        .output()
        .unwrap();
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("clipfilterd model fetch Xenova/clip-vit-base-patch32"),
        "{stderr}"
    );
}

#[test]
fn the_demo_watches_the_cctv_clip_as_a_live_camera() {
    // The example config watches the set-up's vtest.avi.
    crate::util::vtest();
    let dir = tempfile::tempdir().unwrap();
    let cache = crate::util::daemon::fake_hub_cache(&dir.path().join("cache"));
    let http = free_port();
    let config = dir.path().join("demo.toml");
    std::fs::write(
        &config,
        crate::util::daemon::example("demo.toml", &dir.path().join("state"), http),
    )
    .unwrap();
    let daemon = Daemon::start_with(&config, Some(http), |c| {
        c.env("CLIPFILTER_CACHE_DIR", &cache)
    });
    daemon.wait_pipeline("cctv", "running with frames inferred", |p| {
        p["state"] == "running" && p["frames"]["inferred"].as_u64().unwrap() >= 3
    });
    let status = daemon.status();
    assert!(
        status["model"]["dir"]
            .as_str()
            .unwrap()
            .contains("models--Xenova--clip-vit-base-patch32"),
        "{status}"
    );
    assert!(daemon.stop());
}

#[test]
fn the_moderation_example_writes_a_complete_mp4() {
    // The example config watches the set-up's vtest.avi.
    crate::util::vtest();
    let dir = tempfile::tempdir().unwrap();
    let cache = crate::util::daemon::fake_hub_cache(&dir.path().join("cache"));
    let out_file = dir.path().join("moderated.mp4");
    let http = free_port();
    let text = crate::util::daemon::example("moderation.toml", &dir.path().join("state"), http)
        .lines()
        .map(|l| {
            if l.starts_with("sink =") {
                format!(
                    "sink = \"videoconvert ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={}\"",
                    out_file.display()
                )
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = dir.path().join("moderation.toml");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start_with(&config, Some(http), |c| {
        c.env("CLIPFILTER_CACHE_DIR", &cache)
    });
    let p = daemon.wait_pipeline("moderate", "finished", |p| p["finished"] == true);
    assert_eq!(p["restarts"], 0, "{p}");
    // The new file is complete: every frame of the clip is in it.
    let frames = count_frames(&out_file);
    let seen = p["frames"]["seen"].as_u64().unwrap();
    assert!(seen > 700, "{p}");
    assert_eq!(frames, seen, "frames written vs frames seen");
    assert!(daemon.stop());
}

/// Decodes a video file and counts its frames.
fn count_frames(path: &Path) -> u64 {
    use gst::prelude::*;
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! fakesink name=sink",
        path.display()
    ))
    .unwrap();
    let pipeline = pipeline.downcast::<gst::Pipeline>().unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    for msg in pipeline
        .bus()
        .unwrap()
        .iter_timed(gst::ClockTime::from_seconds(60))
    {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{}: {}", path.display(), e.error()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    count.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn keyframes_only_decodes_only_key_frames() {
    let dir = tempfile::tempdir().unwrap();
    // 30 frames, a key frame every 5.
    make_clip(&dir.path().join("clip.mp4"), &[("red", 15), ("green", 15)]);
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        r#"{head}
[[pipeline]]
name = "keys"
source = "clip.mp4"
realtime = false
mode = "sync"
keyframes_only = true
interval = "0s"
prompts = ["red", "green"]
"#,
        head = config_head(&dir.path().join("state"), http),
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(http));
    let p = daemon.wait_pipeline("keys", "finished", |p| p["finished"] == true);
    let seen = p["frames"]["seen"].as_u64().unwrap();
    assert!(
        (6..=10).contains(&seen),
        "only key frames reach clipfilter: {p}"
    );
    let starts: Vec<String> = daemon
        .events()
        .iter()
        .filter(|e| e["state"] == "start")
        .map(|e| e["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(starts, ["red", "green"]);
    assert!(daemon.stop());
}

#[test]
fn label_files_reload_through_the_element_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.toml");
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("[[label]]\nname = \"{n}\"\n"))
            .collect::<String>()
    };
    std::fs::write(&labels, set(&["red", "green"])).unwrap();
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        "{}\n[[pipeline]]\nname = \"cam\"\nlaunch = \"videotestsrc is-live=true pattern=red ! video/x-raw,width=64,height=64,framerate=10/1\"\ninterval = \"200ms\"\nlabels = \"labels.toml\"\n",
        config_head(&dir.path().join("state"), http)
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(http));
    daemon.wait_event(0, "red", |e| is(e, "cam", "red", "start"));
    let log_at = daemon.stderr.len();
    // A broken edit is refused by the element; the set in use stays.
    write_atomically(&labels, "[[label]]\nname = 3\n");
    let (at, _) = daemon.wait_log(log_at, "labels not reloaded");
    // A good edit: "red" is gone, so its match ends; "green" stays.
    write_atomically(&labels, &set(&["blue", "green"]));
    daemon.wait_log(at, "label set reloaded");
    daemon.wait_event(0, "red ended by the reload", |e| is(e, "cam", "red", "end"));
    let cam = daemon.pipeline("cam").unwrap();
    assert_eq!(
        (cam["restarts"].as_u64(), cam["state"].as_str()),
        (Some(0), Some("running")),
        "{cam}"
    );
    assert!(daemon.stop());
}

/// Serves the files of `dir` over HTTP on 127.0.0.1 (a plain static server, like a CDN).
fn static_server(dir: &Path) -> (u16, std::sync::Arc<tiny_http::Server>) {
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let (s, dir) = (server.clone(), dir.to_path_buf());
    std::thread::spawn(move || {
        for request in s.incoming_requests() {
            let name = request.url().trim_start_matches('/').to_string();
            let response = match std::fs::read(dir.join(&name)) {
                Ok(bytes) if !name.contains("..") => tiny_http::Response::from_data(bytes),
                _ => tiny_http::Response::from_data(Vec::new()).with_status_code(404),
            };
            let _ = request.respond(response);
        }
    });
    (port, server)
}

#[test]
fn hls_over_http_is_watched() {
    use gst::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let hls = dir.path().join("hls");
    std::fs::create_dir(&hls).unwrap();
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc pattern=red num-buffers=40 ! video/x-raw,format=I420,width=64,height=64,framerate=10/1 \
         ! x264enc key-int-max=10 speed-preset=ultrafast ! h264parse \
         ! hlssink2 location={0}/seg%05d.ts playlist-location={0}/live.m3u8 target-duration=1 max-files=0 playlist-length=0",
        hls.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for msg in pipeline
        .bus()
        .unwrap()
        .iter_timed(gst::ClockTime::from_seconds(60))
    {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{}", e.error()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let (port, server) = static_server(&hls);
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        "{}\n[[pipeline]]\nname = \"stream\"\nsource = \"http://127.0.0.1:{port}/live.m3u8\"\ninterval = \"200ms\"\nprompts = [\"red\", \"green\"]\n",
        config_head(&dir.path().join("state"), http)
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(http));
    let (_, e) = daemon.wait_event(0, "red from the HLS stream", |e| {
        is(e, "stream", "red", "start")
    });
    assert!(e["score"].as_f64().unwrap() > 0.99, "{e}");
    assert!(daemon.stop());
    server.unblock();
}

/// Credentials of every shape stay hidden on every surface (issue 15): a `/` in a URL's
/// password, secret query parameters of sources and webhooks, and a password from a systemd
/// credential; looked for in the logs at trace level, `/status`, `/metrics`, the events and the
/// state folder (outbox).
#[test]
fn credentials_stay_hidden_on_every_surface() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let credentials = d.join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("cam"), "CREDPASS\n").unwrap();
    let (closed, http, hook_port) = (free_port(), free_port(), free_port());
    let hook = Hook::start(hook_port);
    let config = d.join("clipfilterd.toml");
    let text = format!(
        r#"{head}
[[output]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{hook_port}/hook?token=HOOKTOKEN&X-Amz-Signature=HOOKSIG"

[[output]]
name = "down"
type = "webhook"
url = "http://user:HOOKPASS@127.0.0.1:{closed}/x?auth=HOOKAUTH"
retry_initial = "100ms"
{good}
[[pipeline]]
name = "slash"
source = "rtsp://admin:SLASH/PASS@127.0.0.1:{closed}/x"
prompts = ["red", "green"]

[[pipeline]]
name = "query"
source = "rtsp://127.0.0.1:{closed}/x?channel=1&user=admin&password=QUERYPASS"
prompts = ["red", "green"]

[[pipeline]]
name = "token"
source = "http://127.0.0.1:{closed}/x?token=QUERYTOKEN"
prompts = ["red", "green"]

[[pipeline]]
name = "credential"
source = "rtsp://127.0.0.1:{closed}/y"
username = "admin"
password = {{ credential = "cam" }}
prompts = ["red", "green"]
"#,
        head = config_head(&d.join("state"), http),
        good = live_pattern("good", "red"),
    );
    std::fs::write(&config, &text).unwrap();
    let daemon = Daemon::start_with(&config, Some(http), |c| {
        c.env("CLIPFILTER_LOG", "trace")
            .env("CREDENTIALS_DIRECTORY", &credentials)
    });
    let delivered = hook.next();
    assert_eq!(delivered["pipeline"], "good", "{delivered}");
    let shown = [
        ("slash", "rtsp://***@127.0.0.1:"),
        ("query", "?channel=1&user=admin&password=***"),
        ("token", "/x?token=***"),
        ("credential", "rtsp://***@127.0.0.1:"),
    ];
    for (name, source) in shown {
        let p = daemon.wait_pipeline(name, "failed", |p| p["last_error"]["message"].is_string());
        let shows = p["source"].as_str().unwrap();
        assert!(shows.contains(source), "{name}: {p}");
    }
    // The unreachable webhook has failed a few times (and logged it).
    daemon.wait_log(0, "delivery failed");
    let surfaces = [
        ("logs", daemon.stderr.all().join("\n")),
        ("/status", daemon.status().to_string()),
        ("/metrics", daemon.get("/metrics")),
        ("events", daemon.stdout.all().join("\n")),
    ];
    let mut state = String::new();
    for entry in walk(&d.join("state")) {
        state.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    let secrets = [
        "SLASH/PASS",
        "PASS@",
        "QUERYPASS",
        "QUERYTOKEN",
        "CREDPASS",
        "HOOKTOKEN",
        "HOOKSIG",
        "HOOKPASS",
        "HOOKAUTH",
    ];
    for (surface, text) in surfaces.iter().chain([&("state folder", state)]) {
        assert!(!text.is_empty(), "{surface} is empty");
        for secret in secrets {
            let at = text
                .find(secret)
                .map(|i| &text[i.saturating_sub(200)..i + secret.len()]);
            assert!(
                at.is_none(),
                "{secret} leaked into the {surface}: ...{}",
                at.unwrap_or_default()
            );
        }
    }
    assert!(daemon.stop());
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Issue 15, 6: a looping MPEG-TS file plays over and over (it used to send one frame and then
/// stall: tsdemux accepted the segment seek that started the loop and sent nothing after it).
#[test]
fn looping_mpeg_ts_file_plays_several_loops() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("red-green.ts");
    make_clip(&clip, &[("red", 10), ("green", 10)]);
    let (config, http) = (dir.path().join("clipfilterd.toml"), free_port());
    let text = format!(
        r#"{head}
[[pipeline]]
name = "clip"
source = "red-green.ts"
loop = true
interval = "100ms"
prompts = ["red", "green"]
"#,
        head = config_head(&dir.path().join("state"), http),
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, Some(http));
    // Three loops of the 2 s file: red, green, red, green, red, green.
    let (n, _) = daemon.wait_event(0, "six starts", {
        let mut starts = 0;
        move |e| {
            starts += usize::from(e["state"] == "start");
            starts >= 6
        }
    });
    let events = daemon.events();
    let starts = check_alternation(&events[..=n]);
    assert_eq!(
        starts[..6],
        ["red", "green", "red", "green", "red", "green"],
        "{events:#?}"
    );
    let status = daemon.pipeline("clip").unwrap();
    assert_eq!(status["restarts"], 0, "looping is not a failure: {status}");
    assert!(daemon.stop());
}

/// Issue 15, 7: SIGTERM while the pipelines are still starting (the element embedding a large
/// label set) ends the daemon within seconds, not after start-up; the outbox is intact.
#[test]
fn sigterm_during_start_up_exits_quickly_with_the_outbox_intact() {
    use clipfilterd::daemon::outbox::Outbox;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Events left by an earlier run for an endpoint that is down.
    let earlier = crate::delivery::events("cam", 3);
    {
        let outbox = Outbox::open(&state).unwrap();
        for e in &earlier {
            outbox.enqueue(e, &["hook"]).unwrap();
        }
    }
    // A label set whose embeddings keep the pipeline starting long after the signal.
    let mut labels = String::from("[defaults]\ntemplates = \"imagenet80\"\n");
    for i in 0..START_UP_LABELS {
        labels.push_str(&format!("[[label]]\nname = \"thing number {i}\"\n"));
    }
    std::fs::write(dir.path().join("labels.toml"), labels).unwrap();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        r#"{head}
[[output]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{port}/events"

[[pipeline]]
name = "cam"
launch = "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=10/1"
labels = "labels.toml"
outputs = ["hook"]
"#,
        head = config_head(&state, free_port()),
        port = free_port(),
    );
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, None);
    daemon.wait_log(0, "pipelines started");
    let sent = Instant::now();
    daemon.signal("TERM");
    let status = daemon.child.wait().unwrap();
    let took = sent.elapsed();
    let log = daemon.stderr.all();
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM during start-up: exit took {took:?}\n{}",
        log.join("\n")
    );
    assert!(status.success(), "{status:?}\n{}", log.join("\n"));
    let ready = log
        .iter()
        .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["fields"]["message"] == "ready"));
    assert!(!ready, "start-up ended before the signal: use more labels");
    let outbox = Outbox::open(&state).unwrap();
    let left: Vec<_> = outbox
        .peek("hook", 0, 100)
        .unwrap()
        .iter()
        .map(|p| p.event_id)
        .collect();
    assert_eq!(left, earlier.iter().map(|e| e.id).collect::<Vec<_>>());
}

/// Labels of [`sigterm_during_start_up_exits_quickly_with_the_outbox_intact`]: with 80
/// templates each, their embeddings take the oracle's text tower well over a minute.
const START_UP_LABELS: usize = 2000;
