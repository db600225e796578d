//! `clipfilterd bench`: throughput and latency figures, printed as a table and written as JSON.
//!
//! Sections (select with `--sections`):
//! - `inference`: image-tower images/s at each batch size, straight on the ONNX session and
//!   through the shared worker, and end to end from decoded 1080p NV12 frames to scored events;
//! - `preprocess`: milliseconds to turn one 1080p frame into the model input, per pixel format;
//! - `fit`, `crops`: what the fit, tiles and regions cost (see `bench_crops.rs`);
//! - `latency`: frame-to-verdict p50/p99 at light load, against one batch-1 inference;
//! - `int8`: the quantized variant's images/s and its embeddings' cosine to fp32 on real photos;
//! - `pipelines`: end-to-end frames/s of `--streams` concurrent file pipelines (decode ->
//!   clipfilter at `--interval` -> fakesink, as fast as they decode) sharing one worker;
//! - `static`: CPU cost of a static-scene live camera sampled at 2 fps, scene gate on, against
//!   the same pipeline without clipfilter;
//! - `baselines`: a Python onnxruntime session and transformers on PyTorch on the same ONNX file
//!   and input shape (via `tools/clip-tools bench-baselines`), with our ratio to each, and the
//!   fp32 ceiling of this machine: ONNX Runtime's MatMul GFLOP/s on the tower's largest product
//!   divided by the tower's FLOPs per image;
//! - `history` (not run by default): the sample history's ingest rate and bytes per sample, the
//!   worker's images/s while it ingests, and one search over `--history-samples` stored samples
//!   against a numpy brute-force baseline (see [`history`]);
//! - `triton`, `nats`: through servers (`--triton`, `--nats`), see [`super::bench_remote`];
//!   not in the default set;
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

mod history;

use super::ModelArgs;
use super::bench_session::{
    ROUNDS, Rate, SessionBench, engine_config, frame_1080p, frame_ref, threads,
};
use clipfilter::engine::{Engine, decode_image};
use clipfilter::labels::{CompiledLabels, LabelDefaults, LabelSet, Threshold};
use clipfilter::matcher::Matcher;
use clipfilter::model::{ModelDir, Variant};
use clipfilter::preprocess::{PixelFormat, Preprocessor};
use clipfilter::remote::WireFormat;
use clipfilter::worker::StreamOptions;
use clipfilter::zeroshot::{Scores, Templates};

/// Parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Section {
    Inference,
    Preprocess,
    Latency,
    Int8,
    Pipelines,
    Static,
    Baselines,
    History,
    Fit,
    Crops,
    Triton,
    Nats,
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
        default_value = "inference,preprocess,fit,crops,latency,int8,pipelines,static,baselines"
    )]
    pub sections: Vec<Section>,

    /// Concurrent file pipelines in the `pipelines` section.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,

    /// Sampling interval of the `pipelines` section, in milliseconds of stream time.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,

    /// Video for the `pipelines` section (default: the set-up's .local/media/video/vtest.avi).
    #[arg(long, value_name = "FILE")]
    pub video: Option<PathBuf>,

    /// Stored samples the `history` section searches.
    #[arg(long, default_value_t = 1_000_000)]
    pub history_samples: usize,

    /// Labels (80 templates each) of the set the `history` section loads with a cold and a
    /// warm embedding cache.
    #[arg(long, default_value_t = 1_000)]
    pub label_cache_labels: usize,

    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Photos for the int8-vs-fp32 comparison (default: .local/media/photos of the set-up).
    #[arg(long, value_name = "DIR")]
    pub photos: Option<PathBuf>,

    /// Triton endpoint of the `triton` section (its models named as `model export-triton`
    /// writes them: clip_image, clip_image_fp16, clip_image_uint8, clip_text).
    #[arg(long, value_name = "URL")]
    pub triton: Option<String>,

    /// Wire formats of the `triton` section.
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp16,uint8", value_parser = parse_wire)]
    pub wires: Vec<WireFormat>,

    /// NATS server with JetStream for the `nats` section.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,

    /// Events published in the `nats` section.
    #[arg(long, default_value_t = 6000)]
    pub nats_events: usize,
}

fn parse_wire(s: &str) -> Result<WireFormat, String> {
    clipfilter::remote::parse_wire(s).map_err(|e| e.to_string())
}

/// Images/s of the bare session at `batch`, measured on its own.
fn session_rate(
    model: &ModelDir,
    args: &ModelArgs,
    batch: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    Ok(SessionBench::load(model, args, batch)?
        .measure(seconds)?
        .per_s())
}

/// The shared worker fed from one stream, either with ready tensors (worker overhead only) or
/// with decoded 1080p NV12 frames preprocessed on the feeding thread, scored and run through
/// the matcher (end to end).
struct WorkerBench {
    labels: CompiledLabels,
    matcher: Matcher,
    frame: (Vec<u8>, [usize; 3], [usize; 3]),
    pre: Preprocessor,
    template: Vec<f32>,
    stream: clipfilter::worker::Stream,
    scores: Scores,
    batch: usize,
}

impl WorkerBench {
    fn new(engine: &Engine) -> anyhow::Result<Self> {
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
        let matcher = Matcher::new(&labels);
        let frame = frame_1080p(PixelFormat::Nv12);
        let mut pre = engine.preprocessor()?;
        let mut template = vec![0.0; pre.output_len()];
        pre.run(
            &frame_ref(PixelFormat::Nv12, &frame.0, frame.1, frame.2),
            &mut template,
        )?;
        let stream = engine.stream(StreamOptions::batch(batch * 2));
        let mut bench = Self {
            labels,
            matcher,
            frame,
            pre,
            template,
            stream,
            scores: Scores::default(),
            batch,
        };
        // Warm up: two batches through the whole path.
        bench.measure(0.0, true)?;
        Ok(bench)
    }

    /// Keeps two batches in flight for at least `seconds` (and at least three batches), counts
    /// the results that came back in that time, then drains what is still in flight (not
    /// counted) so that the next measurement starts on an idle worker.
    fn measure(&mut self, seconds: f64, end_to_end: bool) -> anyhow::Result<Rate> {
        let frame = frame_ref(PixelFormat::Nv12, &self.frame.0, self.frame.1, self.frame.2);
        let mut in_flight = 0usize;
        let mut done = 0usize;
        let mut left_in_batch = 0usize;
        let start = Instant::now();
        let mut took = None;
        loop {
            if took.is_none() {
                while in_flight < self.batch * 2 {
                    let mut buf = self.stream.buffer();
                    if end_to_end {
                        self.pre.run(&frame, &mut buf)?;
                    } else {
                        buf.copy_from_slice(&self.template);
                    }
                    self.stream.submit(buf)?;
                    in_flight += 1;
                }
            } else if in_flight == 0 {
                break;
            }
            let out = self
                .stream
                .wait_result(Duration::from_secs(600))
                .context("worker did not answer")?;
            in_flight -= 1;
            let e = out.embeddings.map_err(|m| anyhow::anyhow!(m))?;
            self.labels.score_into(&e, &mut self.scores)?;
            self.matcher.update(&self.labels, &self.scores);
            self.stream.recycle(out.pixels);
            if took.is_none() {
                // Results of a batch arrive together: count whole batches only, or the last
                // one would be timed in full but counted in part.
                if left_in_batch == 0 {
                    left_in_batch = out.batch;
                }
                left_in_batch -= 1;
                done += 1;
                if left_in_batch == 0
                    && done >= 3 * self.batch
                    && start.elapsed().as_secs_f64() >= seconds
                {
                    took = Some(start.elapsed().as_secs_f64());
                }
            }
        }
        Ok(Rate {
            images: done,
            seconds: took.unwrap_or_default(),
        })
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

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Plays `desc` until EOS (or `limit`), returning the wall time.
fn play(desc: &str, limit: Option<Duration>) -> anyhow::Result<(gst::Pipeline, Duration)> {
    use gst::prelude::*;
    let pipeline = gst::parse::launch(desc)
        .with_context(|| format!("pipeline {desc}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline: {desc}"))?;
    let bus = pipeline.bus().context("pipeline bus")?;
    let started = Instant::now();
    pipeline.set_state(gst::State::Playing)?;
    let deadline = started + limit.unwrap_or(Duration::from_secs(3600));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                let _ = pipeline.set_state(gst::State::Null);
                bail!("{}: {}", desc, e.error());
            }
            _ => {}
        }
    }
    let took = started.elapsed();
    Ok((pipeline, took))
}

fn stats_of(pipeline: &gst::Pipeline, name: &str) -> Option<gst::Structure> {
    use gst::prelude::*;
    pipeline
        .by_name(name)
        .map(|e| e.property::<gst::Structure>("stats"))
}

/// `streams` file pipelines at once, as fast as they decode, every sample inferred (sync mode:
/// a sampled frame waits for its verdict, so nothing is dropped); frames/s and inferences/s
/// over the wall time.
fn pipelines_section(args: &BenchArgs, model: &ModelDir) -> anyhow::Result<Value> {
    use gst::prelude::*;
    let video = args.video.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/media/video/vtest.avi")
    });
    if !video.is_file() {
        bail!(
            "{} not found (run tools/setup.sh, or give --video)",
            video.display()
        );
    }
    let filter = format!(
        "clipfilter model=\"{}\" variant={} execution-provider={} threads={} max-batch={} interval={} mode=sync prompts=\"a person walking;a white van;an empty path\"",
        model.dir.display(),
        args.model.variant.name(),
        args.model
            .providers
            .0
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(","),
        threads(&args.model),
        args.model.batch.max(1),
        args.interval_ms * 1_000_000
    );
    let decode = format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert",
        video.display()
    );
    // Decoding alone, for the cost of the decoder.
    let (p, decode_only) = play(&format!("{decode} ! fakesink sync=false"), None)?;
    let _ = p.set_state(gst::State::Null);
    let desc: Vec<String> = (0..args.streams)
        .map(|i| format!("{decode} ! {filter} name=cf{i} ! fakesink sync=false"))
        .collect();
    // One pipeline holding every stream: they run concurrently and share the engine.
    let (pipeline, took) = play(&desc.join("  "), None)?;
    let (mut frames, mut sampled, mut inferred, mut dropped) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..args.streams {
        if let Some(s) = stats_of(&pipeline, &format!("cf{i}")) {
            let g = |f: &str| s.get::<u64>(f).unwrap_or(0);
            frames += g("frames");
            sampled += g("sampled");
            inferred += g("inferred");
            dropped += g("dropped");
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    let secs = took.as_secs_f64();
    let per_stream_frames = frames as f64 / args.streams.max(1) as f64;
    println!(
        "\n{} concurrent pipelines on {} (interval {} ms, sync: every sample inferred): {:.1} s wall, {frames} frames = {:.0} frames/s, {sampled} sampled, {inferred} inferred = {:.1} inferences/s, {dropped} dropped (newest frame won); decoding one stream alone: {:.0} frames/s",
        args.streams,
        video
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        args.interval_ms,
        secs,
        frames as f64 / secs,
        inferred as f64 / secs,
        per_stream_frames / decode_only.as_secs_f64()
    );
    Ok(json!({
        "streams": args.streams, "interval_ms": args.interval_ms, "wall_s": secs,
        "frames": frames, "frames_per_s": frames as f64 / secs, "sampled": sampled,
        "inferred": inferred, "inferences_per_s": inferred as f64 / secs, "dropped": dropped,
        "decode_only_frames_per_s": per_stream_frames / decode_only.as_secs_f64(),
    }))
}

/// CPU share of one core that clipfilter adds to a static live 720p25 camera sampled at 2 fps
/// with the scene gate on (and, for comparison, with it off), untiled and with 3x3 tiles.
fn static_section(args: &BenchArgs, model: &ModelDir) -> anyhow::Result<Value> {
    let seconds = Duration::from_secs_f64(args.seconds.max(5.0) * 2.0);
    let source = "videotestsrc is-live=true pattern=smpte ! video/x-raw,format=I420,width=1280,height=720,framerate=25/1";
    let filter = |gate: f64, tiles: &str| {
        format!(
            "clipfilter name=cf model=\"{}\" variant={} execution-provider=cpu threads={} interval=500000000 scene-gate={gate} tiles={tiles} prompts=\"a person walking;a white van;an empty path\"",
            model.dir.display(),
            args.model.variant.name(),
            threads(&args.model)
        )
    };
    let measure = |desc: String| -> anyhow::Result<(f64, Option<gst::Structure>)> {
        let cpu0 = cpu_time();
        let (p, wall) = play(&desc, Some(seconds))?;
        let cpu = (cpu_time() - cpu0).as_secs_f64() / wall.as_secs_f64();
        let stats = stats_of(&p, "cf");
        let _ = gst::prelude::ElementExt::set_state(&p, gst::State::Null);
        Ok((cpu, stats))
    };
    // The element's engine, held across the runs so that no run pays for loading the model.
    let mut cfg = engine_config(&args.model, 8, args.model.variant);
    cfg.session.providers = vec![clipfilter::encoder::Provider::Cpu];
    let _engine = Engine::shared(&cfg)?;
    measure(format!("{source} ! {} ! fakesink", filter(3.0, "none")))?;
    let (bare, _) = measure(format!("{source} ! fakesink"))?;
    let (gated, gs) = measure(format!("{source} ! {} ! fakesink", filter(3.0, "none")))?;
    let (tiled, ts) = measure(format!("{source} ! {} ! fakesink", filter(3.0, "3x3")))?;
    let (ungated, us) = measure(format!("{source} ! {} ! fakesink", filter(0.0, "none")))?;
    let count = |s: &Option<gst::Structure>, f: &str| {
        s.as_ref().and_then(|s| s.get::<u64>(f).ok()).unwrap_or(0)
    };
    println!(
        "\nstatic live camera, 1280x720 I420 at 25 fps, sampled at 2 fps, {:.0} s each: source alone {:.1}% of a core; clipfilter adds {:.2}% with the scene gate ({} inferred, {} skipped), {:.1}% without it ({} inferred); with 3x3 tiles and the gate (10 crops, a gate each) {:.2}% ({} model inputs inferred, {} samples skipped), {:.2}x the untiled gated cost",
        seconds.as_secs_f64(),
        bare * 100.0,
        (gated - bare) * 100.0,
        count(&gs, "inferred"),
        count(&gs, "skipped"),
        (ungated - bare) * 100.0,
        count(&us, "inferred"),
        (tiled - bare) * 100.0,
        count(&ts, "crops-inferred"),
        count(&ts, "skipped"),
        (tiled - bare) / (gated - bare)
    );
    Ok(json!({
        "seconds": seconds.as_secs_f64(), "source_only_core_share": bare,
        "clipfilter_core_share_gate_on": gated - bare, "clipfilter_core_share_gate_off": ungated - bare,
        "gate_on_inferred": count(&gs, "inferred"), "gate_on_skipped": count(&gs, "skipped"),
        "gate_off_inferred": count(&us, "inferred"),
        "tiled_3x3_core_share_gate_on": tiled - bare,
        "tiled_3x3_crops_inferred": count(&ts, "crops-inferred"),
        "tiled_3x3_skipped": count(&ts, "skipped"),
        "tiled_vs_untiled_gate_on": (tiled - bare) / (gated - bare),
    }))
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

/// Runs `tools/clip-tools bench-baselines --only <only>` and returns its JSON lines.
fn baselines(
    model: &Path,
    batch: usize,
    threads: usize,
    seconds: f64,
    only: &[&str],
) -> anyhow::Result<Vec<Value>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/clip-tools");
    let out = Command::new(&script)
        .args(["bench-baselines", "--json", "--only"])
        .args(only)
        .arg("--model")
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
    if has(Section::Inference) {
        println!(
            "\n{:<8} {:>14} {:>14} {:>14} {:>8}",
            "batch", "session img/s", "worker img/s", "end-to-end", "e2e/ses"
        );
        let mut rows = Vec::new();
        for &b in &args.batches {
            let mut session = SessionBench::load(&model, &args.model, b)?;
            let engine = Engine::load(&engine_config(&args.model, b, args.model.variant))?;
            let mut worker = WorkerBench::new(&engine)?;
            let (mut ses, mut bare, mut e2e) = (Rate::default(), Rate::default(), Rate::default());
            let slice = args.seconds / ROUNDS as f64;
            for _ in 0..ROUNDS {
                ses.add(session.measure(slice)?);
                bare.add(worker.measure(slice, false)?);
                e2e.add(worker.measure(slice, true)?);
            }
            let (ses, bare, e2e) = (ses.per_s(), bare.per_s(), e2e.per_s());
            session_rates.insert(b, ses);
            println!(
                "{b:<8} {ses:>14.1} {bare:>14.1} {e2e:>14.1} {:>8.2}",
                e2e / ses
            );
            rows.push(json!({"batch": b, "session_images_per_s": ses, "worker_images_per_s": bare, "end_to_end_images_per_s": e2e, "end_to_end_vs_session": e2e / ses, "rounds": ROUNDS}));
        }
        report.insert("inference", Value::Array(rows));
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

    if has(Section::Fit) {
        report.insert(
            "fit_preprocess_1080p",
            super::bench_crops::fit_section(&model)?,
        );
    }
    if has(Section::Crops) {
        report.insert(
            "crops",
            super::bench_crops::crops_section(&args.model, args.seconds)?,
        );
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
                let mut q_session = SessionBench::load(&q, &args.model, b)?;
                let mut f_session = SessionBench::load(&model, &args.model, b)?;
                let (mut q_rate, mut f_rate) = (Rate::default(), Rate::default());
                for _ in 0..ROUNDS {
                    q_rate.add(q_session.measure(args.seconds / ROUNDS as f64)?);
                    f_rate.add(f_session.measure(args.seconds / ROUNDS as f64)?);
                }
                drop((q_session, f_session));
                let (q_rate, f_rate) = (q_rate.per_s(), f_rate.per_s());
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

    if has(Section::Pipelines) || has(Section::Static) {
        crate::gstreamer::init()?;
    }
    if has(Section::Pipelines) {
        report.insert("pipelines", pipelines_section(&args, &model)?);
    }
    if has(Section::Static) {
        report.insert("static_camera", static_section(&args, &model)?);
    }

    if has(Section::History) {
        report.insert("history", history::section(&args)?);
    }

    if has(Section::Baselines) {
        println!("\nbaselines on the same ONNX file and input shape ({t} threads):");
        let mut rows = Vec::new();
        let slice = args.seconds / ROUNDS as f64;
        for &b in &args.batches {
            let mut session = SessionBench::load(&model, &args.model, b)?;
            let mut ours = Rate::default();
            // Ours and the Python onnxruntime session (a short process each round, on the same
            // ONNX file) take turns, so that both see the same machine.
            let mut python = Rate::default();
            let mut lines = Vec::new();
            for _ in 0..ROUNDS {
                ours.add(session.measure(slice)?);
                match baselines(&model.dir, b, t, slice, &["onnxruntime-python"]) {
                    Err(e) => {
                        println!("  batch {b}: onnxruntime-python unavailable: {e:#}");
                        python = Rate::default();
                        break;
                    }
                    Ok(ls) => {
                        for l in ls {
                            match (l["runs"].as_u64(), l["seconds"].as_f64()) {
                                (Some(runs), Some(secs)) => python.add(Rate {
                                    images: runs as usize * b,
                                    seconds: secs,
                                }),
                                _ => lines.push(l),
                            }
                        }
                    }
                }
            }
            if python.seconds > 0.0 {
                lines.push(json!({"baseline": "onnxruntime-python", "images_per_s": python.per_s(), "rounds": ROUNDS}));
            }
            // PyTorch and the MatMul ceiling: one run between two measurements of ours.
            ours.add(session.measure(slice)?);
            match baselines(
                &model.dir,
                b,
                t,
                args.seconds,
                &["transformers-pytorch", "matmul-ceiling"],
            ) {
                Err(e) => println!("  batch {b}: baselines unavailable: {e:#}"),
                Ok(ls) => lines.extend(ls),
            }
            ours.add(session.measure(slice)?);
            drop(session);
            let ours = ours.per_s();
            for l in lines {
                let name = l["baseline"].as_str().unwrap_or("?").to_string();
                let rate = l["images_per_s"].as_f64();
                match rate {
                    Some(r) if name == "matmul-ceiling" => println!(
                        "  batch {b:<3} {:<22} {r:>8.1} img/s   clipfilter {ours:>8.1} img/s   {:.2} of it",
                        format!(
                            "ceiling: {:.0} GFLOP/s",
                            l["matmul_gflops"].as_f64().unwrap_or(f64::NAN)
                        ),
                        ours / r
                    ),
                    Some(r) => println!(
                        "  batch {b:<3} {name:<22} {r:>8.1} img/s   clipfilter {ours:>8.1} img/s   ratio {:.2}",
                        ours / r
                    ),
                    None => println!(
                        "  batch {b:<3} {name:<22} skipped: {}",
                        l["skipped"].as_str().unwrap_or("")
                    ),
                }
                let mut row = json!({"batch": b, "baseline": name, "images_per_s": rate, "clipfilter_images_per_s": ours, "ratio": rate.map(|r| ours / r)});
                if let Some(g) = l.get("matmul_gflops") {
                    row["matmul_gflops"] = g.clone();
                }
                rows.push(row);
            }
        }
        report.insert("baselines", Value::Array(rows));
    }

    if has(Section::Triton) {
        report.insert(
            "triton",
            super::bench_remote::triton_section(
                args.triton.as_deref(),
                &args.wires,
                &args.batches,
                args.seconds,
                &args.model,
                &model,
            )?,
        );
    }
    if has(Section::Nats) {
        report.insert(
            "nats",
            super::bench_remote::nats_section(args.nats.as_deref(), args.nats_events)?,
        );
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
