//! The `clipfilterd` command line: the daemon and one-off tools on the same engine.

pub mod backtest;
pub mod bench;
mod bench_crops;
pub mod bench_element;
mod bench_remote;
mod bench_session;
pub mod calibrate;
pub mod check;
pub mod classify;
pub mod history;
pub mod model_export_triton;
pub mod model_fetch;
pub mod model_prepare;
pub mod run;
pub mod search;
pub mod train_probe;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use clipfilter::encoder::{Provider, SessionConfig};
use clipfilter::engine::{Backend, EngineConfig};
use clipfilter::model::Variant;
use clipfilter::worker::BatchConfig;

/// clipfilter: say, in near real time, when video frames match text prompts (CLIP through ONNX
/// Runtime).
#[derive(Debug, Parser)]
#[command(name = "clipfilterd", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace, or a tracing filter directive).
    #[arg(long, global = true, env = "CLIPFILTER_LOG", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (always to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score images against labels and print the top matches.
    Classify(classify::ClassifyArgs),
    /// Validate label-set and daemon config files.
    Check(check::CheckArgs),
    /// Run the daemon: supervise the configured pipelines and deliver their events.
    Run(run::RunArgs),
    /// Measure throughput and latency (prints a table, writes JSON).
    Bench(bench::BenchArgs),
    /// Per-frame cost of the clipfilter element (unsampled and sampled frames) against
    /// identity, and decoding throughput with and without it.
    BenchElement(bench_element::BenchElementArgs),
    /// Search the sample history by text or example image: time ranges, best first.
    Search(search::SearchArgs),
    /// Replay the sample history with another label set and compare with the live events.
    Backtest(backtest::BacktestArgs),
    /// Choose per-label thresholds from example pictures: PR curves, a table, plots, and
    /// `--write` to update the label file.
    Calibrate(calibrate::CalibrateArgs),
    /// Train a linear probe (logistic regression on image embeddings, C by cross-validation)
    /// from example pictures; labels use it with `probe = "probe.json"`.
    TrainProbe(train_probe::TrainProbeArgs),
    /// Manage model folders.
    #[command(subcommand)]
    Model(ModelCommand),
}

/// `clipfilterd model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a model from a Hugging Face hub (HF_ENDPOINT, HF_TOKEN) into the cache and print
    /// its folder.
    Fetch(model_fetch::FetchArgs),
    /// Load a model on the GPU providers ahead of time: TensorRT builds its engines into the
    /// engine cache now instead of when the daemon starts.
    Prepare(model_prepare::PrepareArgs),
    /// Write a Triton Inference Server model repository for a model folder (onnxruntime
    /// backend, dynamic batching, TensorRT fp16, and the uint8 / fp16 input variants).
    ExportTriton(model_export_triton::ExportTritonArgs),
}

/// Model and inference options shared by the commands that load a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model folder (Hugging Face ONNX layout: onnx/vision_model.onnx, onnx/text_model.onnx,
    /// tokenizer.json, preprocessor_config.json).
    #[arg(long, short = 'm', env = "CLIPFILTER_MODEL", value_name = "DIR")]
    pub model: PathBuf,

    /// Which weights to use.
    #[arg(long, default_value = "fp32", value_parser = parse_variant)]
    pub variant: Variant,

    /// Execution providers in order of preference (tensorrt, cuda, cpu).
    #[arg(long, default_value = "cpu", value_parser = parse_providers)]
    pub providers: ProviderList,

    /// Fail if the first provider cannot be used instead of falling back.
    #[arg(long)]
    pub require_provider: bool,

    /// Threads per ONNX Runtime operator (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    /// Largest inference batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,

    /// Folder for TensorRT engines (built once, reused).
    #[arg(long, value_name = "DIR")]
    pub tensorrt_cache: Option<PathBuf>,
}

/// A parsed `--providers` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderList(pub Vec<Provider>);

fn parse_providers(s: &str) -> Result<ProviderList, String> {
    Provider::parse_list(s)
        .map(ProviderList)
        .map_err(|e| e.to_string())
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    s.parse().map_err(|e: clipfilter::Error| e.to_string())
}

impl ModelArgs {
    /// The engine configuration these flags describe.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            model_dir: self.model.clone(),
            variant: self.variant,
            session: SessionConfig {
                providers: self.providers.0.clone(),
                require_provider: self.require_provider,
                intra_threads: self.threads,
                tensorrt_cache: self.tensorrt_cache.clone(),
                ..SessionConfig::default()
            },
            batch: BatchConfig {
                max_batch: self.batch.max(1),
                ..BatchConfig::default()
            },
            backend: Backend::Local,
        }
    }
}

/// Exit status of a command that ran (errors map to 1 or 2 in `main`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Some inputs were bad; the rest was done.
    BadInput,
}

/// A progress bar on stderr for `n` items of `unit` (hidden when stderr is not a terminal).
pub(crate) fn progress_bar(n: u64, unit: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(n), indicatif::ProgressDrawTarget::stderr());
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
