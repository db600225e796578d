//! The `console` section of `clipfilterd bench` (not run by default): what an open console tab
//! costs the daemon, and how fast its pipelines page loads.
//!
//! - a daemon (this binary's `run`) with `--console-pipelines` live test-pattern pipelines
//!   (320x240 at 10 fps, a sample every 500 ms, the history on) on the bench's model;
//! - its CPU (user + system time from `/proc`) over `--seconds` without a tab and with one
//!   tab (headless Chromium on the pipelines page), taking turns [`ROUNDS`] times;
//! - page load: from the navigation's start to every pipeline's card showing its state, a
//!   timeline with points and its latest thumbnail; the median of [`LOADS`] loads.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::webdriver::Browser;
use super::{BenchArgs, ROUNDS};

/// Page loads timed.
const LOADS: usize = 5;
/// How long the daemon and the page get to be ready.
const READY: Duration = Duration::from_secs(120);

/// The daemon under measurement and its folder; killed and removed when dropped.
struct Daemon(Child, std::path::PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// CPU seconds `pid` has used (user + system).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("unreadable /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz.max(1.0))
}

/// Cores the daemon used over `seconds`.
fn cores(pid: u32, seconds: f64) -> anyhow::Result<f64> {
    let (c0, t0) = (cpu_seconds(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    Ok((cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64())
}

fn config(dir: &Path, args: &BenchArgs, port: u16, pipelines: usize) -> String {
    let mut text = format!(
        "state_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\n[model]\npath = \"{}\"\nvariant = \"{}\"\n\n[[output]]\nname = \"log\"\ntype = \"jsonl\"\npath = \"{}\"\n",
        dir.join("state").display(),
        std::path::absolute(&args.model.model)
            .unwrap_or_else(|_| args.model.model.clone())
            .display(),
        args.model.variant.name(),
        dir.join("events.jsonl").display(),
    );
    let patterns = [
        "red", "green", "blue", "white", "black", "ball", "snow", "smpte",
    ];
    for i in 0..pipelines {
        text.push_str(&format!(
            "\n[[pipeline]]\nname = \"cam{i:02}\"\nlaunch = \"videotestsrc is-live=true pattern={} ! video/x-raw,width=320,height=240,framerate=10/1\"\ninterval = \"500ms\"\nprompts = [\"a red picture\", \"a green picture\", \"a blue picture\"]\n",
            patterns[i % patterns.len()]
        ));
    }
    text
}

/// Waits until `/status` shows `n` pipelines running.
fn wait_running(port: u16, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY;
    let url = format!("http://127.0.0.1:{port}/status");
    loop {
        let running = ureq::get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map_or(0, |s| {
                s["pipelines"].as_array().map_or(0, |ps| {
                    ps.iter().filter(|p| p["state"] == "running").count()
                })
            });
        if running >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{running} of {n} pipelines running after {READY:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the section.
pub fn section(args: &BenchArgs) -> anyhow::Result<Value> {
    let n = args.console_pipelines;
    let dir = std::env::temp_dir().join(format!("clipfilter-bench-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let path = dir.join("clipfilterd.toml");
    std::fs::write(&path, config(&dir, args, port, n))?;
    let daemon = Daemon(
        Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(&path)
            .env("CLIPFILTER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log"))?)
            .spawn()
            .context("starting the daemon")?,
        dir,
    );
    let pid = daemon.0.id();
    wait_running(port, n).with_context(|| {
        let log = std::fs::read_to_string(daemon.1.join("daemon.log")).unwrap_or_default();
        format!(
            "the daemon: {}",
            log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
        )
    })?;
    let browser = Browser::start(1400, 1000)?;
    let url = format!("http://127.0.0.1:{port}/#pipelines");
    let ready = format!(
        "const cards = document.querySelectorAll('.pipeline'); if (cards.length < {n}) return null;
         for (const c of cards) {{
           const chart = c.querySelector('.chart'), img = c.querySelector('img.latest');
           if (!c.querySelector('.state').textContent || !chart.querySelector('canvas')
               || !(Number(chart.dataset.points) > 0) || !img.complete || !(img.naturalWidth > 0)) return null;
         }}
         return performance.now();"
    );
    // A first load warms the history's thumbnails and the browser's cache.
    browser.goto(&url)?;
    browser.wait("the pipelines page", &ready, json!([]), READY)?;

    println!(
        "\nconsole: {n} live pipelines, daemon CPU in cores over {:.0} s windows",
        args.seconds
    );
    let mut loads = Vec::new();
    for _ in 0..LOADS {
        browser.goto("about:blank")?;
        browser.goto(&url)?;
        let ms = browser.wait("the pipelines page", &ready, json!([]), READY)?;
        loads.push(ms.as_f64().unwrap_or(f64::NAN));
    }
    loads.sort_by(f64::total_cmp);
    let load_ms = loads[LOADS / 2];
    println!(
        "pipelines page load with {n} pipelines: {load_ms:.0} ms (median of {LOADS}; {loads:.0?})"
    );

    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        browser.goto("about:blank")?;
        without.push(cores(pid, args.seconds)?);
        browser.goto(&url)?;
        browser.wait("the pipelines page", &ready, json!([]), READY)?;
        with.push(cores(pid, args.seconds)?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (a, b) = (mean(&without), mean(&with));
    println!(
        "daemon CPU: {a:.3} cores without a tab, {b:.3} with one tab open: {:+.1}% of a core (rounds: {without:.3?} vs {with:.3?})",
        (b - a) * 100.0
    );
    drop(browser);
    drop(daemon);
    Ok(json!({
        "pipelines": n,
        "window_seconds": args.seconds,
        "daemon_cores_no_tab": without,
        "daemon_cores_one_tab": with,
        "tab_cost_core_percent": (b - a) * 100.0,
        "page_load_ms": loads,
        "page_load_ms_median": load_ms,
    }))
}
