//! `clipfilterd train-probe`: a linear probe (multinomial L2 logistic regression on the
//! model's image embeddings) from a folder of example pictures, C chosen by cross-validation.
//! The solver and the folds are the engine's (`clipfilter::probe`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{ModelArgs, Outcome};
use clipfilter::calibrate::{self, Examples, examples::NONE};
use clipfilter::engine::Engine;
use clipfilter::probe::{self, Probe, ProbeModel};

/// Arguments of `train-probe`.
#[derive(Debug, Args)]
pub struct TrainProbeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Folder of example pictures: one folder per class (label), and none/.
    #[arg(long, value_name = "DIR")]
    pub examples: PathBuf,

    /// Where to write the probe (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Use this C (inverse regularisation strength) instead of cross-validating.
    #[arg(long = "c", value_name = "C")]
    pub c: Option<f64>,

    /// Pictures the probe never sees, in the same layout: reports its accuracy on them.
    #[arg(long, value_name = "DIR")]
    pub heldout: Option<PathBuf>,
}

/// Runs `train-probe`.
pub fn run(args: TrainProbeArgs) -> anyhow::Result<Outcome> {
    let examples = Examples::scan(&args.examples)?;
    for s in &examples.skipped {
        eprintln!("warning: skipping {}: not a picture", s.display());
    }
    let mut classes: Vec<String> = examples
        .folders
        .iter()
        .filter(|f| *f != NONE)
        .cloned()
        .collect();
    if examples.folders.iter().any(|f| f == NONE) {
        classes.push(NONE.to_string());
    }
    let folds = clipfilter::limits::PROBE_FOLDS;
    if classes.len() < 2 {
        return Err(clipfilter::Error::invalid(
            "examples",
            format!(
                "{}: a probe needs at least two folders (a label and {NONE}/)",
                examples.dir.display()
            ),
        )
        .into());
    }
    let needed = if args.c.is_some() { 1 } else { folds };
    if let Some(c) = classes.iter().find(|c| examples.count(c) < needed) {
        return Err(clipfilter::Error::invalid(
            "examples",
            format!(
                "{}/{c}: {} pictures; cross-validation over {folds} folds needs at least {folds} per folder (or give --c)",
                examples.dir.display(),
                examples.count(c)
            ),
        )
        .into());
    }
    let y = examples.class_indices(&classes)?;
    let engine = Engine::shared(&args.model.engine_config())?;
    let bar = super::progress_bar(examples.examples.len() as u64, "pictures");
    let embeddings =
        calibrate::embed_examples(&engine, &examples.examples, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let x: Vec<Vec<f64>> = embeddings.iter().map(|e| probe::features(e)).collect();
    let k = classes.len();

    let (c, cv) = match args.c {
        Some(c) => (c, Vec::new()),
        None => {
            let grid = probe::c_grid();
            let split = probe::stratified_folds(&y, k, folds);
            let bar = super::progress_bar((grid.len() * folds) as u64, "fits");
            let cv = probe::cross_validate(&x, &y, k, &split, &grid, || bar.inc(1))?;
            bar.finish_and_clear();
            let c = probe::best_c(&cv).context("no C to choose from")?;
            (c, cv)
        }
    };
    let fit = probe::fit(&x, &y, k, c)?;
    let right = x
        .iter()
        .zip(&y)
        .filter(|(xi, yi)| probe::argmax(&fit.predict(xi)) == **yi)
        .count();
    let train_accuracy = right as f64 / x.len() as f64;
    let model = ProbeModel::of(
        &engine.model().dir,
        &engine.model().vision_onnx,
        engine.dim(),
    )?;
    let counts = classes.iter().map(|c| examples.count(c)).collect();
    let p = Probe::new(model, classes.clone(), c, &fit, counts, train_accuracy, cv);
    p.write(&args.out)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for point in &p.cv {
        writeln!(
            out,
            "C {:>10}  cross-validated log loss {:.4}  accuracy {:.3}{}",
            point.c,
            point.mean_log_loss,
            point.mean_accuracy,
            if point.c == c { "  <- chosen" } else { "" }
        )?;
    }
    writeln!(
        out,
        "classes: {}; C = {c}; train accuracy {train_accuracy:.3} ({right}/{}); {} Newton iterations",
        classes.join(", "),
        x.len(),
        fit.iterations
    )?;
    if let Some(dir) = &args.heldout {
        let held = Examples::scan(dir)?;
        let hy = held.class_indices(&classes)?;
        let he = calibrate::embed_examples(&engine, &held.examples, |_| {})?;
        let right = he
            .iter()
            .zip(&hy)
            .filter(|(e, yi)| probe::argmax(&p.predict(e)) == **yi)
            .count();
        writeln!(
            out,
            "held-out accuracy {:.3} ({right}/{})",
            right as f64 / he.len().max(1) as f64,
            he.len()
        )?;
    }
    writeln!(out, "wrote {}", args.out.display())?;
    Ok(Outcome::Ok)
}
