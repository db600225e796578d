//! `clipfilterd model fetch`: download a CLIP model from a Hugging Face hub endpoint and print the
//! model folder, so that `--model "$(clipfilterd model fetch)"` works.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::model::Variant;
use crate::model::fetch::{self, DEFAULT_REPO, FetchOptions};

/// Arguments of `clipfilterd model fetch`.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// Hub repository in the transformers.js ONNX layout (`org/name`).
    #[arg(default_value = DEFAULT_REPO)]
    pub repo: String,

    /// Precision of the ONNX towers: fp32, fp16 or quantized.
    #[arg(long, default_value = "fp32")]
    pub variant: Variant,

    /// Branch, tag or commit to fetch.
    #[arg(long, default_value = fetch::DEFAULT_REVISION)]
    pub revision: String,

    /// Cache folder (hub layout; a `huggingface-cli` cache such as ~/.cache/huggingface/hub
    /// works too). Default: $CLIPFILTER_CACHE_DIR, $STATE_DIRECTORY/models under systemd, else
    /// $XDG_CACHE_HOME/clipfilter/models.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Use the cache only; fail if the model is not fully cached.
    #[arg(long)]
    pub offline: bool,
}

/// Fetches the model (honouring `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`) and prints the model
/// folder on stdout. Progress and messages go to stderr.
pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let mut opts = FetchOptions::from_env(&args.repo);
    opts.variant = args.variant;
    opts.revision = args.revision;
    if let Some(dir) = args.cache_dir {
        opts.cache_dir = dir;
    }
    opts.offline |= args.offline;
    let dir = fetch::fetch(&opts).with_context(|| {
        format!(
            "fetching {} ({}) at revision {}",
            opts.repo, opts.variant, opts.revision
        )
    })?;
    println!("{}", dir.display());
    Ok(())
}
