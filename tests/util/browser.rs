//! A real browser for the tests: headless Chromium through chromedriver, with the WebDriver
//! client `clipfilterd bench` uses ([`clipfilterd::cli::bench::webdriver`]); here every failure
//! fails the test.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::PATIENCE;
use clipfilterd::cli::bench::webdriver;

/// A headless Chromium session of 1400x1000.
pub struct Browser(webdriver::Browser);

impl Browser {
    pub fn start() -> Browser {
        Browser(webdriver::Browser::start(1400, 1000).unwrap_or_else(|e| panic!("{e:#}")))
    }

    pub fn goto(&self, url: &str) {
        self.0.goto(url).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.0.run(script, args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until `script` returns something other than `null`, `false` or `""`; returns it.
    pub fn wait(&self, what: &str, script: &str, args: Value) -> Value {
        self.0
            .wait(what, script, args, PATIENCE)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn click(&self, css: &str) {
        self.0.click(css).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.0
            .type_into(css, text)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn text(&self, css: &str) -> String {
        self.0.text(css).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.0.screenshot().unwrap_or_else(|e| panic!("{e:#}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Where the tests put their screenshots: `target/console-screenshots/`.
pub fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}
