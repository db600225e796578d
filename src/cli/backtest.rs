//! `clipfilterd backtest`: what would this label set have fired?

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use super::history::{HistoryArgs, span};
use crate::history::backtest::{Difference, Episode, Window};
use crate::history::query;

/// Arguments of `backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// The label set to try (TOML, as the element and the daemon read it).
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,

    #[command(flatten)]
    pub history: HistoryArgs,

    /// Only this pipeline (repeat for several; default: all).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Vec<String>,

    /// Replay samples since then: an age ("7d") or a time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// ...until then.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// Print every episode, not only the differences.
    #[arg(long)]
    pub all: bool,

    /// Print JSON (what POST /api/backtest answers).
    #[arg(long)]
    pub json: bool,
}

/// Replays the history and prints the differences with the live events.
pub fn run(args: BacktestArgs) -> anyhow::Result<Outcome> {
    let toml = clipfilter::input::read_to_string(&args.labels)?;
    // A broken label set is bad input before any model is loaded.
    clipfilter::labels::LabelSet::from_toml_str(&toml, &args.labels)?;
    let now = crate::history::record::now_ms();
    let window = Window {
        pipelines: (!args.pipeline.is_empty()).then(|| args.pipeline.clone()),
        since_ms: query::parse_when("since", args.since.as_deref(), now)?,
        until_ms: query::parse_when("until", args.until.as_deref(), now)?,
    };
    let opened = args.history.open()?;
    let report = query::backtest(
        &opened.history,
        &opened.engine,
        &toml,
        &args.labels,
        &window,
    )?;
    let dir = args.history.thumbnail_dir();
    let thumbnail = |id: i64| opened.thumbnail_path(id, &dir);
    if args.json {
        let value = query::report_json(&report, &thumbnail);
        super::history::print_json(&value)?;
        return Ok(Outcome::Ok);
    }
    let counts = report.counts();
    let n = |d| counts.get(&d).copied().unwrap_or(0);
    println!(
        "{} samples replayed: {} episodes with {}, {} live; {} same, {} changed, {} added, {} removed",
        report.samples,
        report.episodes.len(),
        args.labels.display(),
        report.live.len(),
        n(Difference::Same),
        n(Difference::Changed),
        n(Difference::Added),
        n(Difference::Removed)
    );
    let when = |e: &Episode| span(e.start.time_ms, e.end.as_ref().map(|b| b.time_ms));
    for c in &report.compared {
        if c.difference == Difference::Same && !args.all {
            continue;
        }
        let detail = match (&c.new, &c.live) {
            (Some(new), Some(live)) if c.difference == Difference::Changed => {
                format!("live {} -> new {}", when(live), when(new))
            }
            (Some(e), _) | (None, Some(e)) => {
                let thumb = e
                    .start
                    .sample
                    .and_then(thumbnail)
                    .unwrap_or_else(|| "-".into());
                format!("{}  score {:.3}  thumbnail {thumb}", when(e), e.start.score)
            }
            (None, None) => String::new(),
        };
        println!(
            "{:<8} {}  {}  {}",
            c.difference.name(),
            c.pipeline,
            c.label,
            detail
        );
    }
    if report.skipped > 0 {
        eprintln!(
            "{} samples skipped (embedded by another model, or their embedding is gone)",
            report.skipped
        );
    }
    Ok(Outcome::Ok)
}
