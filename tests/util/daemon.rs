//! Running `clipfilterd run` as a child process, and the servers its tests talk to.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{PATIENCE, oracle};

/// Lines a child process writes, shared with the test thread.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    /// Reads `from` line by line on a thread.
    pub fn collect(from: impl std::io::Read + Send + 'static, echo: &'static str) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("CLIPFILTER_TEST_ECHO").is_some() {
                    eprintln!("{echo}: {line}");
                }
                let mut g = l.lines.lock().unwrap_or_else(|p| p.into_inner());
                g.0.push(line);
                l.changed.notify_all();
            }
            l.lines.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
            l.changed.notify_all();
        });
        lines
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().0.clone()
    }

    /// Waits until a line from index `from` on satisfies `want`; returns its index and text.
    pub fn wait_from(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        mut want: impl FnMut(&str) -> bool,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        let mut next = from;
        loop {
            while next < g.0.len() {
                if want(&g.0[next]) {
                    return (next, g.0[next].clone());
                }
                next += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !g.1,
                "{} waiting for {what}; last lines:\n{}",
                if g.1 { "stream closed" } else { "timed out" },
                g.0.iter()
                    .rev()
                    .take(30)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Number of lines so far.
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().0.len()
    }
}

/// A `clipfilterd run` child with JSON logs on stderr and JSON-lines events on stdout.
pub struct Daemon {
    pub child: Child,
    pub stdout: Arc<Lines>,
    pub stderr: Arc<Lines>,
    pub http: Option<u16>,
}

impl Daemon {
    /// Starts `clipfilterd run --config <config>` (logs as JSON).
    pub fn start(config: &Path, http: Option<u16>) -> Daemon {
        Daemon::start_with(config, http, |c| c)
    }

    /// Like [`Daemon::start`] with a chance to change the command (environment).
    pub fn start_with(
        config: &Path,
        http: Option<u16>,
        adjust: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Daemon {
        let mut cmd = super::clipfilterd();
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("CLIPFILTER_LOG", "info,ort=warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        Daemon::spawn(cmd, http)
    }

    /// Spawns a prepared command.
    pub fn spawn(mut cmd: Command, http: Option<u16>) -> Daemon {
        let mut child = cmd.spawn().expect("clipfilterd starts");
        let stdout = Lines::collect(child.stdout.take().unwrap(), "daemon stdout");
        let stderr = Lines::collect(child.stderr.take().unwrap(), "daemon stderr");
        Daemon {
            child,
            stdout,
            stderr,
            http,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for a log line (JSON) whose `fields.message` contains `text`, from line `from` on.
    pub fn wait_log(&self, from: usize, text: &str) -> (usize, Value) {
        let (i, line) = self.stderr.wait_from(from, text, PATIENCE, |l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["fields"]["message"].as_str().map(|m| m.contains(text)))
                .unwrap_or(false)
        });
        (i, serde_json::from_str(&line).unwrap())
    }

    /// Log lines written so far (JSON on stderr) whose `fields.message` passes `want`.
    pub fn logs(&self, want: impl Fn(&str) -> bool) -> Vec<Value> {
        self.stderr
            .all()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"].as_str().is_some_and(&want))
            .collect()
    }

    /// Events printed so far (JSON lines on stdout).
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .all()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for an event from index `from` on that satisfies `want`.
    pub fn wait_event(
        &self,
        from: usize,
        what: &str,
        mut want: impl FnMut(&Value) -> bool,
    ) -> (usize, Value) {
        let (i, line) = self.stdout.wait_from(from, what, PATIENCE, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| want(&v))
        });
        (i, serde_json::from_str(&line).unwrap())
    }

    /// GET `path` on the daemon's HTTP server.
    pub fn get(&self, path: &str) -> String {
        let port = self.http.expect("the daemon serves HTTP");
        let mut response = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        response.body_mut().read_to_string().unwrap()
    }

    /// `/status`, waiting for the server to answer.
    pub fn status(&self) -> Value {
        let port = self.http.expect("the daemon serves HTTP");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match ureq::get(&format!("http://127.0.0.1:{port}/status")).call() {
                Ok(mut r) => {
                    return serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "/status does not answer: {e}\n{}",
                        self.stderr.all().join("\n")
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The `/status` entry of pipeline `name`.
    pub fn pipeline(&self, name: &str) -> Option<Value> {
        self.status()["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// Polls `/status` until `cond` holds for pipeline `name` (the state lives in the daemon;
    /// polling its status endpoint is how an operator sees it too).
    pub fn wait_pipeline(
        &self,
        name: &str,
        what: &str,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let status = self.wait_status(&format!("pipeline {name} {what}"), |s| {
            s["pipelines"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && cond(p)))
        });
        status["pipelines"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `/status` until `cond` holds for it; returns it.
    pub fn wait_status(&self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.status();
            if cond(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status:#}\nlog:\n{}",
                self.stderr
                    .all()
                    .iter()
                    .rev()
                    .take(40)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of `series` (name and labels, as exported) in `/metrics`; fails when the daemon
    /// does not export it.
    pub fn metric(&self, series: &str) -> f64 {
        let metrics = self.get("/metrics");
        assert!(
            metrics.contains(&format!("{series} ")),
            "{series} in\n{metrics}"
        );
        super::metric_value(&metrics, series)
    }

    /// Frames seen by pipeline `name`.
    pub fn frames(&self, name: &str) -> u64 {
        self.pipeline(name)
            .and_then(|p| p["frames"]["seen"].as_u64())
            .unwrap_or_else(|| panic!("no pipeline {name}"))
    }

    /// Stops with SIGTERM and waits; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        status.success()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The head of a daemon config: state folder, HTTP port, the oracle model, fast restarts, and a
/// JSON-lines output `log` on stdout.
pub fn config_head(state: &Path, http: u16) -> String {
    format!(
        r#"state_dir = "{}"
listen = "127.0.0.1:{http}"

[model]
path = "{}"
max_batch = 4
threads = 1

[restart]
initial = "300ms"
max = "2s"
stall_timeout = "5s"

[[output]]
name = "log"
type = "jsonl"
path = "-"
"#,
        state.display(),
        oracle().display()
    )
}

/// A `[[pipeline]]` table watching a live test pattern of `colour` (a videotestsrc pattern name).
pub fn live_pattern(name: &str, colour: &str) -> String {
    format!(
        r#"
[[pipeline]]
name = "{name}"
launch = "videotestsrc is-live=true pattern={colour} ! video/x-raw,width=64,height=64,framerate=10/1"
interval = "200ms"
prompts = ["red", "green", "blue"]
"#
    )
}

/// A real webhook endpoint: answers 204 and hands each JSON body to the test.
pub struct Hook {
    server: Arc<tiny_http::Server>,
    bodies: crossbeam_channel::Receiver<Value>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hook {
    /// Listens on `port`.
    pub fn start(port: u16) -> Hook {
        let server = Arc::new(tiny_http::Server::http(("127.0.0.1", port)).unwrap());
        let (tx, bodies) = crossbeam_channel::unbounded();
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for mut request in s.incoming_requests() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let ok = request.method() == &tiny_http::Method::Post;
                let _ = request.respond(tiny_http::Response::empty(if ok { 204 } else { 405 }));
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    let _ = tx.send(v);
                }
            }
        });
        Hook {
            server,
            bodies,
            thread: Some(thread),
        }
    }

    /// The next event POSTed.
    pub fn next(&self) -> Value {
        self.bodies
            .recv_timeout(PATIENCE)
            .expect("a webhook request in time")
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes an H.264 file of 64x64 frames at 10 fps: `frames` of each videotestsrc `pattern` in
/// turn (e.g. `[("red", 15), ("green", 15)]`); MPEG-TS when `path` ends in `.ts`, else MP4.
pub fn make_clip(path: &Path, parts: &[(&str, u32)]) {
    gst::init().unwrap();
    let mux = if path.extension().is_some_and(|e| e == "ts") {
        "mpegtsmux"
    } else {
        "mp4mux"
    };
    let mut description = format!(
        "concat name=c ! videoconvert ! x264enc key-int-max=5 speed-preset=ultrafast ! {mux} ! filesink location={}",
        path.display()
    );
    for (pattern, frames) in parts {
        description.push_str(&format!(
            " videotestsrc pattern={pattern} num-buffers={frames} ! video/x-raw,format=I420,width=64,height=64,framerate=10/1 ! c."
        ));
    }
    run_to_eos(&description, path);
}

/// Runs a gst-launch `description` that makes `path` until its end of stream.
pub fn run_to_eos(description: &str, path: &Path) {
    gst::init().unwrap();
    use gst::prelude::*;
    let pipeline = gst::parse::launch(description).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("making {}: {}", path.display(), e.error()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// The mean colour of a JPEG file.
pub fn mean_colour(path: &Path) -> [f64; 3] {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let mut sum = [0f64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += f64::from(p[c]);
        }
    }
    let n = f64::from(img.width() * img.height());
    sum.map(|s| s / n)
}

/// A model cache in the hub layout (what `clipfilterd model fetch` leaves) whose
/// `Xenova/clip-vit-base-patch32` is the oracle fixture, so the example configs run here.
pub fn fake_hub_cache(dir: &Path) -> PathBuf {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = dir.join("models--Xenova--clip-vit-base-patch32");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::os::unix::fs::symlink(oracle(), repo.join("snapshots").join(commit)).unwrap();
    dir.to_path_buf()
}

/// The repository's `pipelines/` folder.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

/// An example config made to run in a test: relative paths made absolute, `state_dir` and the
/// HTTP port replaced.
pub fn example(name: &str, state: &Path, http: u16) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(examples().join(name)).unwrap();
    let mut out = String::new();
    if !text.lines().any(|l| l.starts_with("listen =")) {
        out.push_str(&format!("listen = \"127.0.0.1:{http}\"\n"));
    }
    for line in text.lines() {
        let line = if line.starts_with("state_dir =") {
            format!("state_dir = \"{}\"", state.display())
        } else if line.starts_with("listen =") {
            format!("listen = \"127.0.0.1:{http}\"")
        } else {
            line.replace("\"../", &format!("\"{}/", repo.display()))
                .replace("\"labels/", &format!("\"{}/labels/", examples().display()))
                .replace("{config_dir}", &examples().display().to_string())
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One sample of a `/metrics` page, as a real scraper parses it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses an OpenMetrics page with the Prometheus Python client's parser (`.local/venv-check`,
/// installed by tools/setup.sh); `Err` with the parser's complaint when the page is invalid.
pub fn parse_metrics(page: &str) -> Result<Vec<Sample>, String> {
    use std::io::Write;
    let python = super::local().join("venv-check/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tools/setup.sh",
        python.display()
    );
    let script = "import json, sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        out = [dict(name=s.name, labels=s.labels, value=s.value)\n\
               for f in parse(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr.lines().last().unwrap_or_default().to_string());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}
