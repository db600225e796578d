//! `clipfilterd`: the clipfilter daemon and command-line tools.

use std::process::ExitCode;

use clap::Parser;
use clipfilterd::cli::{Cli, Command, LogFormat, ModelCommand, Outcome};
use tracing_subscriber::EnvFilter;

/// Targets that dump raw wire bytes at trace level (request headers and bodies, in hex, which no
/// redaction can read): capped at debug unless named in the log directives.
const WIRE_DUMPS: [&str; 1] = ["ureq_proto::util"];

fn init_logging(cli: &Cli) {
    // ort's own info lines (library version notes, device discovery) are noise for users.
    let mut directives = if cli.log_level.contains('=') {
        cli.log_level.clone()
    } else {
        format!("{},ort=warn", cli.log_level)
    };
    for target in WIRE_DUMPS {
        if !directives.contains(target) {
            directives.push_str(&format!(",{target}=debug"));
        }
    }
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| clipfilterd::daemon::secret::RedactingWriter(std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Classify(args) => clipfilterd::cli::classify::run(args),
        Command::Calibrate(args) => clipfilterd::cli::calibrate::run(args),
        Command::TrainProbe(args) => clipfilterd::cli::train_probe::run(args),
        Command::Check(args) => clipfilterd::cli::check::run(args),
        Command::Run(args) => clipfilterd::cli::run::run(args),
        Command::Bench(args) => clipfilterd::cli::bench::run(args),
        Command::BenchElement(args) => clipfilterd::cli::bench_element::run(args),
        Command::Search(args) => clipfilterd::cli::search::run(args),
        Command::Backtest(args) => clipfilterd::cli::backtest::run(args),
        Command::Model(ModelCommand::Fetch(args)) => {
            clipfilterd::cli::model_fetch::run(args).map(|()| Outcome::Ok)
        }
        Command::Model(ModelCommand::Prepare(args)) => clipfilterd::cli::model_prepare::run(args),
        Command::Model(ModelCommand::ExportTriton(args)) => {
            clipfilterd::cli::model_export_triton::run(args)
        }
    }
}

/// 1 for runtime failures, 2 for bad input (files, flags, models the user pointed at).
fn exit_code(err: &anyhow::Error) -> u8 {
    let user = err.chain().any(|cause| {
        cause
            .downcast_ref::<clipfilter::Error>()
            .is_some_and(clipfilter::Error::is_user_error)
            || cause
                .downcast_ref::<clipfilterd::error::Error>()
                .is_some_and(clipfilterd::error::Error::is_user_error)
            || cause
                .downcast_ref::<clipfilterd::fetch::FetchError>()
                .is_some_and(|e| e.is_user_error())
    });
    if user { 2 } else { 1 }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::BadInput) => ExitCode::from(2),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}
