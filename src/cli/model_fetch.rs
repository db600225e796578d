//! `clipfilterd model fetch`: download a CLIP model from a Hugging Face hub endpoint and print the
//! model folder, so that `--model "$(clipfilterd model fetch)"` works.

use std::path::PathBuf;

use crate::fetch::{self, DEFAULT_REPO, FetchOptions};
use clipfilter::model::Variant;

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
    // The errors name the repository, revision, file or URL themselves.
    let dir = fetch::fetch(&opts)?;
    println!("{}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        fetch: FetchArgs,
    }

    #[test]
    fn arguments_and_defaults() {
        let args = Command::try_parse_from(["fetch"]).unwrap().fetch;
        assert_eq!(args.repo, DEFAULT_REPO);
        assert_eq!(
            (args.variant, args.revision.as_str(), args.offline),
            (Variant::Fp32, "main", false)
        );
        assert_eq!(args.cache_dir, None);

        let args = Command::try_parse_from([
            "fetch",
            "org/model",
            "--variant",
            "quantized",
            "--revision",
            "v2",
            "--cache-dir",
            "/models",
            "--offline",
        ])
        .unwrap()
        .fetch;
        assert_eq!(args.repo, "org/model");
        assert_eq!(args.variant, Variant::Quantized);
        assert_eq!(args.revision, "v2");
        assert_eq!(args.cache_dir, Some(PathBuf::from("/models")));
        assert!(args.offline);

        let err = Command::try_parse_from(["fetch", "--variant", "int4"])
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("expected fp32, fp16 or quantized"),
            "{err}"
        );
    }
}
