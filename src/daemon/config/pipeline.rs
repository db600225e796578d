//! The `[[pipeline]]` tables: one video source each, what to look for in it, and where its events
//! go. Validated in named steps (name, source, sink, interval, labels, templates, threshold,
//! action, counts, scene gate, mode, outputs), each recording its own problems.

use std::collections::BTreeSet;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawPipeline;
use super::source::{self, Source};
use super::{CONFIG_DIR, Ctx, message_of};
use crate::daemon::output::Outputs;
use crate::daemon::view::{RawView, View};
use clipfilter::error::{Error, Result};
use clipfilter::labels::{Action, LabelSet, Threshold};
use clipfilter::limits;
use clipfilter::zeroshot::Templates;
use gstclipfilter::clipfilter::{ClipFilterMode, from_nick, nicks};

/// Default time between sampled frames.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// What a pipeline matches against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// A label-set file (absolute), reloaded by the element when it changes.
    File(std::path::PathBuf),
    /// Inline prompts, one label each.
    Prompts(Vec<String>),
}

/// One `[[pipeline]]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub name: String,
    pub source: Source,
    /// A gst-launch description placed after clipfilter (default: a fake sink).
    pub sink: Option<String>,
    pub interval: Duration,
    pub labels: LabelSource,
    pub templates: Option<String>,
    pub threshold: Option<Threshold>,
    pub action: Option<Action>,
    pub enter: Option<u32>,
    pub leave: Option<u32>,
    pub mode: ClipFilterMode,
    /// Scene-change gate threshold (the element's `scene-gate`); `None`: automatic, on for
    /// live sources.
    pub scene_gate: Option<f64>,
    /// Largest decoded frame, in pixels (the element's `max-frame-pixels`; `None`: its default).
    pub max_frame_pixels: Option<u64>,
    pub snapshots: bool,
    /// What the model sees: fit, tiles, regions, and what actions cover.
    pub view: View,
    /// Names of the outputs its events go to (already checked against `[[output]]`).
    pub outputs: Vec<String>,
}

/// Validates every `[[pipeline]]` (`None` entries could not be read; `outputs` is `None` when
/// the outputs are unusable), recording every problem.
pub(super) fn pipelines(
    cx: &Ctx<'_>,
    raw: &[Option<Spanned<RawPipeline>>],
    outputs: Option<&Outputs>,
) -> Option<Vec<PipelineConfig>> {
    let mut names: Vec<String> = Vec::with_capacity(raw.len());
    let mut pipelines = Some(Vec::with_capacity(raw.len()));
    for (i, p) in raw.iter().enumerate() {
        let p = p.as_ref().map(Spanned::get_ref);
        let name = p.and_then(|p| cx.keep(name(cx, i, p, &names)));
        names.push(name.clone().unwrap_or_default());
        let pipeline = p.and_then(|p| pipeline(cx, i, p, name, outputs));
        match (pipeline, &mut pipelines) {
            (Some(p), Some(list)) => list.push(p),
            _ => pipelines = None,
        }
    }
    pipelines
}

/// Validates `[[pipeline]]` number `i`, whose `name` is already checked.
fn pipeline(
    cx: &Ctx<'_>,
    i: usize,
    p: &RawPipeline,
    name: Option<String>,
    outputs: Option<&Outputs>,
) -> Option<PipelineConfig> {
    let at = |f: &str| format!("pipeline[{i}].{f}");
    let source = source::source(cx, p, &at);
    let sink = cx.keep(sink(cx, p, &at));
    let interval = cx.keep(interval(cx, p, &at));
    let labels = cx.keep(labels(cx, p, &at));
    let templates = cx.keep(templates(cx, p, &at));
    let threshold = cx.keep(threshold(cx, p, &at));
    let enough_prompts = match (&labels, threshold) {
        (Some(labels), Some(threshold)) => cx.keep(enough_prompts(cx, p, &at, labels, threshold)),
        _ => None,
    };
    let action = cx.keep(action(cx, p, &at));
    let enter = cx.keep(count(cx, &p.enter, &at("enter")));
    let leave = cx.keep(count(cx, &p.leave, &at("leave")));
    let scene_gate = cx.keep(scene_gate(cx, p, &at));
    let max_frame_pixels = cx.keep(max_frame_pixels(cx, p, &at));
    let mode = cx.keep(mode(cx, p, &at));
    let view = cx.keep(View::parse(
        &RawView {
            fit: &p.fit,
            tiles: &p.tiles,
            tile_overlap: &p.tile_overlap,
            whole_frame: p.whole_frame,
            action_scope: &p.action_scope,
            regions: &p.region,
        },
        &|span, field, message| cx.err(span, at(field), message),
    ));
    let outputs = outputs.and_then(|all| cx.keep(output_names(cx, p, &at, all)));
    enough_prompts?;
    Some(PipelineConfig {
        name: name?,
        source: source?,
        sink: sink?,
        interval: interval?,
        labels: labels?,
        templates: templates?,
        threshold: threshold?,
        action: action?,
        enter: enter?,
        leave: leave?,
        mode: mode?,
        scene_gate: scene_gate?,
        max_frame_pixels: max_frame_pixels?,
        snapshots: p.snapshots.unwrap_or(true),
        view: view?,
        outputs: outputs?,
    })
}

/// `name`: usable in file names, metric labels and MQTT topics, and unlike the `earlier` ones.
fn name(cx: &Ctx<'_>, i: usize, p: &RawPipeline, earlier: &[String]) -> Result<String> {
    let name = p.name.get_ref().trim().to_string();
    let field = format!("pipeline[{i}].name");
    if !valid_name(&name) {
        return Err(cx.err(
            Some(p.name.span()),
            field,
            format!("`{name}`: use 1 to 64 letters, digits, `_`, `-` or `.` (it names files, metrics and MQTT topics)"),
        ));
    }
    if let Some(first) = earlier.iter().position(|n| *n == name) {
        return Err(cx.err(
            Some(p.name.span()),
            field,
            format!("duplicate pipeline name `{name}` (pipeline[{first}] has it too)"),
        ));
    }
    Ok(name)
}

/// Whether `name` can name a pipeline: it appears in file names, metric labels and MQTT topics.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
}

/// `sink`: a gst-launch description after clipfilter.
fn sink(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<Option<String>> {
    match &p.sink {
        Some(s) if s.get_ref().trim().is_empty() => {
            Err(cx.err(Some(s.span()), at("sink"), "must not be empty"))
        }
        Some(s) => Ok(Some(
            s.get_ref()
                .trim()
                .replace(CONFIG_DIR, &cx.base().display().to_string()),
        )),
        None => Ok(None),
    }
}

fn interval(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<Duration> {
    let Some(d) = &p.interval else {
        return Ok(DEFAULT_INTERVAL);
    };
    let interval = cx.duration(d, &at("interval"))?;
    if interval.as_nanos() > u128::from(*limits::INTERVAL_NS.end()) {
        return Err(cx.err(
            Some(d.span()),
            at("interval"),
            format!(
                "{:?} is longer than {} (at most one sample a day)",
                d.get_ref(),
                crate::daemon::duration::format(Duration::from_nanos(*limits::INTERVAL_NS.end()))
            ),
        ));
    }
    Ok(interval)
}

/// `labels` (a label-set file) or `prompts`.
fn labels(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<LabelSource> {
    match (&p.labels, &p.prompts) {
        (Some(l), None) if l.get_ref().as_os_str().is_empty() => {
            Err(cx.err(Some(l.span()), at("labels"), "must not be empty"))
        }
        (Some(l), None) => Ok(LabelSource::File(cx.resolve(l.get_ref()))),
        (None, Some(pr)) => {
            let set = LabelSet::from_prompts(pr.get_ref(), Templates::None)
                .map_err(|e| cx.err(Some(pr.span()), at("prompts"), message_of(e)))?;
            if let Some(bad) = pr
                .get_ref()
                .iter()
                .find(|s| s.contains(';') || s.contains('\n'))
            {
                return Err(cx.err(
                    Some(pr.span()),
                    at("prompts"),
                    format!("{bad:?}: a prompt cannot contain `;` or a new line"),
                ));
            }
            Ok(LabelSource::Prompts(
                set.labels.into_iter().map(|l| l.name).collect(),
            ))
        }
        (Some(l), Some(_)) => Err(cx.err(
            Some(l.span()),
            at("labels"),
            "give `labels` or `prompts`, not both",
        )),
        (None, None) => Err(cx.err(
            Some(p.name.span()),
            at("labels"),
            "a pipeline needs `labels` (a label-set file) or `prompts`",
        )),
    }
}

fn templates(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<Option<String>> {
    let Some(t) = &p.templates else {
        return Ok(None);
    };
    let text = t.get_ref().trim();
    text.parse::<Templates>()
        .map_err(|e| cx.err(Some(t.span()), at("templates"), message_of(e)))?;
    Ok(Some(text.to_string()))
}

/// `min_probability` or `min_cosine`.
fn threshold(
    cx: &Ctx<'_>,
    p: &RawPipeline,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<Threshold>> {
    match (&p.min_probability, &p.min_cosine) {
        (Some(pr), Some(_)) => Err(cx.err(
            Some(pr.span()),
            at("min_probability"),
            "give min_probability or min_cosine, not both",
        )),
        (Some(pr), None) => {
            let v = *pr.get_ref();
            if !(v > 0.0 && v <= 1.0) {
                return Err(cx.err(
                    Some(pr.span()),
                    at("min_probability"),
                    format!("{v} is outside (0, 1]"),
                ));
            }
            Ok(Some(Threshold::Probability(v as f32)))
        }
        (None, Some(c)) => {
            let v = *c.get_ref();
            if !(-1.0..=1.0).contains(&v) {
                return Err(cx.err(
                    Some(c.span()),
                    at("min_cosine"),
                    format!("{v} is outside [-1, 1]"),
                ));
            }
            Ok(Some(Threshold::Cosine(v as f32)))
        }
        (None, None) => Ok(None),
    }
}

/// A probability threshold (the default) needs two prompts at least: one alone always has
/// probability 1.
fn enough_prompts(
    cx: &Ctx<'_>,
    p: &RawPipeline,
    at: &dyn Fn(&str) -> String,
    labels: &LabelSource,
    threshold: Option<Threshold>,
) -> Result<()> {
    if let (LabelSource::Prompts(prompts), Some(Threshold::Probability(_)) | None) =
        (labels, threshold)
        && prompts.len() < 2
    {
        return Err(cx.err(
            p.prompts.as_ref().map(Spanned::span),
            at("prompts"),
            "with a single prompt its probability is always 1: add prompts or set min_cosine",
        ));
    }
    Ok(())
}

fn action(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<Option<Action>> {
    let Some(a) = &p.action else {
        return Ok(None);
    };
    a.get_ref().parse::<Action>().map(Some).map_err(|_| {
        cx.err(
            Some(a.span()),
            at("action"),
            format!("`{}`: expected none, drop, blank or pixelate", a.get_ref()),
        )
    })
}

/// `enter` or `leave`: consecutive samples.
fn count(cx: &Ctx<'_>, raw: &Option<Spanned<u32>>, field: &str) -> Result<Option<u32>> {
    match raw {
        Some(n) if !limits::SAMPLES.contains(n.get_ref()) => Err(cx.err(
            Some(n.span()),
            field,
            format!("must be {}", limits::describe(&limits::SAMPLES)),
        )),
        Some(n) => Ok(Some(*n.get_ref())),
        None => Ok(None),
    }
}

fn scene_gate(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<Option<f64>> {
    match &p.scene_gate {
        Some(g) if !limits::SCENE_GATE.contains(g.get_ref()) => Err(cx.err(
            Some(g.span()),
            at("scene_gate"),
            format!(
                "{} is outside {}..={} (mean 8-bit level difference; 0 turns the gate off)",
                g.get_ref(),
                limits::SCENE_GATE.start(),
                limits::SCENE_GATE.end()
            ),
        )),
        g => Ok(g.as_ref().map(|g| *g.get_ref())),
    }
}

/// `max_frame_pixels`: the largest decoded frame the element takes.
fn max_frame_pixels(
    cx: &Ctx<'_>,
    p: &RawPipeline,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<u64>> {
    match &p.max_frame_pixels {
        Some(n) if !limits::FRAME_PIXELS.contains(n.get_ref()) => Err(cx.err(
            Some(n.span()),
            at("max_frame_pixels"),
            format!(
                "must be {} (pixels of one frame, width x height)",
                limits::describe(&limits::FRAME_PIXELS)
            ),
        )),
        n => Ok(n.as_ref().map(|n| *n.get_ref())),
    }
}

fn mode(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<ClipFilterMode> {
    let Some(m) = &p.mode else {
        return Ok(ClipFilterMode::default());
    };
    from_nick::<ClipFilterMode>(m.get_ref()).ok_or_else(|| {
        cx.err(
            Some(m.span()),
            at("mode"),
            format!(
                "`{}`: expected {}",
                m.get_ref(),
                nicks::<ClipFilterMode>().join(" or ")
            ),
        )
    })
}

/// `outputs`: names from `[[output]]`, each once (default: every output).
fn output_names(
    cx: &Ctx<'_>,
    p: &RawPipeline,
    at: &dyn Fn(&str) -> String,
    all: &Outputs,
) -> Result<Vec<String>> {
    let Some(o) = &p.outputs else {
        return Ok(all.iter().map(|o| o.name().to_string()).collect());
    };
    let mut seen = BTreeSet::new();
    if let Some(dup) = o.get_ref().iter().find(|n| !seen.insert(n.as_str())) {
        return Err(cx.err(
            Some(o.span()),
            at("outputs"),
            format!("output {dup:?} is listed twice"),
        ));
    }
    all.check_names(cx.path, &at("outputs"), o.get_ref())
        .map_err(|e| match e {
            Error::Config { message, .. } => cx.err(Some(o.span()), at("outputs"), message),
            other => other,
        })?;
    Ok(o.get_ref().clone())
}
