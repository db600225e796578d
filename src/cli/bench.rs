//! `clipfilterd bench`: throughput and latency figures, printed as a table and written as JSON.
//!
//! Sections (select with `--sections`):
//! - `inference`: image-tower images/s at each batch size, straight on the ONNX session and
//!   through the shared worker, and end to end from decoded 1080p NV12 frames to scored events;
//! - `preprocess`: milliseconds to turn one 1080p frame into the model input, per pixel format;
//! - `latency`: frame-to-verdict p50/p99 at light load, against one batch-1 inference;
//! - `int8`: the quantized variant's images/s and its embeddings' cosine to fp32 on real photos;
//! - `baselines`: a Python onnxruntime session and transformers on PyTorch on the same ONNX file
//!   and input shape (via `tools/clip-tools bench-baselines`), with our ratio to each;
//! - peak RSS is always reported.
//!
//! Benchmarks are commands, not tests: these machines are shared and noisy, so compare ratios
//! measured in the same run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::ModelArgs;
use crate::encoder::ImageEncoder;
use crate::engine::{Engine, EngineConfig, decode_image};
use crate::labels::{LabelDefaults, LabelSet, Threshold};
use crate::matcher::Matcher;
use crate::model::{ModelDir, Variant};
use crate::preprocess::{FrameRef, PixelFormat, Preprocessor, YuvColor};
use crate::worker::{BatchConfig, StreamOptions};
use crate::zeroshot::{Scores, Templates};

/// Parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Section {
    Inference,
    Preprocess,
    Latency,
    Int8,
    Baselines,
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Batch sizes for the throughput figures.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<usize>,

    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,

    /// Sections to run.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "inference,preprocess,latency,int8,baselines"
    )]
    pub sections: Vec<Section>,

    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Photos for the int8-vs-fp32 comparison (default: .local/media/photos of the set-up).
    #[arg(long, value_name = "DIR")]
    pub photos: Option<PathBuf>,
}

fn threads(args: &ModelArgs) -> usize {
    if args.threads > 0 {
        args.threads
    } else {
        std::thread::available_parallelism().map_or(2, usize::from)
    }
}

/// A synthetic 1080p frame in `format` (a gradient with some texture, so resampling does work).
fn frame_1080p(format: PixelFormat) -> (Vec<u8>, [usize; 3], [usize; 3]) {
    let (w, h) = (1920usize, 1080usize);
    let px = |x: usize, y: usize, c: usize| ((x * (c + 1) + y * 3 + (x ^ y) % 17) % 256) as u8;
    match format {
        PixelFormat::Nv12 => {
            let mut d = vec![0u8; w * h * 3 / 2];
            for y in 0..h {
                for x in 0..w {
                    d[y * w + x] = px(x, y, 0);
                }
            }
            for (i, v) in d[w * h..].iter_mut().enumerate() {
                *v = 64 + (i % 128) as u8;
            }
            (d, [0, w * h, 0], [w, w, 0])
        }
        PixelFormat::I420 => {
            let mut d = vec![0u8; w * h * 3 / 2];
            for (i, v) in d.iter_mut().enumerate() {
                *v = px(i % w, i / w, 1);
            }
            (d, [0, w * h, w * h + w * h / 4], [w, w / 2, w / 2])
        }
        f => {
            let bpp = f.packed_bytes().unwrap_or(3);
            let mut d = vec![0u8; w * h * bpp];
            for (i, v) in d.iter_mut().enumerate() {
                *v = px((i / bpp) % w, i / bpp / w, i % bpp);
            }
            (d, [0, 0, 0], [w * bpp, 0, 0])
        }
    }
}

fn frame_ref<'a>(
    format: PixelFormat,
    data: &'a [u8],
    offsets: [usize; 3],
    strides: [usize; 3],
) -> FrameRef<'a> {
    let n = format.planes();
    let plane = |i: usize| -> &'a [u8] {
        if i < n {
            let end = if i + 1 < n {
                offsets[i + 1]
            } else {
                data.len()
            };
            &data[offsets[i]..end]
        } else {
            &[]
        }
    };
    FrameRef {
        format,
        width: 1920,
        height: 1080,
        planes: [plane(0), plane(1), plane(2)],
        strides,
        color: YuvColor::default(),
    }
}

fn engine_config(args: &ModelArgs, max_batch: usize, variant: Variant) -> EngineConfig {
    let mut cfg = args.engine_config();
    cfg.variant = variant;
    cfg.session.intra_threads = threads(args);
    cfg.batch = BatchConfig {
        max_batch,
        ..cfg.batch
    };
    cfg
}

/// Images/s of the bare session at `batch`.
fn session_rate(
    model: &ModelDir,
    args: &ModelArgs,
    batch: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let size = model
        .preprocess
        .output_size()
        .context("model has no fixed input size")?;
    let mut cfg = args.engine_config().session;
    cfg.intra_threads = threads(args);
    let mut enc = ImageEncoder::load(&model.vision_onnx, size, &cfg)?;
    let mut rng = fastrand::Rng::with_seed(7);
    let input: Vec<f32> = (0..batch * enc.image_len())
        .map(|_| rng.f32() * 4.0 - 2.0)
        .collect();
    let mut out = Vec::new();
    for _ in 0..2 {
        enc.encode(&input, batch, &mut out)?;
    }
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || start.elapsed().as_secs_f64() < seconds {
        enc.encode(&input, batch, &mut out)?;
        runs += 1;
    }
    Ok((runs * batch) as f64 / start.elapsed().as_secs_f64())
}

/// Images/s through the worker from decoded 1080p NV12 frames to scored, hysteresis-checked
/// verdicts (`end_to_end`), or from ready tensors (worker overhead only).
fn worker_rate(engine: &Engine, seconds: f64, end_to_end: bool) -> anyhow::Result<f64> {
    let batch = engine.config().batch.max_batch;
    let labels = LabelSet::from_prompts(
        &[
            "a person walking".into(),
            "a white van".into(),
            "an empty path".into(),
        ],
        Templates::None,
    )?;
    let labels = engine.compile_labels(
        &labels,
        &LabelDefaults {
            threshold: Threshold::Cosine(0.25),
            ..LabelDefaults::default()
        },
    )?;
    let mut matcher = Matcher::new(&labels);
    let (data, offsets, strides) = frame_1080p(PixelFormat::Nv12);
    let frame = frame_ref(PixelFormat::Nv12, &data, offsets, strides);
    let mut pre = engine.preprocessor()?;
    let mut template = vec![0.0; pre.output_len()];
    pre.run(&frame, &mut template)?;
    let mut stream = engine.stream(StreamOptions::batch(batch * 2));
    let mut scores = Scores::default();
    let mut in_flight = 0usize;
    let mut done = 0usize;
    let mut start = Instant::now();
    let mut warm = false;
    loop {
        while in_flight < batch * 2 {
            let mut buf = stream.buffer();
            if end_to_end {
                pre.run(&frame, &mut buf)?;
            } else {
                buf.copy_from_slice(&template);
            }
            stream.submit(buf)?;
            in_flight += 1;
        }
        let out = stream
            .wait_result(Duration::from_secs(600))
            .context("worker did not answer")?;
        in_flight -= 1;
        let e = out.embedding.map_err(|m| anyhow::anyhow!(m))?;
        labels.score_into(&e, &mut scores)?;
        matcher.update(&labels, &scores);
        stream.recycle(out.pixels);
        done += 1;
        if !warm && done >= batch * 2 {
            warm = true;
            done = 0;
            start = Instant::now();
        }
        if warm && done >= 3 * batch && start.elapsed().as_secs_f64() >= seconds {
            return Ok(done as f64 / start.elapsed().as_secs_f64());
        }
    }
}

fn preprocess_ms(model: &ModelDir, format: PixelFormat) -> anyhow::Result<f64> {
    let mut pre = Preprocessor::new(model.preprocess.clone())?;
    let (data, offsets, strides) = frame_1080p(format);
    let frame = frame_ref(format, &data, offsets, strides);
    let mut out = vec![0.0; pre.output_len()];
    for _ in 0..5 {
        pre.run(&frame, &mut out)?;
    }
    let n = 100;
    let start = Instant::now();
    for _ in 0..n {
        pre.run(&frame, &mut out)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / f64::from(n))
}

/// Frame-to-verdict latencies (seconds) at light load: one frame at a time, spaced out.
fn latencies(engine: &Engine, samples: usize) -> anyhow::Result<Vec<f64>> {
    let (data, offsets, strides) = frame_1080p(PixelFormat::Nv12);
    let frame = frame_ref(PixelFormat::Nv12, &data, offsets, strides);
    let mut pre = engine.preprocessor()?;
    let mut stream = engine.stream(StreamOptions::live());
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 3 {
        let t0 = Instant::now();
        let mut buf = stream.buffer();
        pre.run(&frame, &mut buf)?;
        stream.submit(buf)?;
        let r = stream
            .wait_result(Duration::from_secs(600))
            .context("worker did not answer")?;
        let took = t0.elapsed();
        stream.recycle(r.pixels);
        if i >= 3 {
            out.push(took.as_secs_f64());
        }
        // Light load: idle as long as the inference took.
        std::thread::sleep(took);
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn photos(args: &BenchArgs) -> Vec<PathBuf> {
    let dir = args
        .photos
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/media/photos"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn baselines(
    model: &Path,
    batch: usize,
    threads: usize,
    seconds: f64,
) -> anyhow::Result<Vec<Value>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/clip-tools");
    let out = Command::new(&script)
        .args(["bench-baselines", "--json", "--model"])
        .arg(model)
        .args([
            "--batch",
            &batch.to_string(),
            "--threads",
            &threads.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} bench-baselines failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Runs `bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<super::Outcome> {
    let model = ModelDir::open(&args.model.model, args.model.variant)?;
    let t = threads(&args.model);
    let mut report: BTreeMap<&str, Value> = BTreeMap::new();
    report.insert(
        "setup",
        json!({
            "model": model.dir.display().to_string(),
            "variant": args.model.variant.name(),
            "providers": args.model.providers.0.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "threads": t,
            "cores": std::thread::available_parallelism().map_or(0, usize::from),
            "seconds_per_figure": args.seconds,
        }),
    );
    println!(
        "clipfilter bench: {} ({}), {t} threads",
        model.dir.display(),
        args.model.variant
    );
    let has = |s: Section| args.sections.contains(&s);

    let mut session_rates: BTreeMap<usize, f64> = BTreeMap::new();
    if has(Section::Inference) || has(Section::Baselines) || has(Section::Int8) {
        println!(
            "\n{:<8} {:>14} {:>14} {:>14} {:>8}",
            "batch", "session img/s", "worker img/s", "end-to-end", "e2e/ses"
        );
        let mut rows = Vec::new();
        for &b in &args.batches {
            let ses = session_rate(&model, &args.model, b, args.seconds)?;
            session_rates.insert(b, ses);
            if !has(Section::Inference) {
                continue;
            }
            let engine = Engine::load(&engine_config(&args.model, b, args.model.variant))?;
            let worker = worker_rate(&engine, args.seconds, false)?;
            let e2e = worker_rate(&engine, args.seconds, true)?;
            println!(
                "{b:<8} {ses:>14.1} {worker:>14.1} {e2e:>14.1} {:>8.2}",
                e2e / ses
            );
            rows.push(json!({"batch": b, "session_images_per_s": ses, "worker_images_per_s": worker, "end_to_end_images_per_s": e2e, "end_to_end_vs_session": e2e / ses}));
        }
        if has(Section::Inference) {
            report.insert("inference", Value::Array(rows));
        }
    }

    if has(Section::Preprocess) {
        println!(
            "\npreprocess one 1920x1080 frame to {:?} (one thread):",
            model.preprocess.output_size().unwrap_or_default()
        );
        let mut rows = serde_json::Map::new();
        for f in [
            PixelFormat::Nv12,
            PixelFormat::I420,
            PixelFormat::Rgb,
            PixelFormat::Bgrx,
        ] {
            let ms = preprocess_ms(&model, f)?;
            println!("  {:<6} {ms:>7.2} ms", f.gst_name());
            rows.insert(f.gst_name().to_string(), json!(ms));
        }
        report.insert("preprocess_ms_1080p", Value::Object(rows));
    }

    if has(Section::Latency) {
        let engine = Engine::load(&engine_config(&args.model, 8, args.model.variant))?;
        let batch1 = match session_rates.get(&1) {
            Some(r) => 1.0 / r,
            None => 1.0 / session_rate(&model, &args.model, 1, args.seconds.min(3.0))?,
        };
        let mut lat = latencies(&engine, 60)?;
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!(
            "\nlatency, 1080p NV12 frame -> verdict, light load: p50 {:.1} ms, p99 {:.1} ms; one batch-1 inference {:.1} ms; p50 ratio {:.2}",
            p50 * 1e3,
            p99 * 1e3,
            batch1 * 1e3,
            p50 / batch1
        );
        report.insert("latency", json!({"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "batch1_inference_ms": batch1 * 1e3, "p50_vs_batch1": p50 / batch1}));
    }

    if has(Section::Int8) {
        match ModelDir::open(&model.dir, Variant::Quantized) {
            Err(e) => println!("\nint8: skipped: {e}"),
            Ok(q) => {
                let b = 8;
                let q_rate = session_rate(&q, &args.model, b, args.seconds)?;
                let f_rate = match session_rates.get(&b) {
                    Some(r) => *r,
                    None => session_rate(&model, &args.model, b, args.seconds)?,
                };
                let fp32 = Engine::load(&engine_config(&args.model, 8, Variant::Fp32))?;
                let int8 = Engine::load(&engine_config(&args.model, 8, Variant::Quantized))?;
                let mut cos = Vec::new();
                for p in photos(&args) {
                    let Ok(rgb) = decode_image(&p) else { continue };
                    let mut pre = fp32.preprocessor()?;
                    let mut px = vec![0.0; pre.output_len()];
                    pre.run_rgb8(rgb.as_raw(), rgb.width(), rgb.height(), &mut px)?;
                    let a = fp32.embed_pixels(&px)?.remove(0);
                    let b = int8.embed_pixels(&px)?.remove(0);
                    cos.push(a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>());
                }
                let min = cos.iter().copied().fold(f32::INFINITY, f32::min);
                let mean = cos.iter().sum::<f32>() / cos.len().max(1) as f32;
                println!(
                    "\nint8 (dynamic quantization), batch {b}: {q_rate:.1} img/s vs fp32 {f_rate:.1} ({:.2}x); cosine int8 vs fp32 on {} photos: mean {mean:.4}, min {min:.4}",
                    q_rate / f_rate,
                    cos.len()
                );
                report.insert("int8", json!({"batch": b, "int8_images_per_s": q_rate, "fp32_images_per_s": f_rate, "speedup": q_rate / f_rate, "photos": cos.len(), "cosine_mean": mean, "cosine_min": min}));
            }
        }
    }

    if has(Section::Baselines) {
        println!("\nbaselines on the same ONNX file and input shape ({t} threads):");
        let mut rows = Vec::new();
        for &b in &args.batches {
            let ours = session_rates.get(&b).copied().unwrap_or(f64::NAN);
            match baselines(&model.dir, b, t, args.seconds) {
                Err(e) => println!("  batch {b}: baselines unavailable: {e:#}"),
                Ok(lines) => {
                    for l in lines {
                        let name = l["baseline"].as_str().unwrap_or("?").to_string();
                        let rate = l["images_per_s"].as_f64();
                        match rate {
                            Some(r) => println!(
                                "  batch {b:<3} {name:<22} {r:>8.1} img/s   clipfilter {ours:>8.1} img/s   ratio {:.2}",
                                ours / r
                            ),
                            None => println!(
                                "  batch {b:<3} {name:<22} skipped: {}",
                                l["skipped"].as_str().unwrap_or("")
                            ),
                        }
                        rows.push(json!({"batch": b, "baseline": name, "images_per_s": rate, "clipfilter_images_per_s": ours, "ratio": rate.map(|r| ours / r)}));
                    }
                }
            }
        }
        report.insert("baselines", Value::Array(rows));
    }

    let rss = peak_rss_mib();
    if let Some(r) = rss {
        println!("\npeak RSS: {r:.0} MiB");
    }
    report.insert("peak_rss_mib", json!(rss));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(super::Outcome::Ok)
}
