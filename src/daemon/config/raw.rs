//! The configuration as written: serde structs with the spans of their values, read table by
//! table so that a mistake in one table (an unknown field, a wrong type) does not hide those in
//! the others. Validation (the sibling modules) turns them into the public types.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::Ctx;
use crate::daemon::output::OutputConfig;
use clipfilter::error::Result;

/// The top-level keys.
const KEYS: &[&str] = &[
    "state_dir",
    "listen",
    "http",
    "model",
    "snapshots",
    "history",
    "outbox",
    "restart",
    "output",
    "pipeline",
];

/// The whole file. A table that could not be read is left out (its problem is recorded).
#[derive(Default)]
pub(super) struct RawConfig {
    pub state_dir: Option<Spanned<PathBuf>>,
    pub listen: Option<Spanned<String>>,
    pub http: RawHttp,
    /// `None`: absent or unreadable (either is a recorded problem).
    pub model: Option<Spanned<RawModel>>,
    pub snapshots: RawSnapshots,
    pub history: RawHistory,
    pub outbox: RawOutbox,
    pub restart: RawRestart,
    /// In file order; `None` for an entry that could not be read.
    pub output: Vec<Option<Spanned<OutputConfig>>>,
    /// In file order; `None` for an entry that could not be read.
    pub pipeline: Vec<Option<Spanned<RawPipeline>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub path: Option<Spanned<PathBuf>>,
    pub repo: Option<Spanned<String>>,
    pub revision: Option<Spanned<String>>,
    pub cache_dir: Option<Spanned<PathBuf>>,
    pub variant: Option<Spanned<String>>,
    pub providers: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub require_provider: bool,
    pub threads: Option<Spanned<u32>>,
    pub max_batch: Option<Spanned<u32>>,
    pub tensorrt_cache: Option<Spanned<PathBuf>>,
    pub onnxruntime: Option<Spanned<PathBuf>>,
    pub backend: Option<Spanned<String>>,
    pub endpoints: Option<Spanned<Vec<String>>>,
    pub wire_format: Option<Spanned<String>>,
    pub image_model: Option<Spanned<String>>,
    pub text_model: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub start_timeout: Option<Spanned<String>>,
    pub fallback: Option<Spanned<String>>,
    pub tls_ca: Option<Spanned<PathBuf>>,
    pub tls_certificate: Option<Spanned<PathBuf>>,
    pub tls_key: Option<Spanned<PathBuf>>,
    pub tls_domain: Option<Spanned<String>>,
}

/// A size: bytes, or a string such as `"256MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSnapshots {
    pub dir: Option<Spanned<PathBuf>>,
    pub max_files: Option<Spanned<u64>>,
    pub max_bytes: Option<Spanned<RawSize>>,
    pub quality: Option<Spanned<u8>>,
    pub draw_box: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHistory {
    pub enabled: Option<bool>,
    pub dir: Option<Spanned<PathBuf>>,
    pub keep: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<RawSize>>,
    pub thumbnails: Option<bool>,
    pub thumbnail_size: Option<Spanned<u32>>,
    pub queue: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub token: Option<Spanned<crate::daemon::secret::Secret>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub max_pending: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestart {
    pub initial: Option<Spanned<String>>,
    pub max: Option<Spanned<String>>,
    pub stall_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub name: Spanned<String>,
    pub source: Option<Spanned<String>>,
    pub launch: Option<Spanned<String>>,
    pub transport: Option<Spanned<String>>,
    pub latency: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<crate::daemon::secret::Secret>>,
    #[serde(rename = "loop")]
    pub looping: Option<Spanned<bool>>,
    pub realtime: Option<Spanned<bool>>,
    pub sink: Option<Spanned<String>>,
    #[serde(default)]
    pub keyframes_only: bool,
    pub interval: Option<Spanned<String>>,
    pub labels: Option<Spanned<PathBuf>>,
    pub prompts: Option<Spanned<Vec<String>>>,
    pub templates: Option<Spanned<String>>,
    pub min_probability: Option<Spanned<f64>>,
    pub min_cosine: Option<Spanned<f64>>,
    pub action: Option<Spanned<String>>,
    pub enter: Option<Spanned<u32>>,
    pub leave: Option<Spanned<u32>>,
    pub mode: Option<Spanned<String>>,
    pub scene_gate: Option<Spanned<f64>>,
    pub max_frame_pixels: Option<Spanned<u64>>,
    pub snapshots: Option<bool>,
    pub outputs: Option<Spanned<Vec<String>>>,
    // What the model sees (see `daemon/view.rs`).
    pub fit: Option<Spanned<String>>,
    pub tiles: Option<Spanned<String>>,
    pub tile_overlap: Option<Spanned<f64>>,
    pub whole_frame: Option<bool>,
    pub action_scope: Option<Spanned<String>>,
    #[serde(default)]
    pub region: Vec<crate::daemon::view::RawRegion>,
}

impl RawConfig {
    /// Reads the text of `cx`. A TOML syntax error stops here; a table that does not fit its
    /// struct is recorded in `cx` and the others are read on.
    pub(super) fn read(cx: &Ctx<'_>) -> Result<RawConfig> {
        let root = DeTable::parse(cx.text).map_err(|e| cx.toml(&e))?;
        let mut raw = RawConfig::default();
        let mut has_model = false;
        for (key, value) in root.into_inner() {
            match key.get_ref().as_ref() {
                "state_dir" => raw.state_dir = one(cx, value),
                "listen" => raw.listen = one(cx, value),
                "http" => raw.http = table(cx, value),
                "model" => {
                    has_model = true;
                    raw.model = one(cx, value);
                }
                "snapshots" => raw.snapshots = table(cx, value),
                "history" => raw.history = table(cx, value),
                "outbox" => raw.outbox = table(cx, value),
                "restart" => raw.restart = table(cx, value),
                "output" => raw.output = list(cx, value),
                "pipeline" => raw.pipeline = list(cx, value),
                other => {
                    let e = <toml::de::Error as serde::de::Error>::unknown_field(other, KEYS);
                    cx.push(cx.err_at(key.span().start, e.message()));
                }
            }
        }
        if !has_model {
            cx.problem(
                None,
                "model",
                "no [model] table: add one with `repo = \"Xenova/clip-vit-base-patch32\"` (fetched with `clipfilterd model fetch`) or `path = \"/path/to/model\"`",
            );
        }
        Ok(raw)
    }
}

/// One value as `T`, or `None` with its problem recorded (at the value when serde does not say
/// where, as for the `[[output]]` types).
fn one<'i, T: Deserialize<'i>>(cx: &Ctx<'_>, value: Spanned<DeValue<'i>>) -> Option<Spanned<T>> {
    let span = value.span();
    cx.keep(
        Spanned::<T>::deserialize(ValueDeserializer::from(value)).map_err(|e| match e.span() {
            Some(_) => cx.toml(&e),
            None => cx.err_at(span.start, e.message()),
        }),
    )
}

/// A table with defaults for what it leaves out (all of them when it cannot be read).
fn table<'i, T: Deserialize<'i> + Default>(cx: &Ctx<'_>, value: Spanned<DeValue<'i>>) -> T {
    one(cx, value).map(Spanned::into_inner).unwrap_or_default()
}

/// An array of tables, each read on its own.
fn list<'i, T: Deserialize<'i>>(
    cx: &Ctx<'_>,
    value: Spanned<DeValue<'i>>,
) -> Vec<Option<Spanned<T>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => items.into_iter().map(|v| one(cx, v)).collect(),
        // Not an array: serde says what was expected.
        other => {
            one::<Vec<T>>(cx, Spanned::new(span, other));
            Vec::new()
        }
    }
}
