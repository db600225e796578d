//! `clipfilterd bench-element`: what the `clipfilter` element costs a pipeline.
//!
//! 1. Per-frame cost on the streaming thread, measured between buffer probes on the element's
//!    sink and src pads (so only the element's own work counts), for 1080p NV12 frames fed by
//!    an `appsrc`: `identity` (the floor), `clipfilter` whose interval is never reached
//!    (unsampled frames), and `clipfilter interval=0` (every frame sampled: converted,
//!    resized and queued for inference; async mode, so inference runs on the worker thread).
//! 2. Throughput of a decoding pipeline (`filesrc ! qtdemux ! h264parse ! avdec_h264 ! X !
//!    fakesink`) with `X` = `identity` and `X` = `clipfilter` at its default interval, in
//!    frames per second of wall time.
//!
//! Variants run in alternation, `--rounds` times; per-frame costs are medians over every
//! frame, throughputs the best round.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use gst::prelude::*;
use serde::Serialize;

use super::{ModelArgs, Outcome};

/// Arguments of `bench element`.
#[derive(Debug, Args)]
pub struct BenchElementArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Prompts of the label set (`;`-separated, as the element's `prompts` property).
    #[arg(long, default_value = "a person;a car;a dog;an empty street")]
    pub prompts: String,

    /// Frames per run of the per-frame measurement.
    #[arg(long, default_value_t = 600)]
    pub frames: u64,

    /// Frame width.
    #[arg(long, default_value_t = 1920)]
    pub width: u32,

    /// Frame height.
    #[arg(long, default_value_t = 1080)]
    pub height: u32,

    /// Pixel format of the per-frame measurement (any format the element takes).
    #[arg(long, default_value = "NV12")]
    pub format: String,

    /// Rounds of every variant, in alternation.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,

    /// Sampling interval of the throughput run, in milliseconds of stream time.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,

    /// H.264 MP4 file for the throughput run (default: 10 s of 1080p30 noise at 8 Mb/s, made
    /// with x264enc).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Skip the throughput run.
    #[arg(long)]
    pub no_throughput: bool,

    /// Print only the JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Cost {
    variant: String,
    median_ns: u64,
    mean_ns: u64,
    p99_ns: u64,
    /// Median minus identity's median.
    over_identity_ns: i64,
    /// Median over identity's median.
    ratio_to_identity: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    variant: String,
    frames: u64,
    fps: f64,
    /// Frames per second relative to the pipeline with `identity`.
    relative: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    format: String,
    width: u32,
    height: u32,
    frames: u64,
    rounds: usize,
    per_frame: Vec<Cost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    throughput_file: Option<String>,
    throughput: Vec<Throughput>,
    /// Frames the element sampled in the throughput run, and how many reached the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    throughput_stats: Option<String>,
}

/// Runs `bench element`.
pub fn run(args: BenchElementArgs) -> anyhow::Result<Outcome> {
    crate::gstreamer::init()?;
    if clipfilter::preprocess::PixelFormat::from_gst_name(&args.format).is_none() {
        bail!(
            "--format {}: clipfilter does not take this format",
            args.format
        );
    }
    let clipfilter = clipfilter_description(&args);
    let variants = [
        ("identity".to_string(), "identity silent=true".to_string()),
        (
            "clipfilter unsampled".to_string(),
            format!(
                "{clipfilter} interval={}",
                clipfilter::limits::INTERVAL_NS.end()
            ),
        ),
        (
            "clipfilter sampled (interval=0)".to_string(),
            format!("{clipfilter} interval=0"),
        ),
    ];
    let frame = make_frame(&args)?;
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds.max(1) {
        for (i, (name, desc)) in variants.iter().enumerate() {
            let costs = per_frame_run(&args, desc, &frame)
                .with_context(|| format!("per-frame run of {name}"))?;
            if !args.json {
                eprintln!(
                    "round {}: {name}: median {} ns",
                    round + 1,
                    percentile(&costs, 0.5)
                );
            }
            samples[i].extend(costs);
        }
    }
    let identity = percentile(&samples[0], 0.5).max(1);
    let per_frame: Vec<Cost> = variants
        .iter()
        .zip(&samples)
        .map(|((name, _), s)| {
            let median = percentile(s, 0.5);
            Cost {
                variant: name.clone(),
                median_ns: median,
                mean_ns: s.iter().sum::<u64>() / s.len().max(1) as u64,
                p99_ns: percentile(s, 0.99),
                over_identity_ns: median as i64 - identity as i64,
                ratio_to_identity: median as f64 / identity as f64,
            }
        })
        .collect();

    let mut throughput = Vec::new();
    let mut throughput_file = None;
    let mut throughput_stats = None;
    if !args.no_throughput {
        let mut made = None;
        let file = match &args.file {
            Some(f) => f.clone(),
            None => {
                let f = std::env::temp_dir()
                    .join(format!("clipfilter-bench-{}.mp4", uuid::Uuid::now_v7()));
                made = Some(RemoveOnDrop(f.clone()));
                if !args.json {
                    eprintln!("encoding 10 s of 1080p30 H.264 for the throughput run...");
                }
                make_h264(&f)?;
                f
            }
        };
        throughput_file = Some(file.display().to_string());
        let decode = format!(
            "filesrc location=\"{}\" ! qtdemux ! h264parse ! avdec_h264",
            file.display()
        );
        let with = format!(
            "{clipfilter} name=cf interval={}",
            args.interval_ms * 1_000_000
        );
        let runs = [("identity", "identity silent=true"), ("clipfilter", &with)];
        let mut best = [(0u64, Duration::MAX); 2];
        for _ in 0..args.rounds.max(1) {
            for (i, (name, x)) in runs.iter().enumerate() {
                let (frames, took, stats) =
                    throughput_run(&format!("{decode} ! {x} ! fakesink sync=false"))
                        .with_context(|| format!("throughput run with {name}"))?;
                if !args.json {
                    eprintln!(
                        "{name}: {frames} frames in {took:?} ({:.1} fps)",
                        frames as f64 / took.as_secs_f64()
                    );
                }
                if took < best[i].1 {
                    best[i] = (frames, took);
                }
                if let Some(s) = stats {
                    throughput_stats = Some(s);
                }
            }
        }
        drop(made);
        let fps = |(f, d): (u64, Duration)| f as f64 / d.as_secs_f64();
        let base = fps(best[0]);
        for (i, (name, _)) in runs.iter().enumerate() {
            throughput.push(Throughput {
                variant: if i == 0 {
                    name.to_string()
                } else {
                    format!("clipfilter interval={} ms", args.interval_ms)
                },
                frames: best[i].0,
                fps: fps(best[i]),
                relative: fps(best[i]) / base,
            });
        }
    }

    let report = Report {
        model: args.model.model.display().to_string(),
        format: args.format.clone(),
        width: args.width,
        height: args.height,
        frames: args.frames,
        rounds: args.rounds,
        per_frame,
        throughput_file,
        throughput,
        throughput_stats,
    };
    if !args.json {
        println!(
            "per-frame cost on the streaming thread ({}x{} {}, {} frames x {} rounds):",
            report.width, report.height, report.format, report.frames, report.rounds
        );
        for c in &report.per_frame {
            println!(
                "  {:<34} median {:>9} ns  mean {:>9} ns  p99 {:>9} ns  {:+} ns over identity ({:.2}x)",
                c.variant,
                c.median_ns,
                c.mean_ns,
                c.p99_ns,
                c.over_identity_ns,
                c.ratio_to_identity
            );
        }
        if !report.throughput.is_empty() {
            println!("throughput of decode ! X ! fakesink:");
            for t in &report.throughput {
                println!(
                    "  {:<34} {:>8.1} fps  ({:.1}% of identity)",
                    t.variant,
                    t.fps,
                    t.relative * 100.0
                );
            }
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(Outcome::Ok)
}

/// Removes the generated file, also on errors.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn clipfilter_description(args: &BenchElementArgs) -> String {
    let m = &args.model;
    let providers: Vec<&str> = m.providers.0.iter().map(|p| p.name()).collect();
    format!(
        "clipfilter model=\"{}\" variant={} execution-provider={} require-provider={} threads={} max-batch={} prompts=\"{}\"",
        m.model.display(),
        m.variant.name(),
        providers.join(","),
        m.require_provider,
        m.threads,
        m.batch,
        args.prompts
    )
}

fn percentile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn caps(args: &BenchElementArgs) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", &args.format)
        .field("width", args.width as i32)
        .field("height", args.height as i32)
        .field("framerate", gst::Fraction::new(30, 1))
        .build()
}

/// One frame of `videotestsrc`'s SMPTE bars in the benchmark's format and size.
fn make_frame(args: &BenchElementArgs) -> anyhow::Result<gst::Buffer> {
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=1 pattern=smpte ! {} ! appsink name=sink sync=false",
        caps(args)
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let sink = p
        .by_name("sink")
        .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
        .context("appsink")?;
    p.set_state(gst::State::Playing)?;
    let sample = sink.pull_sample();
    p.set_state(gst::State::Null)?;
    let sample = sample.map_err(|_| anyhow::anyhow!("videotestsrc gave no frame"))?;
    sample.buffer_owned().context("sample without buffer")
}

/// Pushes `args.frames` copies of `frame` through `appsrc ! desc ! fakesink` and returns the
/// time each buffer spent inside the element under test.
fn per_frame_run(
    args: &BenchElementArgs,
    desc: &str,
    frame: &gst::Buffer,
) -> anyhow::Result<Vec<u64>> {
    let p = gst::parse::launch(&format!(
        "appsrc name=src format=time block=true max-buffers=4 caps=\"{}\" ! {desc} name=x ! fakesink sync=false",
        caps(args)
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let src = p
        .by_name("src")
        .and_then(|s| s.downcast::<gst_app::AppSrc>().ok())
        .context("appsrc")?;
    let x = p.by_name("x").context("element under test")?;
    let entered: Arc<Mutex<Option<Instant>>> = Arc::default();
    let costs: Arc<Mutex<Vec<u64>>> =
        Arc::new(Mutex::new(Vec::with_capacity(args.frames as usize)));
    let (e1, e2, c) = (entered.clone(), entered, costs.clone());
    let sink_pad = x.static_pad("sink").context("sink pad")?;
    let src_pad = x.static_pad("src").context("src pad")?;
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if let Ok(mut t) = e1.lock() {
            *t = Some(Instant::now());
        }
        gst::PadProbeReturn::Ok
    });
    src_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        let start = e2.lock().ok().and_then(|mut t| t.take());
        if let (Some(start), Ok(mut c)) = (start, c.lock()) {
            c.push(start.elapsed().as_nanos() as u64);
        }
        gst::PadProbeReturn::Ok
    });
    p.set_state(gst::State::Playing)?;
    let duration = gst::ClockTime::from_nseconds(1_000_000_000 / 30);
    for i in 0..args.frames {
        let mut b = frame.copy();
        {
            let b = b.get_mut().context("fresh buffer")?;
            b.set_pts(duration * i);
            b.set_duration(duration);
        }
        src.push_buffer(b)
            .map_err(|e| anyhow::anyhow!("appsrc refused a buffer: {e:?}"))?;
    }
    src.end_of_stream()
        .map_err(|e| anyhow::anyhow!("appsrc refused EOS: {e:?}"))?;
    wait_eos(&p)?;
    p.set_state(gst::State::Null)?;
    let costs = std::mem::take(&mut *costs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(costs)
}

fn wait_eos(p: &gst::Pipeline) -> anyhow::Result<()> {
    let bus = p.bus().context("bus")?;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(e) => {
                let _ = p.set_state(gst::State::Null);
                bail!("{} ({:?})", e.error(), e.debug())
            }
            _ => {}
        }
    }
    let _ = p.set_state(gst::State::Null);
    bail!("no EOS within 10 minutes")
}

/// Plays `desc` to EOS; returns the frames that reached the sink, the wall time from PLAYING
/// to EOS and the element's stats (if it has one named `cf`).
fn throughput_run(desc: &str) -> anyhow::Result<(u64, Duration, Option<String>)> {
    let p = gst::parse::launch(desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let sink = p
        .iterate_sinks()
        .into_iter()
        .flatten()
        .next()
        .context("a sink")?;
    let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let f = frames.clone();
    sink.static_pad("sink").context("sink pad")?.add_probe(
        gst::PadProbeType::BUFFER,
        move |_, _| {
            f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        },
    );
    // Preroll first, so that opening the file and loading the model are not counted.
    p.set_state(gst::State::Paused)?;
    let (res, _, _) = p.state(gst::ClockTime::from_seconds(600));
    res.context("pipeline does not preroll")?;
    let start = Instant::now();
    p.set_state(gst::State::Playing)?;
    wait_eos(&p)?;
    let took = start.elapsed();
    let stats = p
        .by_name("cf")
        .map(|cf| cf.property::<gst::Structure>("stats").to_string());
    p.set_state(gst::State::Null)?;
    Ok((
        frames.load(std::sync::atomic::Ordering::Relaxed),
        took,
        stats,
    ))
}

/// Encodes 10 s of 1080p30 to an H.264 MP4 at 8 Mb/s. The picture is noise, so that the
/// encoder spends the whole bitrate and decoding costs about what a real 1080p stream does
/// (videotestsrc's smooth patterns decode several times faster).
fn make_h264(path: &Path) -> anyhow::Result<()> {
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=300 pattern=snow \
         ! video/x-raw,format=I420,width=1920,height=1080,framerate=30/1 \
         ! x264enc speed-preset=ultrafast bitrate=8000 key-int-max=60 ! h264parse \
         ! mp4mux ! filesink location=\"{}\"",
        path.display()
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    p.set_state(gst::State::Playing)?;
    wait_eos(&p)?;
    p.set_state(gst::State::Null)?;
    Ok(())
}
