//! Query vectors for a search, from words or from an example image, with the engine that embeds
//! the samples.

use std::path::Path;

use crate::error::{Error, Result};
use clipfilter::engine::{Engine, normalized};
use clipfilter::zeroshot::{Templates, ensemble};

/// The normalised embedding of `text`, expanded with `templates` and ensembled as a label's
/// prompts are.
pub fn text(engine: &Engine, text: &str, templates: &Templates) -> Result<Vec<f32>> {
    let t = text.trim();
    if t.is_empty() {
        return Err(Error::invalid("query", "the search text is empty"));
    }
    let texts = templates.expand(t);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = engine.embed_texts(&refs)?;
    Ok(normalized(ensemble(&embeddings)))
}

/// The normalised embedding of an encoded image (`name` names it in errors).
pub fn image(engine: &Engine, bytes: &[u8], name: &Path) -> Result<Vec<f32>> {
    Ok(engine.embed_image_bytes(bytes, name)?)
}

/// A search as the command line and the HTTP API take it.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub text: Option<String>,
    /// An example image (encoded bytes) and what to call it in errors.
    pub image: Option<(Vec<u8>, std::path::PathBuf)>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub pipelines: Option<Vec<String>>,
    pub top: usize,
    pub min_score: Option<f32>,
    pub templates: Option<String>,
}

/// Parses `--since`/`--until` text (see [`super::time`]); a user error naming the flag.
pub fn parse_when(what: &str, text: Option<&str>, now_ms: i64) -> Result<Option<i64>> {
    text.map(|t| super::time::parse_time(t, now_ms).map_err(|m| Error::invalid(what, m)))
        .transpose()
}

/// Runs `req` against `history` with `engine` (which embedded the samples).
pub fn search(
    history: &super::History,
    engine: &Engine,
    req: &SearchRequest,
) -> Result<super::search::Found> {
    let now = super::record::now_ms();
    let since_ms = parse_when("since", req.since.as_deref(), now)?;
    let until_ms = parse_when("until", req.until.as_deref(), now)?;
    if let (Some(a), Some(b)) = (since_ms, until_ms)
        && a > b
    {
        return Err(Error::invalid("until", "comes before --since"));
    }
    let templates: Templates = match req.templates.as_deref() {
        None => Templates::None,
        Some(t) if t.contains("{}") => Templates::custom(
            t.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )?,
        Some(t) => t.parse()?,
    };
    let vector = match (&req.text, &req.image) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid("query", "give a text or an image, not both"));
        }
        (Some(t), None) => text(engine, t, &templates)?,
        (None, Some((bytes, name))) => image(engine, bytes, name)?,
        (None, None) => return Err(Error::invalid("query", "the search text is empty")),
    };
    super::search::search(
        history,
        &super::search::Query {
            vector,
            model: engine.image_fingerprint()?,
            since_ms,
            until_ms,
            pipelines: req.pipelines.clone(),
            top: req.top,
            min_score: req.min_score,
            threads: 0,
        },
    )
}

/// A search's answer as JSON; `thumbnail` names where a sample's thumbnail can be had.
pub fn found_json(
    found: &super::search::Found,
    thumbnail: &dyn Fn(i64) -> Option<String>,
) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = found
        .ranges
        .iter()
        .map(|r| {
            serde_json::json!({
                "pipeline": r.pipeline,
                "start": super::time::format_ms(r.start_ms),
                "end": super::time::format_ms(r.end_ms),
                "start_ms": r.start_ms,
                "end_ms": r.end_ms,
                "best_score": r.best_score,
                "sample": r.best_sample,
                "time": super::time::format_ms(r.best_time_ms),
                "stream_time": r.best_stream_time.map(|t| t as f64 / 1e9),
                "start_stream_time": r.start_stream_time.map(|t| t as f64 / 1e9),
                "end_stream_time": r.end_stream_time.map(|t| t as f64 / 1e9),
                "hits": r.hits,
                "thumbnail": thumbnail(r.best_sample),
            })
        })
        .collect();
    serde_json::json!({
        "ranges": ranges,
        "scanned": found.scanned,
        "other_models": found.other_models,
        "cutoff": found.cutoff,
        "took_ms": found.took.as_secs_f64() * 1000.0,
    })
}

/// Replays `window` with the label set in `toml` (`path` names it in errors), compiled by
/// `engine` with each pipeline's defaults.
pub fn backtest(
    history: &super::History,
    engine: &Engine,
    toml: &str,
    path: &Path,
    window: &super::backtest::Window,
) -> Result<super::backtest::Report> {
    let set = clipfilter::labels::LabelSet::from_toml_str(toml, path)?;
    let model = engine.image_fingerprint()?;
    if history.model(&model)?.is_none() {
        return Err(Error::invalid(
            "history",
            format!(
                "{}: no samples were embedded by the model {} (backtests replay embeddings of the model that compiles the labels)",
                history.dir().display(),
                engine.model().dir.display()
            ),
        ));
    }
    super::backtest::backtest(history, &model, window, &|defaults| {
        Ok(engine.compile_labels(&set, defaults)?)
    })
}

fn boundary_json(b: &super::backtest::Boundary) -> serde_json::Value {
    serde_json::json!({
        "time": super::time::format_ms(b.time_ms),
        "time_ms": b.time_ms,
        "frame": b.frame,
        "pts": b.pts.map(|t| t as f64 / 1e9),
        "stream_time": b.stream_time.map(|t| t as f64 / 1e9),
        "sample": b.sample,
        "score": b.score,
        "probability": b.probability,
        "reason": b.reason,
    })
}

/// An episode as JSON.
pub fn episode_json(
    e: &super::backtest::Episode,
    thumbnail: &dyn Fn(i64) -> Option<String>,
) -> serde_json::Value {
    serde_json::json!({
        "pipeline": e.pipeline,
        "label": e.label,
        "start": boundary_json(&e.start),
        "end": e.end.as_ref().map(boundary_json),
        "seconds": e.end.as_ref().map(|end| (end.time_ms - e.start.time_ms) as f64 / 1000.0),
        "thumbnail": e.start.sample.and_then(thumbnail),
    })
}

/// A backtest's answer as JSON.
pub fn report_json(
    report: &super::backtest::Report,
    thumbnail: &dyn Fn(i64) -> Option<String>,
) -> serde_json::Value {
    let counts = report.counts();
    let count = |d| counts.get(&d).copied().unwrap_or(0);
    use super::backtest::Difference;
    serde_json::json!({
        "summary": {
            "same": count(Difference::Same),
            "changed": count(Difference::Changed),
            "added": count(Difference::Added),
            "removed": count(Difference::Removed),
        },
        "differences": report.compared.iter().filter(|c| c.difference != Difference::Same).map(|c| serde_json::json!({
            "difference": c.difference.name(),
            "pipeline": c.pipeline,
            "label": c.label,
            "new": c.new.as_ref().map(|e| episode_json(e, thumbnail)),
            "live": c.live.as_ref().map(|e| episode_json(e, thumbnail)),
        })).collect::<Vec<_>>(),
        "episodes": report.episodes.iter().map(|e| episode_json(e, thumbnail)).collect::<Vec<_>>(),
        "live": report.live.iter().map(|e| episode_json(e, thumbnail)).collect::<Vec<_>>(),
        "samples": report.samples,
        "reused_cosines": report.reused,
        "rescored_cosines": report.rescored,
        "skipped": report.skipped,
    })
}
