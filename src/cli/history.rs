//! What `search` and `backtest` share: finding the history and the model that embedded it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::daemon::config::{Config, DEFAULT_CONFIG_PATH};
use crate::daemon::model::{ElementModel, engine_config, resolve_model};
use crate::error::Error;
use crate::history::History;
use clipfilter::engine::{Engine, EngineConfig};

/// Where the history is.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The daemon configuration: its `[history]` folder and its `[model]` (default:
    /// /etc/clipfilter/clipfilterd.toml, unless --state-dir or --history is given).
    #[arg(long, short = 'c', env = "CLIPFILTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The daemon's state folder (its history is DIR/history; the model is the one that
    /// embedded the newest samples).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "history"])]
    pub state_dir: Option<PathBuf>,

    /// The history folder itself.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub history: Option<PathBuf>,

    /// Folder the thumbnails of results are written to (default: the user's cache folder,
    /// clipfilter/thumbnails).
    #[arg(long, value_name = "DIR")]
    pub thumbnails: Option<PathBuf>,
}

/// An open history with the engine of its model.
pub struct Opened {
    pub history: History,
    pub engine: Engine,
}

impl Opened {
    /// The path of sample `id`'s thumbnail exported under `dir`, if it has one.
    pub fn thumbnail_path(&self, id: i64, dir: &std::path::Path) -> Option<String> {
        self.history
            .export_thumbnail(id, dir)
            .ok()
            .flatten()
            .map(|p| p.display().to_string())
    }
}

/// Prints `value` as pretty JSON on stdout (the commands' `--json`).
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("writing JSON")?
    );
    Ok(())
}

impl HistoryArgs {
    /// Opens the history and loads the model (the configuration's, else the one recorded).
    pub fn open(&self) -> anyhow::Result<Opened> {
        let (history, configured) = self.open_history()?;
        let engine_config = match configured {
            Some(c) => c,
            None => recorded_model(&history)?,
        };
        let engine = Engine::load(&engine_config)
            .with_context(|| format!("loading the model {}", engine_config.model_dir.display()))?;
        Ok(Opened { history, engine })
    }

    /// Opens the history, with the configuration's model when --config (or the default
    /// configuration) says where it is.
    pub fn open_history(&self) -> anyhow::Result<(History, Option<EngineConfig>)> {
        let config = match (&self.config, &self.state_dir, &self.history) {
            (Some(c), _, _) => Some(c.clone()),
            (None, None, None) => Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
            _ => None,
        };
        let (dir, engine_config) = match config {
            Some(path) => {
                let config = Config::load(&path).map_err(|e| {
                    if self.config.is_none() {
                        Error::invalid(
                            "history",
                            format!("{e:#}; give --config FILE, --state-dir DIR or --history DIR"),
                        )
                    } else {
                        Error::from(e)
                    }
                })?;
                let model = ElementModel {
                    dir: resolve_model(&config.model)?,
                    config: config.model.clone(),
                };
                (config.history.dir.clone(), Some(engine_config(&model)))
            }
            None => (
                match (&self.state_dir, &self.history) {
                    (Some(s), _) => s.join(crate::history::DIR_NAME),
                    (None, Some(h)) => h.clone(),
                    (None, None) => unreachable!("handled above"),
                },
                None,
            ),
        };
        Ok((History::open(&dir)?, engine_config))
    }

    /// Where thumbnails are written.
    pub fn thumbnail_dir(&self) -> PathBuf {
        self.thumbnails.clone().unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("clipfilter")
                .join("thumbnails")
        })
    }
}

/// The model the newest samples of `history` were embedded with.
pub fn recorded_model(history: &History) -> anyhow::Result<EngineConfig> {
    let model = history.latest_model()?.ok_or_else(|| {
        Error::invalid(
            "history",
            format!("{}: no samples stored yet", history.dir().display()),
        )
    })?;
    let mut c = EngineConfig::new(&model.dir);
    c.variant = model
        .variant
        .parse()
        .map_err(|e: clipfilter::Error| Error::from(e))?;
    Ok(c)
}

/// "12:00:03Z – 12:00:09Z (6.0 s)".
pub fn span(start_ms: i64, end_ms: Option<i64>) -> String {
    let t = crate::history::time::format_ms;
    match end_ms {
        Some(end) => format!(
            "{} – {} ({:.1} s)",
            t(start_ms),
            t(end),
            (end - start_ms) as f64 / 1000.0
        ),
        None => format!("{} – (open)", t(start_ms)),
    }
}
