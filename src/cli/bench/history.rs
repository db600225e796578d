//! The `history` section of `clipfilterd bench`: what keeping the sample history costs and how
//! fast it answers.
//!
//! - ingest: samples/s through the daemon's [`Recorder`] (queue, thumbnails encoded to JPEG,
//!   batches, `fdatasync`, SQLite), with and without thumbnails, and the bytes each stored
//!   sample takes on disk;
//! - inference beside ingest: the shared worker's images/s alone and while the recorder is fed
//!   2,000 samples/s, taking turns ([`ROUNDS`]);
//! - search: one query over `--history-samples` stored samples (default 1,000,000), against a
//!   numpy brute-force search over the same vectors in float32 (`tools/clip-tools bench-search`),
//!   both best of five.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{BenchArgs, ROUNDS, Rate, WorkerBench, engine_config};
use crate::history::quant;
use crate::history::search::{self, Query};
use crate::history::{
    History, Limits, ModelInfo, RawThumbnail, Record, Recorder, RecorderConfig, SampleRecord,
    ThumbnailConfig, Writer,
};
use clipfilter::engine::Engine;

/// Samples per ingest measurement.
const INGEST_SAMPLES: usize = 20_000;
/// Samples/s fed to the recorder beside inference.
const FEED_RATE: f64 = 2000.0;
/// Rounds of the search figures.
const SEARCH_ROUNDS: usize = 5;

/// A folder under the temporary folder, removed when dropped.
struct BenchDir(std::path::PathBuf);

impl BenchDir {
    fn new() -> anyhow::Result<BenchDir> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "clipfilter-bench-history-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(BenchDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unit vectors from a fixed xorshift sequence (the same run after run).
struct Vectors {
    state: u64,
    dim: usize,
}

impl Vectors {
    fn new(dim: usize) -> Vectors {
        Vectors {
            state: 0x9E37_79B9_7F4A_7C15,
            dim,
        }
    }

    fn next(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..self.dim)
            .map(|_| {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                (self.state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
}

fn sample(pipeline: usize, i: usize, time_ms: i64, embedding: Vec<f32>) -> SampleRecord {
    SampleRecord {
        pipeline: format!("cam-{pipeline}"),
        epoch: 1 + pipeline as i64,
        time_ms,
        pts: Some(i as i64 * 250_000_000),
        stream_time: Some(i as i64 * 250_000_000),
        running_time: None,
        frame: i as u64,
        embedding: Some(embedding),
        labels_version: "bench".into(),
        scores: vec![0.2, 0.25, 0.3],
        thumbnail: None,
        crop: None,
    }
}

/// A 160x120 frame with some texture, as a thumbnail source.
fn raw_thumbnail(i: usize) -> RawThumbnail {
    let (w, h) = (160u32, 120u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let v = (x * 3 + y * 5 + i as u32 + ((x ^ y) % 13)) as u8;
            rgb.extend_from_slice(&[v, v.wrapping_mul(3), 255 - v]);
        }
    }
    RawThumbnail {
        rgb,
        width: w,
        height: h,
    }
}

fn model_info(engine: &Engine) -> anyhow::Result<ModelInfo> {
    Ok(ModelInfo {
        fingerprint: engine.image_fingerprint()?,
        dir: engine.config().model_dir.display().to_string(),
        variant: "bench".into(),
        dim: engine.dim(),
    })
}

/// No retention in the benchmark: everything written stays.
const UNBOUNDED: Limits = Limits {
    keep: None,
    max_bytes: 1 << 40,
};

fn recorder(dir: &Path, thumbnails: bool, queue: usize) -> anyhow::Result<Recorder> {
    Recorder::start(RecorderConfig {
        dir: dir.to_path_buf(),
        limits: UNBOUNDED,
        queue,
        thumbnails: thumbnails.then_some(ThumbnailConfig {
            long_side: 160,
            quality: 80,
        }),
    })
    .context("starting the history recorder")
}

/// Samples/s through a recorder and bytes per stored sample.
fn ingest(model: &ModelInfo, thumbnails: bool) -> anyhow::Result<(f64, f64)> {
    let dir = BenchDir::new()?;
    let mut vectors = Vectors::new(model.dim);
    let items: Vec<(SampleRecord, Option<RawThumbnail>)> = (0..INGEST_SAMPLES)
        .map(|i| {
            let s = sample(i % 4, i, 1_700_000_000_000 + i as i64 * 60, vectors.next());
            (s, thumbnails.then(|| raw_thumbnail(i)))
        })
        .collect();
    let rec = recorder(dir.path(), thumbnails, INGEST_SAMPLES)?;
    rec.record(Record::Model(model.clone()));
    let t = Instant::now();
    for (s, thumb) in items {
        rec.sample(s, thumb);
    }
    let stats = rec.stats().clone();
    rec.shutdown();
    let secs = t.elapsed().as_secs_f64();
    let stored = stats.stored.load(Ordering::Relaxed);
    if stored != INGEST_SAMPLES as u64 {
        bail!(
            "the recorder stored {stored} of {INGEST_SAMPLES} samples (dropped {})",
            stats.dropped.load(Ordering::Relaxed)
        );
    }
    let usage = Writer::open(dir.path(), UNBOUNDED)?.usage()?;
    Ok((
        stored as f64 / secs,
        usage.bytes as f64 / usage.samples.max(1) as f64,
    ))
}

/// Worker images/s alone and while a recorder is fed [`FEED_RATE`] samples/s (with 160x120
/// thumbnails to encode, or without); and the samples/s it stored meanwhile.
fn inference_beside_ingest(
    args: &BenchArgs,
    model: &ModelInfo,
    thumbnails: bool,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let engine = Engine::load(&engine_config(&args.model, 8, args.model.variant))?;
    let mut worker = WorkerBench::new(&engine)?;
    let dir = BenchDir::new()?;
    let (mut alone, mut beside) = (Rate::default(), Rate::default());
    let (mut stored, mut fed_secs, mut dropped) = (0u64, 0.0f64, 0u64);
    let slice = args.seconds / ROUNDS as f64;
    for round in 0..ROUNDS {
        alone.add(worker.measure(slice, true)?);
        let rec = Arc::new(recorder(dir.path(), thumbnails, 4096)?);
        rec.record(Record::Model(model.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (rec, stop, dim) = (rec.clone(), stop.clone(), model.dim);
            std::thread::spawn(move || {
                let mut vectors = Vectors::new(dim);
                let t = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let due = (t.elapsed().as_secs_f64() * FEED_RATE) as usize;
                    while i < due {
                        let time = 1_700_000_000_000 + (round * 1_000_000 + i) as i64;
                        rec.sample(
                            sample(i % 4, i, time, vectors.next()),
                            thumbnails.then(|| raw_thumbnail(i)),
                        );
                        i += 1;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                t.elapsed().as_secs_f64()
            })
        };
        beside.add(worker.measure(slice, true)?);
        stop.store(true, Ordering::Relaxed);
        fed_secs += feeder
            .join()
            .map_err(|_| anyhow::anyhow!("the feeder thread panicked"))?;
        let rec =
            Arc::try_unwrap(rec).map_err(|_| anyhow::anyhow!("the recorder is still shared"))?;
        let stats = rec.stats().clone();
        rec.shutdown();
        stored += stats.stored.load(Ordering::Relaxed);
        dropped += stats.dropped.load(Ordering::Relaxed);
    }
    Ok((
        alone.per_s(),
        beside.per_s(),
        stored as f64 / fed_secs,
        dropped,
    ))
}

/// Writes `(rows, dim)` float32 as a .npy file header.
fn npy_header(out: &mut impl Write, rows: Option<usize>, dim: usize) -> std::io::Result<()> {
    let shape = match rows {
        Some(r) => format!("({r}, {dim})"),
        None => format!("({dim},)"),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())
}

/// Fills a history with `n` samples (and the same vectors as a .npy file), then times one
/// search against numpy's brute force.
fn search_figures(model: &ModelInfo, n: usize) -> anyhow::Result<Value> {
    let dir = BenchDir::new()?;
    let history_dir = dir.path().join("history");
    let npy = dir.path().join("vectors.npy");
    let mut out = BufWriter::new(std::fs::File::create(&npy)?);
    npy_header(&mut out, Some(n), model.dim)?;
    let mut writer = Writer::open(&history_dir, UNBOUNDED)?;
    let mut vectors = Vectors::new(model.dim);
    let mut batch = vec![Record::Model(model.clone())];
    let t = Instant::now();
    for i in 0..n {
        let v = vectors.next();
        for x in &v {
            out.write_all(&x.to_le_bytes())?;
        }
        batch.push(Record::Sample(sample(
            i % 4,
            i,
            1_700_000_000_000 + i as i64 * 60,
            v,
        )));
        if batch.len() >= 10_000 {
            writer.write(&batch)?;
            batch.clear();
        }
    }
    writer.write(&batch)?;
    out.flush()?;
    drop(out);
    let fill_s = t.elapsed().as_secs_f64();
    let bytes = writer.usage()?.bytes;
    drop(writer);

    let query = Vectors {
        state: 0x1234_5678_9ABC_DEF1,
        dim: model.dim,
    }
    .next();
    let query_npy = dir.path().join("query.npy");
    let mut q = BufWriter::new(std::fs::File::create(&query_npy)?);
    npy_header(&mut q, None, model.dim)?;
    for x in &query {
        q.write_all(&x.to_le_bytes())?;
    }
    q.flush()?;
    drop(q);

    let history = History::open(&history_dir)?;
    let q = Query {
        vector: query,
        model: model.fingerprint.clone(),
        since_ms: None,
        until_ms: None,
        pipelines: None,
        top: 20,
        min_score: None,
        threads: 0,
    };
    let mut times = Vec::new();
    let mut scanned = 0;
    // One untimed search first: the segment files into the page cache, as numpy's in memory.
    search::search(&history, &q)?;
    for _ in 0..SEARCH_ROUNDS {
        let t = Instant::now();
        let found = search::search(&history, &q)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        scanned = found.scanned;
    }
    times.sort_by(f64::total_cmp);
    let (ours_best, ours_median) = (times[0], times[times.len() / 2]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/clip-tools");
    let run = Command::new(&script)
        .arg("bench-search")
        .arg("--vectors")
        .arg(&npy)
        .arg("--query")
        .arg(&query_npy)
        .args(["--rounds", &SEARCH_ROUNDS.to_string()])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let numpy: Option<Value> = if run.status.success() {
        String::from_utf8_lossy(&run.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
    } else {
        println!(
            "  numpy baseline unavailable: {}",
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        None
    };
    let numpy_best = numpy.as_ref().and_then(|v| v["best_ms"].as_f64());
    let numpy_median = numpy.as_ref().and_then(|v| v["median_ms"].as_f64());
    println!(
        "  search over {scanned} samples (dim {}): ours best {ours_best:.1} ms, median {ours_median:.1} ms; numpy float32 brute force best {}, median {}; numpy/ours (best) {}",
        model.dim,
        numpy_best.map_or("-".into(), |v| format!("{v:.1} ms")),
        numpy_median.map_or("-".into(), |v| format!("{v:.1} ms")),
        numpy_best.map_or("-".into(), |v| format!("{:.2}", v / ours_best)),
    );
    println!(
        "  (filled in {fill_s:.1} s: {:.0} samples/s straight into the writer; {:.0} bytes per sample without thumbnails)",
        n as f64 / fill_s,
        bytes as f64 / n as f64
    );
    Ok(json!({
        "samples": scanned,
        "dim": model.dim,
        "ours_best_ms": ours_best,
        "ours_median_ms": ours_median,
        "numpy_best_ms": numpy_best,
        "numpy_median_ms": numpy_median,
        "numpy_over_ours_best": numpy_best.map(|v| v / ours_best),
        "fill_samples_per_s": n as f64 / fill_s,
    }))
}

/// Cosine error of the stored forms against float32, over 10,000 vectors and one query: int8
/// with a scale (what the history stores) and fp16. (mean, max) of each.
fn quantization_error(dim: usize) -> ((f64, f64), (f64, f64)) {
    let mut vectors = Vectors::new(dim);
    let query = vectors.next();
    let (mut qq, mut qr) = (Vec::new(), Vec::new());
    let qs = quant::quantize(&query, &mut qq);
    let q16: Vec<f32> = query
        .iter()
        .map(|x| half::f16::from_f32(*x).to_f32())
        .collect();
    let (mut int8, mut fp16) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
    let n = 10_000;
    for _ in 0..n {
        let v = vectors.next();
        let exact: f32 = v.iter().zip(&query).map(|(a, b)| a * b).sum();
        let rs = quant::quantize(&v, &mut qr);
        let e8 = f64::from((quant::dot_i8(&qr, &qq) as f32 * rs * qs - exact).abs());
        let h: f32 = v
            .iter()
            .zip(&q16)
            .map(|(a, b)| half::f16::from_f32(*a).to_f32() * b)
            .sum();
        let e16 = f64::from((h - exact).abs());
        int8 = (int8.0 + e8 / n as f64, int8.1.max(e8));
        fp16 = (fp16.0 + e16 / n as f64, fp16.1.max(e16));
    }
    (int8, fp16)
}

/// The section: prints its figures and returns them as JSON.
pub(super) fn section(args: &BenchArgs) -> anyhow::Result<Value> {
    let engine = Engine::load(&engine_config(&args.model, 8, args.model.variant))?;
    let model = model_info(&engine)?;
    drop(engine);
    println!("\nhistory (dim {}):", model.dim);
    let (int8, fp16) = quantization_error(model.dim);
    println!(
        "  stored form: int8 + scale {} bytes/vector, cosine error mean {:.5} max {:.5}; fp16 would be {} bytes, error mean {:.5} max {:.5}",
        model.dim + 4,
        int8.0,
        int8.1,
        model.dim * 2,
        fp16.0,
        fp16.1
    );
    let (rate_plain, bytes_plain) = ingest(&model, false)?;
    let (rate_thumb, bytes_thumb) = ingest(&model, true)?;
    println!(
        "  ingest through the recorder: {rate_plain:.0} samples/s without thumbnails ({bytes_plain:.0} bytes/sample), {rate_thumb:.0} samples/s with 160 px JPEG thumbnails ({bytes_thumb:.0} bytes/sample)"
    );
    let (alone, beside, stored_rate, dropped) = inference_beside_ingest(args, &model, true)?;
    println!(
        "  worker end to end: {alone:.1} img/s alone, {beside:.1} img/s while the recorder stores {stored_rate:.0} samples/s with thumbnails ({dropped} dropped): ratio {:.3}",
        beside / alone
    );
    let (alone_plain, beside_plain, stored_plain, dropped_plain) =
        inference_beside_ingest(args, &model, false)?;
    println!(
        "  worker end to end: {alone_plain:.1} img/s alone, {beside_plain:.1} img/s while the recorder stores {stored_plain:.0} samples/s without thumbnails ({dropped_plain} dropped): ratio {:.3}",
        beside_plain / alone_plain
    );
    let search = search_figures(&model, args.history_samples)?;
    let label_cache = label_cache_figures(args)?;
    Ok(json!({
        "int8_cosine_error_mean": int8.0,
        "int8_cosine_error_max": int8.1,
        "fp16_cosine_error_mean": fp16.0,
        "fp16_cosine_error_max": fp16.1,
        "ingest_samples_per_s": rate_plain,
        "ingest_samples_per_s_thumbnails": rate_thumb,
        "bytes_per_sample": bytes_plain,
        "bytes_per_sample_thumbnails": bytes_thumb,
        "worker_images_per_s_alone": alone,
        "worker_images_per_s_beside_ingest": beside,
        "beside_over_alone": beside / alone,
        "ingest_beside_inference_samples_per_s": stored_rate,
        "ingest_beside_inference_dropped": dropped,
        "without_thumbnails": {
            "worker_images_per_s_alone": alone_plain,
            "worker_images_per_s_beside_ingest": beside_plain,
            "beside_over_alone": beside_plain / alone_plain,
            "ingest_beside_inference_samples_per_s": stored_plain,
            "ingest_beside_inference_dropped": dropped_plain,
        },
        "search": search,
        "label_cache": label_cache,
    }))
}

/// Wall time of `clipfilterd classify` with a label set of `--label-cache-labels` labels x 80
/// templates, in a fresh process each time (as a restarted daemon or another command would load
/// it): with an empty on-disk embedding cache, then twice with the cache it filled (best of the
/// two), and with a one-label set (what loading the model and classifying cost alone).
fn label_cache_figures(args: &BenchArgs) -> anyhow::Result<Value> {
    let n = args.label_cache_labels;
    let dir = BenchDir::new()?;
    let labels = dir.path().join("labels.toml");
    let one = dir.path().join("one.toml");
    let mut text = String::from("[defaults]\ntemplates = \"imagenet80\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[label]]\nname = \"thing{i}\"\nprompts = [\"thing number {i}\"]\n"
        ));
    }
    std::fs::write(&labels, text).with_context(|| format!("writing {}", labels.display()))?;
    std::fs::write(
        &one,
        "[defaults]\ntemplates = \"imagenet80\"\n\n[[label]]\nname = \"thing\"\nprompts = [\"a thing\"]\n",
    )
    .with_context(|| format!("writing {}", one.display()))?;
    let image = dir.path().join("frame.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 30, 30]))
        .save(&image)
        .with_context(|| format!("writing {}", image.display()))?;
    let cache = dir.path().join("cache");
    let exe = std::env::current_exe().context("finding clipfilterd")?;
    let run = |set: &Path| -> anyhow::Result<f64> {
        let start = Instant::now();
        let out = Command::new(&exe)
            .arg("classify")
            .arg("-m")
            .arg(&args.model.model)
            .arg("--variant")
            .arg(args.model.variant.to_string())
            .arg("--labels")
            .arg(set)
            .arg(&image)
            .env(clipfilter::encoder::cache::CACHE_ENV, &cache)
            .output()
            .context("running clipfilterd classify")?;
        if !out.status.success() {
            bail!(
                "clipfilterd classify failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(start.elapsed().as_secs_f64())
    };
    println!("  label set of {n} labels x 80 templates, loaded by a fresh `clipfilterd classify`:");
    let cold = run(&labels)?;
    let warm = run(&labels)?.min(run(&labels)?);
    let base = run(&one)?.min(run(&one)?);
    println!(
        "    empty embedding cache {cold:.2} s, filled cache {warm:.2} s (cold/warm {:.1}x); one label: {base:.2} s",
        cold / warm
    );
    Ok(json!({
        "labels": n,
        "templates": 80,
        "cold_s": cold,
        "warm_s": warm,
        "one_label_s": base,
    }))
}
