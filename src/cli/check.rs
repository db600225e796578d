//! `clipfilterd check`: validate label sets and daemon configs without running anything.

use std::path::{Path, PathBuf};

use clap::Args;

use super::Outcome;
use clipfilter::error::{Error, Location};
use clipfilter::labels::LabelSet;

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Label-set or daemon config files (TOML).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// What kind of file a TOML document is, from its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    LabelSet,
    DaemonConfig,
}

/// Decides whether `text` is a label set or a daemon config.
pub fn kind_of(path: &Path, text: &str) -> Result<FileKind, Error> {
    let table: toml::Table = toml::from_str(text).map_err(|e| Error::toml(path, text, &e))?;
    if table.contains_key("label") || table.contains_key("defaults") || table.contains_key("region")
    {
        Ok(FileKind::LabelSet)
    } else if table.contains_key("pipeline")
        || table.contains_key("output")
        || table.contains_key("model")
    {
        Ok(FileKind::DaemonConfig)
    } else {
        Err(Error::config(
            path,
            Location::default(),
            "neither a label set ([[label]] tables) nor a daemon config ([[pipeline]] tables)",
        ))
    }
}

/// Checks one file; returns a one-line summary.
pub fn check_file(path: &Path) -> Result<String, Error> {
    let text = clipfilter::input::read_to_string(path)?;
    match kind_of(path, &text)? {
        FileKind::LabelSet => {
            let set = LabelSet::from_toml_str(&text, path)?;
            // Probes and example pictures exist (which model a probe needs is checked where
            // the model is known: a daemon config, or when the labels load).
            set.check_files(None)?;
            let negatives = set.labels.iter().filter(|l| l.negative).count();
            let mut summary = format!(
                "label set, {} labels ({negatives} negative)",
                set.labels.len()
            );
            if !set.regions.is_empty() {
                summary.push_str(&format!(", {} regions", set.regions.len()));
            }
            // Regions a label is limited to may come from the pipeline or the element instead.
            let mut elsewhere: Vec<&str> = set
                .labels
                .iter()
                .flat_map(|l| &l.regions)
                .filter(|r| !set.regions.iter().any(|d| d.name == **r))
                .map(String::as_str)
                .collect();
            elsewhere.sort_unstable();
            elsewhere.dedup();
            if !elsewhere.is_empty() {
                summary.push_str(&format!(
                    "; regions the pipeline must define: {}",
                    elsewhere.join(", ")
                ));
            }
            Ok(summary)
        }
        FileKind::DaemonConfig => crate::daemon::check::check_file(path, &text),
    }
}

/// Runs `check`: every file is checked; the exit status says whether all were valid.
pub fn run(args: CheckArgs) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::Ok;
    for path in &args.files {
        match check_file(path) {
            Ok(summary) => println!("{}: ok: {summary}", path.display()),
            Err(Error::Problems(problems)) => {
                for e in problems {
                    eprintln!("error: {e}");
                }
                outcome = Outcome::BadInput;
            }
            Err(e) => {
                eprintln!("error: {e}");
                outcome = Outcome::BadInput;
            }
        }
    }
    Ok(outcome)
}
