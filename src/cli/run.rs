//! `clipfilterd run`: the daemon (what the systemd service starts).

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use crate::daemon::config::DEFAULT_CONFIG_PATH;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The daemon configuration (TOML; see pipelines/ for examples). Reloaded on SIGHUP and when
    /// the file changes.
    #[arg(
        long,
        short = 'c',
        env = "CLIPFILTER_CONFIG",
        value_name = "FILE",
        default_value = DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    crate::daemon::service::run(&args.config)?;
    Ok(Outcome::Ok)
}
