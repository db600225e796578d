//! `clipfilterd model prepare`: load a model on the GPU providers ahead of time, so that
//! TensorRT builds its engines (minutes) now and stores them in the engine cache, instead of
//! when the daemon starts watching cameras.

use std::time::Instant;

use anyhow::bail;
use clap::Args;

use super::{ModelArgs, Outcome};
use clipfilter::encoder::Provider;
use clipfilter::engine::Engine;

/// Arguments of `model prepare`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `model prepare`.
pub fn run(args: PrepareArgs) -> anyhow::Result<Outcome> {
    let providers = &args.model.providers.0;
    if providers.first() == Some(&Provider::Cpu) {
        bail!("nothing to prepare on the CPU: give --providers tensorrt,cuda,cpu (or cuda,cpu)");
    }
    if providers.contains(&Provider::TensorRt) && args.model.tensorrt_cache.is_none() {
        bail!(
            "--tensorrt-cache DIR is needed: engines built without a cache are lost when the process ends"
        );
    }
    let mut cfg = args.model.engine_config();
    cfg.session.require_provider = true;
    let started = Instant::now();
    let engine = Engine::load(&cfg)?;
    let (image, text) = engine.providers();
    println!(
        "prepared {} ({}): image tower on {image}, text tower on {text}, batches 1..={} in {:.1} s{}",
        engine.model().dir.display(),
        cfg.variant,
        cfg.batch.max_batch,
        started.elapsed().as_secs_f64(),
        cfg.session
            .tensorrt_cache
            .as_ref()
            .map(|d| format!("; engines cached in {}", d.display()))
            .unwrap_or_default()
    );
    Ok(Outcome::Ok)
}
