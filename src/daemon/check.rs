//! `clipfilterd check` for a daemon configuration: everything [`Config::parse`] checks, then
//! what needs the machine: label-set files, the GStreamer elements each source needs, `launch`
//! and `sink` descriptions, the ONNX Runtime library and the model. Every problem is reported,
//! each with the file, line and field.

use std::path::Path;

use crate::daemon::config::source::SourceKind;
use crate::daemon::config::{Config, LabelSource, PipelineConfig, locate};
use crate::daemon::{model, pipeline, source};
use clipfilter::error::{Error, Problems, Result};
use clipfilter::labels::LabelSet;
use clipfilter::model::ModelDir;
use clipfilter::probe::ProbeModel;

/// Checks the daemon configuration `text` (the contents of `path`); returns a one-line summary.
pub fn check_file(path: &Path, text: &str) -> Result<String> {
    let config = Config::parse(text, path)?;
    crate::gstreamer::init()?;
    let mut problems = Problems::default();
    let problem = |field: &str, message: String| Error::config(path, locate(text, field), message);
    for (i, p) in config.pipelines.iter().enumerate() {
        let at = |f: &str| format!("pipeline[{i}].{f}");
        if let LabelSource::File(f) = &p.labels
            && let Err(e) =
                clipfilter::input::read_to_string(f).and_then(|text| check_labels(p, f, &text))
        {
            problems.push(problem(&at("labels"), e.to_string()));
        }
        for (field, message) in machine(p) {
            problems.push(problem(&at(field), message));
        }
    }
    if let Err(m) = model::check_library(&config.model) {
        problems.push(problem("model.onnxruntime", m));
    }
    let model = match model::resolve_model(&config.model) {
        Ok(dir) => {
            check_probes(&config, path, text, &dir, &mut problems);
            format!("model {}", dir.display())
        }
        Err(e) => {
            problems.push(problem("model", e.to_string()));
            String::new()
        }
    };
    problems.finish()?;
    Ok(format!(
        "daemon config, {} pipeline{}, {} output{}, {model}",
        config.pipelines.len(),
        if config.pipelines.len() == 1 { "" } else { "s" },
        config.outputs.len(),
        if config.outputs.len() == 1 { "" } else { "s" },
    ))
}

/// Checks the label-set `text` (for the file at `path`) as pipeline `p` would use it: the set
/// itself, its regions with the pipeline's, and the files it names (probes, pictures). What
/// `check` reports for a pipeline's labels, and what the web console checks before saving.
pub fn check_labels(p: &PipelineConfig, path: &Path, text: &str) -> Result<LabelSet> {
    let set = LabelSet::from_toml_str(text, path)?;
    let regions = set.all_regions(&p.view.regions)?;
    set.check_regions(&regions)?;
    set.check_files(None)?;
    Ok(set)
}

/// Checks that the probes of the pipelines' label sets were trained on the model in `dir` (the
/// image tower's hash is computed only when a label has a probe).
fn check_probes(config: &Config, path: &Path, text: &str, dir: &Path, problems: &mut Problems) {
    let mut identity: Option<Result<ProbeModel>> = None;
    for (i, p) in config.pipelines.iter().enumerate() {
        let LabelSource::File(f) = &p.labels else {
            continue;
        };
        let Ok(set) = LabelSet::from_file(f) else {
            continue; // reported above
        };
        if set.labels.iter().all(|l| l.probe.is_none()) {
            continue;
        }
        let m = identity.get_or_insert_with(|| {
            let md = ModelDir::open(dir, config.model.variant)?;
            ProbeModel::of(&md.dir, &md.vision_onnx, md.projection_dim.unwrap_or(0))
        });
        let result = match m {
            Ok(m) => set.check_files(Some(m)),
            Err(e) => Err(Error::invalid("model", e.to_string())),
        };
        if let Err(e) = result {
            problems.push(Error::config(
                path,
                locate(text, &format!("pipeline[{i}].labels")),
                e.to_string(),
            ));
        }
    }
}

/// What the machine lacks to run pipeline `p`: (field, problem) for each of its GStreamer
/// elements that is not installed and each description that does not parse.
fn machine(p: &PipelineConfig) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for factory in source::required_elements(p.source.kind()) {
        if gst::ElementFactory::find(factory).is_none() {
            found.push((
                "source",
                format!("the GStreamer element `{factory}` is not installed"),
            ));
        }
    }
    if p.source.kind() == SourceKind::Launch
        && let Err(m) = source::launch_bin(p.source.uri())
    {
        found.push(("launch", m));
    }
    if let Some(sink) = &p.sink
        && let Err(m) = pipeline::sink_bin(sink)
    {
        found.push(("sink", m));
    }
    found
}
