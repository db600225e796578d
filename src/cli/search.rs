//! `clipfilterd search`: when did the cameras see something like this?

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use super::history::{HistoryArgs, span};
use crate::error::Error;
use crate::history::query::{self, SearchRequest};

/// Arguments of `search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, in words ("a white van").
    #[arg(value_name = "TEXT", required_unless_present = "image")]
    pub text: Option<String>,

    /// Look for frames like this image instead.
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    pub image: Option<PathBuf>,

    #[command(flatten)]
    pub history: HistoryArgs,

    /// Only samples since then: an age ("24h", "7d") or a time ("2026-11-28T12:00:00Z",
    /// "2026-11-28 12:00").
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// Only samples until then (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,

    /// Only this pipeline (repeat for several).
    #[arg(long, value_name = "NAME")]
    pub pipeline: Vec<String>,

    /// Time ranges to print.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top: u16,

    /// A sample is a hit when its cosine is at least this (default: halfway between the median
    /// score and the best one).
    #[arg(long, value_name = "COSINE")]
    pub min_score: Option<f32>,

    /// Templates for the text, as in label sets: none, single, ensemble7, imagenet80 or a
    /// ;-list with {}.
    #[arg(long, value_name = "TEMPLATES")]
    pub templates: Option<String>,

    /// Print JSON (what GET /api/search answers).
    #[arg(long)]
    pub json: bool,
}

/// Runs the search and prints the ranges, best first.
pub fn run(args: SearchArgs) -> anyhow::Result<Outcome> {
    if let Some(t) = &args.text
        && t.trim().is_empty()
    {
        return Err(Error::invalid("query", "the search text is empty").into());
    }
    if let Some(m) = args.min_score
        && !(-1.0..=1.0).contains(&m)
    {
        return Err(Error::invalid("min-score", format!("{m} is outside [-1, 1]")).into());
    }
    let image = match &args.image {
        Some(path) => Some((
            std::fs::read(path).map_err(|e| Error::io(path, e))?,
            path.clone(),
        )),
        None => None,
    };
    let now = crate::history::record::now_ms();
    // Bad times are bad input before any model is loaded.
    query::parse_when("since", args.since.as_deref(), now)?;
    query::parse_when("until", args.until.as_deref(), now)?;
    let opened = args.history.open()?;
    let req = SearchRequest {
        text: args.text.clone(),
        image,
        since: args.since.clone(),
        until: args.until.clone(),
        pipelines: (!args.pipeline.is_empty()).then(|| args.pipeline.clone()),
        top: usize::from(args.top),
        min_score: args.min_score,
        templates: args.templates.clone(),
    };
    let found = query::search(&opened.history, &opened.engine, &req)?;
    let dir = args.history.thumbnail_dir();
    let thumbnail = |id: i64| opened.thumbnail_path(id, &dir);
    if args.json {
        let value = query::found_json(&found, &thumbnail);
        super::history::print_json(&value)?;
        return Ok(Outcome::Ok);
    }
    if found.ranges.is_empty() {
        println!("no matches among {} samples", found.scanned);
    }
    for r in &found.ranges {
        let thumb = thumbnail(r.best_sample).unwrap_or_else(|| "-".into());
        println!(
            "{}  {}  best {:.3} ({} hits)  thumbnail {}",
            r.pipeline,
            span(r.start_ms, Some(r.end_ms)),
            r.best_score,
            r.hits,
            thumb
        );
    }
    eprintln!(
        "{} samples searched in {:.0} ms (hits scored at least {:.3}){}",
        found.scanned,
        found.took.as_secs_f64() * 1000.0,
        found.cutoff,
        if found.other_models > 0 {
            format!(
                "; {} samples of other models not searched",
                found.other_models
            )
        } else {
            String::new()
        }
    );
    Ok(Outcome::Ok)
}
