//! The web console in a real browser (headless Chromium through chromedriver) against a real
//! daemon running the oracle model on a generated colour video: live pipelines and timelines,
//! events with snapshots and review marks (kept across a reload and a restart), search, label
//! edits (a broken one refused, a valid one backtested, saved and reloaded), and the token off
//! loopback. Screenshots of each page go to target/console-screenshots/.

use std::path::PathBuf;

use serde_json::json;

use crate::util::browser::{Browser, screenshots};
use crate::util::daemon::{Daemon, config_head, make_clip};
use crate::util::{PATIENCE, free_port};

const LABELS: &str = r#"[defaults]
min_probability = 0.5

[[label]]
name = "red"

[[label]]
name = "green"

[[label]]
name = "blue"
"#;

/// Line 6 is wrong: a probability above 1.
const BROKEN: &str = r#"[defaults]
min_probability = 0.5

[[label]]
name = "red"
min_probability = 7

[[label]]
name = "green"
"#;

/// Valid: `blue` is gone.
const WITHOUT_BLUE: &str = r#"[defaults]
min_probability = 0.5

[[label]]
name = "red"

[[label]]
name = "green"
"#;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    labels: PathBuf,
    port: u16,
}

/// A looping clip (red 0-2 s, green 2-4 s, blue 4-6 s) watched by pipeline `cam`, with the
/// history on; `edit` changes the configuration text.
fn setup(edit: impl FnOnce(String) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("colours.mp4");
    make_clip(&clip, &[("red", 20), ("green", 20), ("blue", 20)]);
    let labels = dir.path().join("labels.toml");
    std::fs::write(&labels, LABELS).unwrap();
    let port = free_port();
    let mut text = config_head(&dir.path().join("state"), port);
    text.push_str(&format!(
        "\n[[pipeline]]\nname = \"cam\"\nsource = \"{}\"\nloop = true\ninterval = \"250ms\"\nlabels = \"{}\"\n",
        clip.display(),
        labels.display()
    ));
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(&config, edit(text)).unwrap();
    Setup {
        dir,
        config,
        labels,
        port,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Status and body of `method path` on the daemon, with `headers`.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let agent = agent();
    let mut response = match method {
        "GET" => {
            let mut r = agent.get(&url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "PUT" => agent.put(&url),
                _ => agent.post(&url),
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body.unwrap_or_default())
        }
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    // A stream (/api/live) is not read to its end.
    let text = if path == "/api/live" {
        String::new()
    } else {
        response.body_mut().read_to_string().unwrap_or_default()
    };
    (status, text)
}

fn shot(browser: &Browser, name: &str) -> PathBuf {
    let path = screenshots().join(name);
    browser.screenshot(&path);
    path
}

/// The mean colour of the JPEG at `path` on the daemon.
fn jpeg_colour(port: u16, path: &str) -> [f64; 3] {
    let (status, _) = request(port, "GET", path, &[], None);
    assert_eq!(status, 200, "{path}");
    let bytes = agent()
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let mut sum = [0f64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += f64::from(p[c]);
        }
    }
    let n = f64::from(img.width() * img.height());
    sum.map(|s| s / n)
}

/// Which of red, green, blue a colour is.
fn colour_name([r, g, b]: [f64; 3]) -> &'static str {
    if r > g && r > b {
        "red"
    } else if g > b {
        "green"
    } else {
        "blue"
    }
}

const ROW_IDS: &str =
    "return [...document.querySelectorAll('#event-table tbody tr')].map(r => r.dataset.event)";

fn open_page(browser: &Browser, port: u16, page: &str) {
    browser.goto(&format!("http://127.0.0.1:{port}/#{page}"));
    browser.wait(
        "the page",
        "return document.querySelector('#live-state').textContent === 'live'",
        json!([]),
    );
}

#[test]
fn the_console_shows_pipelines_events_search_and_edits_labels() {
    let s = setup(|t| t);
    let daemon = Daemon::start(&s.config, Some(s.port));
    daemon.wait_pipeline("cam", "running", |p| p["state"] == "running");
    let browser = Browser::start();
    let port = s.port;
    // Without a token, only loopback names are served (no DNS rebinding).
    let (status, body) = request(
        port,
        "GET",
        "/api/labels",
        &[("host", "evil.example:80")],
        None,
    );
    assert_eq!(status, 403, "{body}");

    // Pipelines: the running pipeline, and its timeline getting points live.
    open_page(&browser, port, "pipelines");
    browser.wait(
        "pipeline cam running",
        "const b = document.querySelector('[data-pipeline=cam] .state'); return b && b.textContent.startsWith('running')",
        json!([]),
    );
    let first = browser.wait(
        "timeline points",
        "const c = document.querySelector('[data-pipeline=cam] .chart'); return c && c.querySelector('canvas') && Number(c.dataset.points) > 0 ? Number(c.dataset.points) : null",
        json!([]),
    );
    browser.wait(
        "more timeline points",
        "return Number(document.querySelector('[data-pipeline=cam] .chart').dataset.points) > arguments[0]",
        json!([first]),
    );
    browser.wait(
        "frames/s and the latest thumbnail",
        "const fps = document.querySelector('[data-pipeline=cam] [data-stat=\"frames/s\"]'); const img = document.querySelector('[data-pipeline=cam] img.latest'); return fps && Number(fps.textContent) > 0 && img.complete && img.naturalWidth > 0",
        json!([]),
    );
    let legend = browser.text("[data-pipeline=cam] .u-legend");
    for label in ["red", "green", "blue", "red threshold"] {
        assert!(legend.contains(label), "legend: {legend}");
    }
    // A matched stretch is shaded: the chart's canvas has the label's translucent fill.
    let pipelines_png = shot(&browser, "pipelines.png");

    // Events: one appears live (not on the page when it opened), with its snapshot.
    open_page(&browser, port, "events");
    let before: Vec<String> = serde_json::from_value(browser.run(ROW_IDS, json!([]))).unwrap();
    let id = browser.wait(
        "an event to appear live",
        "const before = arguments[0]; for (const r of document.querySelectorAll('#event-table tbody tr')) { const img = r.querySelector('img'); if (!before.includes(r.dataset.event) && img && img.complete && img.naturalWidth > 0) return r.dataset.event; } return null",
        json!(before),
    );
    let id = id.as_str().unwrap().to_owned();
    let label = browser.text(&format!("tr[data-event='{id}'] td:nth-child(3)"));
    let snapshot = jpeg_colour(port, &format!("/api/events/{id}/snapshot"));
    assert_eq!(colour_name(snapshot), label, "snapshot colour {snapshot:?}");
    // Once the history has it, open it: thumbnails around it and its score curve.
    let deadline = std::time::Instant::now() + PATIENCE;
    while !request(port, "GET", "/api/events?limit=1000", &[], None)
        .1
        .contains(&id)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "event {id} not in the history"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Rows are redrawn as events come: clicked in one step, from the page.
    browser.run(
        "document.querySelector(`tr[data-event='${arguments[0]}']`).click(); return true",
        json!([id]),
    );
    browser.wait(
        "thumbnails and the score curve",
        "return document.querySelectorAll('#detail-thumbs img').length > 2 && document.querySelector('#detail-chart canvas') !== null",
        json!([]),
    );
    browser.click("#mark-tp");
    browser.wait(
        "the mark",
        "return document.querySelector('#detail-review').textContent === 'marked true positive'",
        json!([]),
    );
    let events_png = shot(&browser, "events.png");
    // The mark is kept: after a reload of the page...
    let mark_of = format!(
        "const m = document.querySelector(\"tr[data-event='{id}'] .mark\"); return m && m.textContent"
    );
    open_page(&browser, port, "events");
    assert_eq!(
        browser.wait("the row after a reload", &mark_of, json!([])),
        "true positive"
    );

    // Search: green is 2-4 s of each loop.
    open_page(&browser, port, "search");
    browser.type_into("#search-text", "green");
    browser.type_into("#search-since", "1h");
    // Every range lies in green; one of a complete loop spans it (the loop playing at the
    // first search may have only part of its green stretch stored: search again until then).
    let in_loop =
        |(start, end, _): &(f64, f64, Option<String>)| (start.rem_euclid(6.0), end.rem_euclid(6.0));
    let search_deadline = std::time::Instant::now() + PATIENCE;
    let thumb = loop {
        browser.run(
            "document.querySelector('#search-results').replaceChildren(); return true",
            json!([]),
        );
        browser.click("#search-form button");
        let ranges = browser.wait(
            "search results",
            "const r = [...document.querySelectorAll('.result')].map(e => [Number(e.dataset.start), Number(e.dataset.end), e.querySelector('img') ? e.querySelector('img').getAttribute('src') : null]); return r.length ? r : null",
            json!([]),
        );
        let ranges: Vec<(f64, f64, Option<String>)> = serde_json::from_value(ranges).unwrap();
        for r in &ranges {
            let (start, end) = in_loop(r);
            assert!(
                (2.0..4.0).contains(&start) && (2.0..4.0).contains(&end) && start <= end,
                "green found at {start}..{end} of the loop: {ranges:?}"
            );
        }
        if let Some((_, _, thumb)) = ranges.iter().find(|r| {
            let (start, end) = in_loop(r);
            start <= 2.5 && end >= 3.4
        }) {
            break thumb.clone();
        }
        assert!(
            std::time::Instant::now() < search_deadline,
            "no range spans green (2..4 s of the loop): {ranges:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(
        colour_name(jpeg_colour(port, &thumb.expect("a thumbnail"))),
        "green"
    );
    let search_png = shot(&browser, "search.png");
    // By example: a red picture finds red.
    let red_png = s.dir.path().join("red.png");
    image::RgbImage::from_pixel(32, 24, image::Rgb([250, 5, 5]))
        .save(&red_png)
        .unwrap();
    browser.run(
        "document.querySelector('#search-text').value = ''; document.querySelector('#search-results').replaceChildren(); return true",
        json!([]),
    );
    browser.type_into("#search-image", red_png.to_str().unwrap());
    browser.click("#search-form button");
    let thumb = browser.wait(
        "results by image",
        "const i = document.querySelector('.result img'); return i && i.getAttribute('src')",
        json!([]),
    );
    assert_eq!(
        colour_name(jpeg_colour(port, thumb.as_str().unwrap())),
        "red"
    );

    // Labels: a broken edit shows the error with its line and changes nothing on disk.
    open_page(&browser, port, "labels");
    browser.wait(
        "the label file",
        "return document.querySelector('#labels-text').value.includes('blue')",
        json!([]),
    );
    let set_text = "document.querySelector('#labels-text').value = arguments[0]; return true";
    browser.run(set_text, json!([BROKEN]));
    browser.click("#labels-check");
    let problem = browser.wait(
        "the problem",
        "const li = document.querySelector('#labels-result .problems li[data-line=\"6\"]'); return li && li.textContent",
        json!([]),
    );
    let problem = problem.as_str().unwrap();
    assert!(
        problem.starts_with("line 6") && problem.contains("min_probability"),
        "{problem}"
    );
    browser.run(
        "document.querySelector('#labels-result').replaceChildren(); return true",
        json!([]),
    );
    browser.click("#labels-save");
    browser.wait(
        "the refusal",
        "return document.querySelector('#labels-result .problems li[data-line=\"6\"]') !== null",
        json!([]),
    );
    let labels_error_png = shot(&browser, "labels-error.png");
    assert_eq!(std::fs::read_to_string(&s.labels).unwrap(), LABELS);

    // A valid edit: the backtest shows blue's matches gone, then saving reloads the labels.
    browser.run(set_text, json!([WITHOUT_BLUE]));
    browser.click("#labels-backtest");
    let summary = browser.wait(
        "the backtest",
        "const s = document.querySelector('#backtest-summary'); return s && s.textContent",
        json!([]),
    );
    let summary = summary.as_str().unwrap().to_owned();
    let removed: u32 = summary
        .split("removed ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(removed > 0, "{summary}");
    let from = daemon.stderr.len();
    browser.click("#labels-save");
    browser.wait(
        "saved",
        "return document.querySelector('#labels-saved') !== null",
        json!([]),
    );
    let labels_png = shot(&browser, "labels.png");
    daemon.wait_log(from, "label set reloaded");
    assert_eq!(std::fs::read_to_string(&s.labels).unwrap(), WITHOUT_BLUE);
    // The pipeline's timeline follows the new set.
    open_page(&browser, port, "pipelines");
    browser.wait(
        "a timeline without blue",
        "const l = document.querySelector('[data-pipeline=cam] .u-legend'); return l && l.textContent.includes('green') && !l.textContent.includes('blue')",
        json!([]),
    );

    // ...and after a restart of the daemon.
    assert!(daemon.stop(), "the daemon stops cleanly");
    let daemon = Daemon::start(&s.config, Some(port));
    daemon.wait_pipeline("cam", "running", |p| p["state"] == "running");
    open_page(&browser, port, "events");
    assert_eq!(
        browser.wait("the row after a restart", &mark_of, json!([])),
        "true positive"
    );
    for png in [
        pipelines_png,
        events_png,
        search_png,
        labels_error_png,
        labels_png,
    ] {
        assert!(
            std::fs::metadata(&png).unwrap().len() > 10_000,
            "{}",
            png.display()
        );
    }
    drop(s.dir);
}

#[test]
fn off_loopback_every_page_and_api_needs_the_token() {
    let token = "console-test-token-0123456789";
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{token}\n")).unwrap();
    let token_path = token_file.path().to_owned();

    // Without a token, a non-loopback address is refused.
    let open = setup(|t| t.replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:"));
    let out = crate::util::run(&["check", open.config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("listen") && stderr.contains("not a loopback address"),
        "{stderr}"
    );

    let s = setup(|t| {
        t.replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:")
            .replace(
                "\n[model]",
                &format!(
                    "\n[http]\ntoken = {{ file = \"{}\" }}\n\n[model]",
                    token_path.display()
                ),
            )
    });
    let daemon = Daemon::start(&s.config, None);
    let port = s.port;
    let bearer = format!("Bearer {token}");
    let with = [("authorization", bearer.as_str())];
    let deadline = std::time::Instant::now() + PATIENCE;
    let url = format!("http://127.0.0.1:{port}/status");
    while agent()
        .get(&url)
        .header("authorization", &bearer)
        .call()
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "/status does not answer"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    daemon.wait_log(0, "pipelines started");

    let gets = [
        "/",
        "/console/app.js",
        "/console/uPlot.iife.min.js",
        "/api/live",
        "/api/timeline",
        "/api/events",
        "/api/events/x/snapshot",
        "/api/pipelines/cam/thumbnail",
        "/api/labels",
        "/api/search?q=red",
        "/api/reviews",
        "/api/thumbnail/1",
        "/metrics",
        "/healthz",
        "/status",
        "/no/such/page",
    ];
    let wrong = [("authorization", "Bearer not-the-token-at-all-0000")];
    let cookie_wrong = [("cookie", "clipfilter_token=nope")];
    for path in gets {
        for headers in [&[][..], &wrong[..], &cookie_wrong[..]] {
            let (status, body) = request(port, "GET", path, headers, None);
            assert_eq!(status, 401, "GET {path} with {headers:?}: {body}");
        }
    }
    let review = r#"{"event": "x", "label": "red", "verdict": "true_positive"}"#;
    for (method, path, body) in [
        ("POST", "/api/review", review),
        ("POST", "/api/backtest", LABELS),
        ("POST", "/api/search", "not an image"),
        ("POST", "/api/labels/cam/check", LABELS),
        ("PUT", "/api/labels/cam", WITHOUT_BLUE),
    ] {
        let (status, text) = request(port, method, path, &[], Some(body));
        assert_eq!(status, 401, "{method} {path}: {text}");
    }
    assert_eq!(std::fs::read_to_string(&s.labels).unwrap(), LABELS);
    // With the token: served; a change from another origin is still refused.
    for path in ["/", "/api/labels", "/metrics", "/api/timeline"] {
        let (status, body) = request(port, "GET", path, &with, None);
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let (status, body) = request(
        port,
        "PUT",
        "/api/labels/cam",
        &[
            ("authorization", bearer.as_str()),
            ("origin", "http://evil.example"),
        ],
        Some(WITHOUT_BLUE),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(std::fs::read_to_string(&s.labels).unwrap(), LABELS);
    // The labels the console shows carry no credential, and the status none either.
    let (_, status_doc) = request(port, "GET", "/status", &with, None);
    assert!(!status_doc.contains(token), "{status_doc}");

    // The browser: once opened with ?token=, the cookie carries it (and the address loses it).
    let browser = Browser::start();
    browser.goto(&format!("http://127.0.0.1:{port}/?token={token}#pipelines"));
    browser.wait(
        "the console with the token",
        "const b = document.querySelector('[data-pipeline=cam] .state'); return b && b.textContent.startsWith('running')",
        json!([]),
    );
    let url = browser.run("return location.href", json!([]));
    assert!(!url.as_str().unwrap().contains("token"), "{url}");
    let without = Browser::start();
    without.goto(&format!("http://127.0.0.1:{port}/"));
    let text = without.run("return document.body.innerText", json!([]));
    assert!(
        text.as_str().unwrap().contains("a token is needed"),
        "{text}"
    );
    shot(&without, "token-needed.png");
}
