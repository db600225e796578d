//! `clipfilterd classify`: score image files against a label set.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use super::{ModelArgs, Outcome};
use clipfilter::crops::{CropPlan, CropScores, CropSpec, Fit, score_crops};
use clipfilter::engine::{Engine, decode_image};
use clipfilter::labels::{LabelDefaults, LabelSet, Threshold};
use clipfilter::preprocess::{FrameRef, PixelFormat};
use clipfilter::worker::StreamOptions;
use clipfilter::zeroshot::Templates;

/// Arguments of `classify`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("labelsource").required(true).multiple(true).args(["labels", "label", "image"]))]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Label-set TOML file.
    #[arg(long, short = 'l', value_name = "FILE")]
    pub labels: Option<PathBuf>,

    /// A label given inline (repeatable); its text is the prompt.
    #[arg(long = "label", value_name = "TEXT")]
    pub label: Vec<String>,

    /// A label given by an example picture (repeatable): its embedding is the picture's and it
    /// is named after the file (without extension), so pictures are ranked by how much they
    /// look like it. With --label, both kinds compete in one softmax.
    #[arg(long = "image", value_name = "FILE")]
    pub image: Vec<PathBuf>,

    /// Templates for inline labels: none, single, ensemble7, imagenet80.
    #[arg(long, value_name = "NAME", requires = "label")]
    pub templates: Option<String>,

    /// How each picture becomes the model's square: crop (the reference's centre square, exact
    /// CLIPImageProcessor parity), pad (the whole picture letterboxed) or crops (overlapping
    /// squares covering it, one inference each; a label's score is its best square, named in
    /// the `crop` column). A label set's `[[region]]`s are scored too.
    #[arg(long, value_name = "FIT", default_value = "crop", value_parser = parse_fit)]
    pub fit: Fit,

    /// How many labels to show per image (0: all).
    #[arg(long, default_value_t = 5)]
    pub top: usize,

    /// Print one JSON object per image instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Image files (JPEG, PNG, WebP, BMP, TIFF, GIF).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Row<'a> {
    label: &'a str,
    cosine: f32,
    probability: f32,
    /// The crop that gave the score, when a picture is scored in several.
    #[serde(skip_serializing_if = "Option::is_none")]
    crop: Option<&'a str>,
    /// Only for labels with their own threshold in the label file.
    #[serde(skip_serializing_if = "Option::is_none")]
    matched: Option<bool>,
}

#[derive(Serialize)]
struct ImageResult<'a> {
    image: String,
    results: Vec<Row<'a>>,
}

fn parse_fit(s: &str) -> Result<Fit, String> {
    s.parse().map_err(|e: clipfilter::Error| e.to_string())
}

/// Runs `classify`.
pub fn run(args: ClassifyArgs) -> anyhow::Result<Outcome> {
    let inline = !args.label.is_empty() || !args.image.is_empty();
    let set = match (&args.labels, inline) {
        (Some(path), false) => LabelSet::from_file(path)?,
        (None, true) => {
            let templates: Templates = args.templates.as_deref().unwrap_or("none").parse()?;
            LabelSet::inline(&args.label, &args.image, templates)?
        }
        _ => bail!("give either --labels FILE or --label TEXT / --image FILE, not both"),
    };
    let engine = Engine::shared(&args.model.engine_config())?;
    // classify reports scores; thresholds only decide the `matched` column of labels that set one.
    let defaults = LabelDefaults {
        threshold: Threshold::Cosine(-1.0),
        ..LabelDefaults::default()
    };
    let compiled = engine
        .compile_labels(&set, &defaults)
        .context("embedding the labels")?;
    let own_threshold: Vec<bool> = set
        .labels
        .iter()
        .map(|l| l.threshold.is_some() && !l.negative)
        .collect();

    let spec = CropSpec {
        regions: set.all_regions(&[])?,
        ..CropSpec::whole(args.fit)
    };
    set.check_regions(&spec.regions)?;
    let mut pre = engine.preprocessor()?;
    let window = engine.config().batch.max_batch * 2;
    let mut stream = engine.stream(StreamOptions::batch(window));
    let progress = (args.images.len() > 16).then(|| progress_bar(args.images.len()));
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut outcome = Outcome::Ok;
    let mut crop_scores = CropScores::default();
    // Decode and preprocess ahead while the worker runs earlier images.
    let mut queued: std::collections::VecDeque<(PathBuf, CropPlan)> = Default::default();
    let mut next = args.images.iter();
    let mut done = 0usize;
    loop {
        while queued.len() < window {
            let Some(path) = next.next() else { break };
            match decode_image(path) {
                Ok(rgb) => {
                    let (w, h) = (rgb.width(), rgb.height());
                    let plan = CropPlan::new(&spec, &pre, w, h)?;
                    let frame = FrameRef::packed(PixelFormat::Rgb, w, h, rgb.as_raw())?;
                    let all: Vec<usize> = (0..plan.len()).collect();
                    let mut buf = stream.buffer_for(plan.len());
                    plan.preprocess(&mut pre, &frame, &all, &mut buf)?;
                    stream.submit(buf)?;
                    queued.push_back((path.clone(), plan));
                }
                Err(e) => {
                    if let Some(p) = &progress {
                        p.suspend(|| eprintln!("error: {e}"));
                    } else {
                        eprintln!("error: {e}");
                    }
                    outcome = Outcome::BadInput;
                }
            }
        }
        let Some((path, plan)) = queued.pop_front() else {
            break;
        };
        let result = stream
            .wait_result(Duration::from_secs(600))
            .ok_or_else(|| anyhow::anyhow!("the inference worker did not answer"))?;
        let embeddings = result
            .embeddings
            .map_err(|m| anyhow::anyhow!("inference failed: {m}"))?;
        stream.recycle(result.pixels);
        score_crops(&compiled, &plan.crops, &embeddings, &mut crop_scores)?;
        let winner = |i: usize| {
            crop_scores.winner[i]
                .filter(|_| plan.len() > 1)
                .map(|k| plan.crops[k].id.name.as_str())
        };
        let scores = &crop_scores.scores;
        let mut order: Vec<usize> = (0..compiled.labels.len())
            .filter(|i| !compiled.labels[*i].negative || args.top == 0)
            .collect();
        order.sort_by(|a, b| scores.probability[*b].total_cmp(&scores.probability[*a]));
        if args.top > 0 {
            order.truncate(args.top);
        }
        let rows: Vec<Row> = order
            .iter()
            .map(|&i| Row {
                label: &compiled.labels[i].name,
                cosine: scores.cosine[i],
                probability: scores.probability[i],
                crop: winner(i),
                matched: own_threshold[i]
                    .then(|| compiled.labels[i].passes(scores.cosine[i], scores.probability[i])),
            })
            .collect();
        let print = |out: &mut std::io::StdoutLock| -> std::io::Result<()> {
            if args.json {
                let line = serde_json::to_string(&ImageResult {
                    image: path.display().to_string(),
                    results: rows,
                })?;
                writeln!(out, "{line}")
            } else {
                writeln!(out, "{}", path.display())?;
                let width = compiled
                    .labels
                    .iter()
                    .map(|l| l.name.chars().count())
                    .max()
                    .unwrap_or(5)
                    .clamp(5, 60);
                writeln!(
                    out,
                    "  {:<width$}  {:>7}  {:>11}",
                    "label", "cosine", "probability"
                )?;
                for r in &rows {
                    let mark = match r.matched {
                        Some(true) => "  match",
                        _ => "",
                    };
                    let crop = r.crop.map_or(String::new(), |c| format!("  ({c})"));
                    writeln!(
                        out,
                        "  {:<width$}  {:>7.4}  {:>11.4}{mark}{crop}",
                        r.label, r.cosine, r.probability
                    )?;
                }
                Ok(())
            }
        };
        match &progress {
            Some(p) => p.suspend(|| print(&mut out))?,
            None => print(&mut out)?,
        }
        done += 1;
        if let Some(p) = &progress {
            p.inc(1);
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        images = done,
        seconds = format!("{secs:.2}"),
        images_per_s = format!("{:.1}", done as f64 / secs.max(1e-9)),
        "classified"
    );
    Ok(outcome)
}

fn progress_bar(n: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(n as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}
