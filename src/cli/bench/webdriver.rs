//! A real browser: Debian's headless Chromium driven through chromedriver's WebDriver HTTP API
//! (W3C), spoken with ureq. The `console` section of `bench` times the console in it; the
//! integration tests drive the console with it (tests/util/browser.rs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The W3C key of a web element in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver gets to answer after it starts.
const DRIVER_START: Duration = Duration::from_secs(30);

/// A headless Chromium session; closed (and chromedriver stopped) when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("session", &self.base)
            .finish_non_exhaustive()
    }
}

/// The program `name` of Debian's chromium and chromium-driver packages.
pub fn program(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "{name} is missing: run tools/setup.sh (apt packages chromium, chromium-driver)"
            )
        })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session (`width` x `height`).
    pub fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let port = free_port()?;
        let driver = Command::new(program("chromedriver")?)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            base: root.clone(),
            agent,
        };
        let deadline = Instant::now() + DRIVER_START;
        while browser.agent.get(&format!("{root}/status")).call().is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver does not answer on {root}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let session = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": program("chromium")?,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
                },
            }}})),
        )?;
        let id = session["sessionId"]
            .as_str()
            .with_context(|| format!("no WebDriver session: {session}"))?
            .to_owned();
        browser.base = format!("{root}/session/{id}");
        Ok(browser)
    }

    /// A WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut response = response.with_context(|| format!("WebDriver {method} {path}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            bail!("WebDriver {method} {path}: {status} {value}");
        }
        Ok(value["value"].clone())
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn run(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits up to `patience` until `script` returns something other than `null`, `false` or
    /// `""`; returns it.
    pub fn wait(
        &self,
        what: &str,
        script: &str,
        args: Value,
        patience: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + patience;
        loop {
            let v = self.run(script, args.clone())?;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let page = self.run(
                    "return document.body ? document.body.innerText.slice(0, 2000) : ''",
                    json!([]),
                )?;
                bail!("timed out waiting for {what}; page: {page}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        Ok(v[ELEMENT]
            .as_str()
            .with_context(|| format!("no element {css}: {v}"))?
            .to_owned())
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.call("POST", &format!("/element/{id}/click"), None)
            .map(drop)
    }

    /// Types `text` into the first element matching `css` (a file input takes a path).
    pub fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .map(drop)
    }

    /// The text of the first element matching `css`.
    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css)?;
        Ok(self
            .call("GET", &format!("/element/{id}/text"), None)?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", None)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().context("no screenshot")?)
            .context("the screenshot is not base64")?;
        if !bytes.starts_with(b"\x89PNG") {
            bail!("the screenshot is not a PNG");
        }
        Ok(bytes)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.base.contains("/session/") {
            let _ = self.agent.delete(&self.base).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
