//! `clipfilterd calibrate`: thresholds from example pictures and from review marks in the
//! sample history.
//!
//! The engine does the work (`clipfilter::calibrate`: the label set's live scoring on every
//! example and reviewed embedding, PR curves, the threshold choice; `clipfilter::labels::edit`:
//! rewriting the file); this module reads the arguments, shows progress, prints the table,
//! draws the plots.

mod plot;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::history::HistoryArgs;
use super::{ModelArgs, Outcome};
use crate::error::Error;
use crate::history::{History, review};
use clipfilter::calibrate::{self, Examples, LabelScores, Marked, PrPoint, Target, examples::NONE};
use clipfilter::engine::Engine;
use clipfilter::labels::{LabelDefaults, LabelSet, Threshold, edit};

/// Arguments of `calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The model (with --from-reviews, the one that embedded the reviewed samples).
    #[command(flatten)]
    pub model: ModelArgs,

    /// Label-set TOML file to calibrate.
    #[arg(long, short = 'l', value_name = "FILE")]
    pub labels: PathBuf,

    /// Folder of example pictures: one folder per label (pictures where it should fire) and
    /// none/ (pictures where no label should fire).
    #[arg(long, value_name = "DIR", required_unless_present = "from_reviews")]
    pub examples: Option<PathBuf>,

    /// Calibrate on the review marks of the sample history (POST /api/review): a label's
    /// positives are the samples marked true_positive or false_negative for it, its negatives
    /// those marked false_positive or true_negative. With --examples, both count.
    #[arg(long)]
    pub from_reviews: bool,

    /// Only marks made since then: an age ("30d") or a time.
    #[arg(long, value_name = "WHEN", requires = "from_reviews")]
    pub since: Option<String>,

    #[command(flatten)]
    pub history: HistoryArgs,

    /// Choose, per label, the threshold with the most recall at this precision or more.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.9,
        conflicts_with = "max_f1"
    )]
    pub precision: f32,

    /// Choose, per label, the threshold with the best F1 instead.
    #[arg(long)]
    pub max_f1: bool,

    /// Rewrite the label file with the new thresholds (only the numbers change; a running
    /// element or daemon reloads it).
    #[arg(long)]
    pub write: bool,

    /// Folder for the plots (one SVG per label).
    #[arg(long, value_name = "DIR", default_value = "calibration")]
    pub plots: PathBuf,

    /// Draw no plots.
    #[arg(long)]
    pub no_plots: bool,

    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One label's result.
#[derive(Debug, Serialize)]
pub struct LabelReport {
    pub label: String,
    /// "probability" or "cosine".
    pub score: &'static str,
    pub positives: usize,
    pub negatives: usize,
    pub before: f32,
    pub before_precision: f64,
    pub before_recall: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<PathBuf>,
}

/// What the review marks gave (`--from-reviews`).
#[derive(Debug, Serialize)]
pub struct ReviewsUsed {
    pub history: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Marks in the window.
    pub total: usize,
    /// Marks used (the latest of each sample and label).
    pub used: usize,
    pub replaced: usize,
    pub without_embedding: usize,
    pub other_models: usize,
}

/// The whole result (`--json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub labels_file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviews: Option<ReviewsUsed>,
    pub target: String,
    pub written: bool,
    pub labels: Vec<LabelReport>,
}

fn kind_name(t: Threshold) -> &'static str {
    match t {
        Threshold::Cosine(_) => "cosine",
        Threshold::Probability(_) => "probability",
    }
}

fn value_of(t: Threshold) -> f32 {
    match t {
        Threshold::Cosine(v) | Threshold::Probability(v) => v,
    }
}

/// Checks that every example folder names a label of the set that can fire (or is `none`).
fn check_folders(set: &LabelSet, examples: &Examples, labels_file: &Path) -> Result<(), Error> {
    let mut problems = Vec::new();
    for f in examples.folders.iter().filter(|f| *f != NONE) {
        match set.labels.iter().find(|l| l.name == *f) {
            None => problems.push(format!(
                "folder `{f}` is not a label of {} (labels: {}; pictures where no label should fire go in {NONE}/)",
                labels_file.display(),
                set.labels
                    .iter()
                    .filter(|l| !l.negative)
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(l) if l.negative => problems.push(format!(
                "folder `{f}` is a negative label, which never fires: put its pictures in {NONE}/"
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("examples {}", examples.dir.display()),
            problems.join("; "),
        ))
    }
}

/// Checks that every reviewed label is a label of the set that can fire.
fn check_review_labels(
    set: &LabelSet,
    marks: &[review::Review],
    labels_file: &Path,
    history: &Path,
) -> Result<(), Error> {
    let mut problems: Vec<String> = Vec::new();
    for m in marks {
        let problem = match set.labels.iter().find(|l| l.name == m.label) {
            None => format!(
                "label `{}` is not in {} (labels: {})",
                m.label,
                labels_file.display(),
                set.labels
                    .iter()
                    .filter(|l| !l.negative)
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(l) if l.negative => format!(
                "label `{}` is a negative label of {}, which never fires",
                m.label,
                labels_file.display()
            ),
            Some(_) => continue,
        };
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("reviews in {}", history.display()),
            format!(
                "{} (calibrate the label file the reviews were made with, or --since a later time)",
                problems.join("; ")
            ),
        ))
    }
}

/// The review marks to calibrate on: the history, the marks of the engine's model, what they give.
fn read_reviews(
    args: &CalibrateArgs,
    history: &History,
    engine: &Engine,
    set: &LabelSet,
) -> anyhow::Result<(Vec<review::Review>, ReviewsUsed)> {
    let now = crate::history::record::now_ms();
    let since_ms = crate::history::query::parse_when("since", args.since.as_deref(), now)?;
    let model = engine.image_fingerprint()?;
    let usable = review::usable(history, since_ms, &model)?;
    let window = match &args.since {
        Some(s) => format!(" since {s}"),
        None => String::new(),
    };
    if usable.total == 0 {
        return Err(Error::invalid(
            "reviews",
            format!(
                "{}: no review marks{window} (mark samples or events with POST /api/review: {{\"sample\": ID, \"label\": ..., \"verdict\": \"true_positive\"}})",
                history.dir().display()
            ),
        )
        .into());
    }
    let other: usize = usable.other_models.iter().map(|(_, n)| n).sum();
    if usable.marks.is_empty() {
        let why = if other > 0 {
            format!(
                "{other} are of samples embedded by another model (image tower {}) than {} ({}): calibrate with that model (-m DIR), or review samples of this one",
                usable
                    .other_models
                    .iter()
                    .map(|(f, _)| short(f))
                    .collect::<Vec<_>>()
                    .join(", "),
                engine.model().dir.display(),
                short(&model)
            )
        } else {
            "none has an embedding (marks of events whose sample was never stored)".to_string()
        };
        return Err(Error::invalid(
            "reviews",
            format!(
                "{}: {} review marks{window}, none usable: {why}",
                history.dir().display(),
                usable.total
            ),
        )
        .into());
    }
    if other > 0 {
        eprintln!(
            "warning: {other} review marks skipped: their samples were embedded by another model than {}",
            engine.model().dir.display()
        );
    }
    if usable.without_embedding > 0 {
        eprintln!(
            "warning: {} review marks skipped: no embedding (their sample was never stored)",
            usable.without_embedding
        );
    }
    check_review_labels(set, &usable.marks, &args.labels, history.dir())?;
    let used = ReviewsUsed {
        history: history.dir().to_path_buf(),
        since: args.since.clone(),
        total: usable.total,
        used: usable.marks.len(),
        replaced: usable.replaced,
        without_embedding: usable.without_embedding,
        other_models: other,
    };
    Ok((usable.marks, used))
}

/// The first 12 characters of a fingerprint.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// Runs `calibrate`.
pub fn run(args: CalibrateArgs) -> anyhow::Result<Outcome> {
    let target = if args.max_f1 {
        Target::MaxF1
    } else {
        let range = clipfilter::limits::CALIBRATION_PRECISION;
        if !range.contains(&args.precision) {
            return Err(Error::invalid(
                "--precision",
                format!(
                    "{}: must be {}",
                    args.precision,
                    clipfilter::limits::describe(&range)
                ),
            )
            .into());
        }
        Target::Precision(args.precision)
    };
    let set = LabelSet::from_file(&args.labels)?;
    let examples = match &args.examples {
        Some(dir) => {
            let examples = Examples::scan(dir)?;
            for s in &examples.skipped {
                eprintln!("warning: skipping {}: not a picture", s.display());
            }
            check_folders(&set, &examples, &args.labels)?;
            Some(examples)
        }
        None => None,
    };
    let history = if args.from_reviews {
        Some(args.history.open_history()?.0)
    } else {
        None
    };
    let engine_config = args.model.engine_config();
    let engine = Engine::shared(&engine_config)?;
    let reviews = match &history {
        Some(h) => Some(read_reviews(&args, h, &engine, &set)?),
        None => None,
    };
    let defaults = LabelDefaults::default();
    let compiled = engine
        .compile_labels(&set, &defaults)
        .context("embedding the labels")?;
    let mut split = vec![LabelScores::default(); compiled.labels.len()];
    if let Some(examples) = &examples {
        let bar = super::progress_bar(examples.examples.len() as u64, "pictures");
        let embeddings = calibrate::embed_examples(&engine, &examples.examples, |done| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        split = calibrate::split_scores(&compiled, &examples.examples, &embeddings)?;
    }
    if let Some((marks, _)) = &reviews {
        let marked: Vec<Marked<'_>> = marks
            .iter()
            .filter_map(|m| {
                Some(Marked {
                    label: &m.label,
                    positive: m.verdict.is_positive(),
                    embedding: m.embedding.as_deref()?,
                })
            })
            .collect();
        for (all, more) in split
            .iter_mut()
            .zip(calibrate::split_marked(&compiled, &marked)?)
        {
            all.positives.extend(more.positives);
            all.negatives.extend(more.negatives);
        }
    }

    if !args.no_plots {
        std::fs::create_dir_all(&args.plots)
            .with_context(|| format!("creating {}", args.plots.display()))?;
    }
    let mut reports = Vec::new();
    let mut changes = Vec::new();
    for (i, label) in compiled.labels.iter().enumerate() {
        if label.negative {
            continue;
        }
        if label.min_zscore.is_some() {
            eprintln!(
                "note: label `{}` is not calibrated: min_zscore is relative to each pipeline's recent scores, which examples do not have",
                label.name
            );
            continue;
        }
        let s = &split[i];
        let before = calibrate::evaluate(&s.positives, &s.negatives, value_of(label.threshold));
        let mut r = LabelReport {
            label: label.name.clone(),
            score: kind_name(label.threshold),
            positives: s.positives.len(),
            negatives: s.negatives.len(),
            before: value_of(label.threshold),
            before_precision: before.precision,
            before_recall: before.recall,
            after: None,
            precision: None,
            recall: None,
            error: None,
            plot: None,
        };
        let chosen = if s.positives.is_empty() {
            let mut ways = Vec::new();
            if let Some(examples) = &examples {
                ways.push(format!(
                    "add a folder {}/{}/ with pictures where it should fire",
                    examples.dir.display(),
                    label.name
                ));
            }
            if reviews.is_some() {
                ways.push(
                    "mark samples where it should fire true_positive or false_negative (POST /api/review)"
                        .to_string(),
                );
            }
            r.error = Some(format!("no positive examples: {}", ways.join(", or ")));
            None
        } else {
            match calibrate::choose(
                &s.positives,
                &s.negatives,
                target,
                calibrate::floor_of(label.threshold),
            ) {
                Ok(c) => Some(c.point),
                Err(e) => {
                    r.error = Some(e.to_string());
                    None
                }
            }
        };
        if let Some(p) = chosen {
            r.after = Some(p.threshold);
            r.precision = Some(p.precision);
            r.recall = Some(p.recall);
            changes.push((
                label.name.clone(),
                calibrate::with_value(label.threshold, p.threshold),
            ));
        }
        if !args.no_plots && !s.positives.is_empty() {
            let path = args.plots.join(format!("{}.svg", file_safe(&label.name)));
            plot::draw(
                &path,
                &label.name,
                r.score,
                s,
                &before,
                chosen.as_ref(),
                target,
            )
            .with_context(|| format!("drawing {}", path.display()))?;
            r.plot = Some(path);
        }
        reports.push(r);
    }

    let mut written = false;
    if args.write && !changes.is_empty() {
        let text = std::fs::read_to_string(&args.labels)
            .map_err(|e| clipfilter::Error::io(&args.labels, e))?;
        let new = edit::set_thresholds(&text, &args.labels, &changes)?;
        // The edited file must still be a valid label set before it replaces the old one.
        LabelSet::from_toml_str(&new, &args.labels)?;
        if new != text {
            clipfilter::input::write_atomically(&args.labels, &new, "calibrate")?;
            written = true;
        }
    }

    let report = Report {
        labels_file: args.labels.clone(),
        examples: args.examples.clone(),
        reviews: reviews.map(|(_, used)| used),
        target: target.to_string(),
        written,
        labels: reports,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_table(&mut out, &report)?;
    }
    let failed = report.labels.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        for r in report.labels.iter().filter(|r| r.error.is_some()) {
            eprintln!(
                "error: label `{}`: {}",
                r.label,
                r.error.as_deref().unwrap_or_default()
            );
        }
        return Ok(Outcome::BadInput);
    }
    Ok(Outcome::Ok)
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The table: label, score kind, threshold before -> after, precision and recall before and
/// after, examples used.
pub fn print_table(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let mut sources = Vec::new();
    if let Some(e) = &report.examples {
        sources.push(format!("examples: {}", e.display()));
    }
    if let Some(r) = &report.reviews {
        sources.push(format!(
            "reviews: {} of {} marks in {}",
            r.used,
            r.total,
            r.history.display()
        ));
    }
    writeln!(out, "target: {}  ({})", report.target, sources.join("; "))?;
    let width = report
        .labels
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 40);
    writeln!(
        out,
        "{:<width$}  {:<11}  {:>8}    {:>8}  {:>9}  {:>6}  {:>15}  {:>9}",
        "label", "score", "before", "after", "precision", "recall", "before P / R", "pos / neg"
    )?;
    let f3 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in &report.labels {
        writeln!(
            out,
            "{:<width$}  {:<11}  {:>8.4} -> {:>8}  {:>9}  {:>6}  {:>7.3} / {:.3}  {:>4} / {}",
            r.label,
            r.score,
            r.before,
            r.after.map_or("-".into(), |v| format!("{v:.4}")),
            f3(r.precision),
            f3(r.recall),
            r.before_precision,
            r.before_recall,
            r.positives,
            r.negatives,
        )?;
    }
    for r in &report.labels {
        if let Some(p) = &r.plot {
            writeln!(out, "plot: {}", p.display())?;
        }
    }
    if report.written {
        writeln!(out, "wrote {}", report.labels_file.display())?;
    }
    Ok(())
}

/// The point a threshold gives, for the plot legend.
pub(crate) fn describe_point(p: &PrPoint) -> String {
    format!(
        "{:.4}: precision {:.3}, recall {:.3}",
        p.threshold, p.precision, p.recall
    )
}
