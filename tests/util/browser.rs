//! A real browser for the tests: Debian's headless Chromium driven through chromedriver's
//! WebDriver HTTP API (W3C), spoken with ureq (already a dependency; a WebDriver crate would
//! bring a second HTTP stack for a dozen calls).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{PATIENCE, free_port};

/// The W3C id of a web element in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; closed (and chromedriver stopped) when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

fn which(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} is missing: run tools/setup.sh (apt packages chromium, chromium-driver)");
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session (1400x1000).
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(which("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        while agent.get(&format!("{root}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver does not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut browser = Browser {
            driver,
            base: root.clone(),
            agent,
        };
        let session = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": which("chromium"),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1400,1000"],
                },
            }}})),
        );
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        browser.base = format!("{root}/session/{id}");
        browser
    }

    /// A WebDriver command; its `value` (panics on a WebDriver error).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
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
        let mut response = response.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 400, "WebDriver {method} {path}: {status} {value}");
        value["value"].clone()
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits until `script` returns something other than `null`, `false` or `""`; returns it.
    pub fn wait(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.run(script, args.clone());
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {}",
                self.run(
                    "return document.querySelector('main').innerText.slice(0, 2000)",
                    json!([])
                )
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), None);
    }

    /// Types `text` into the first element matching `css` (a file input takes a path).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("base64 PNG");
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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

/// Where the tests put their screenshots: `target/console-screenshots/`.
pub fn screenshots() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}
