//! `clipfilterd bench` sections about what the model sees of a frame (see `bench.rs`):
//! - `fit`: milliseconds to turn one 1080p frame into the model input with each fit (crop, pad,
//!   crops), for NV12 and I420, and inferences per sample;
//! - `crops`: one sampled 1080p NV12 frame as 1, 4 (2x2 tiles) and 9 (3x3 tiles) crops:
//!   preprocessing milliseconds per sample and inferences/s through the shared worker.
//!
//! Figures that are compared take turns in rounds and are given as ratios measured in the same
//! run.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::ModelArgs;
use super::bench_session::{ROUNDS, Rate, engine_config, frame_1080p, frame_ref};
use clipfilter::crops::{CropPlan, CropSpec, Fit, Tiles};
use clipfilter::engine::Engine;
use clipfilter::gate::{GateConfig, SceneGate, Verdict};
use clipfilter::model::ModelDir;
use clipfilter::preprocess::{FrameRef, PixelFormat, Preprocessor};
use clipfilter::worker::StreamOptions;

/// Milliseconds per preprocessed frame of every crop of `plan`, over `n` runs.
fn plan_ms(
    pre: &mut Preprocessor,
    plan: &CropPlan,
    frame: &FrameRef<'_>,
    out: &mut Vec<f32>,
    n: u32,
) -> anyhow::Result<f64> {
    let all: Vec<usize> = (0..plan.len()).collect();
    let start = Instant::now();
    for _ in 0..n {
        plan.preprocess(pre, frame, &all, out)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / f64::from(n))
}

/// The `fit` section.
pub(super) fn fit_section(model: &ModelDir) -> anyhow::Result<Value> {
    let fits = [Fit::Crop, Fit::Pad, Fit::Crops];
    let mut pre = Preprocessor::new(model.preprocess.clone())?;
    println!(
        "\nfit: preprocess one 1920x1080 frame to {:?} (one thread; crop = the reference, ratios to it):",
        model.preprocess.output_size().unwrap_or_default()
    );
    println!(
        "  {:<6} {:>10} {:>10} {:>10} {:>9} {:>9}   inferences/sample crop, pad, crops",
        "format", "crop ms", "pad ms", "crops ms", "pad/crop", "crops/crop"
    );
    let mut rows = serde_json::Map::new();
    for format in [PixelFormat::Nv12, PixelFormat::I420] {
        let (data, offsets, strides) = frame_1080p(format);
        let frame = frame_ref(format, &data, offsets, strides);
        let plans: Vec<CropPlan> = fits
            .iter()
            .map(|f| CropPlan::new(&CropSpec::whole(*f), &pre, 1920, 1080))
            .collect::<clipfilter::Result<_>>()?;
        let mut out = Vec::new();
        for p in &plans {
            plan_ms(&mut pre, p, &frame, &mut out, 5)?;
        }
        let mut ms = [0.0f64; 3];
        for _ in 0..ROUNDS * 2 {
            for (m, p) in ms.iter_mut().zip(&plans) {
                *m += plan_ms(&mut pre, p, &frame, &mut out, 20)?;
            }
        }
        ms.iter_mut().for_each(|m| *m /= (ROUNDS * 2) as f64);
        let counts: Vec<usize> = plans.iter().map(CropPlan::len).collect();
        println!(
            "  {:<6} {:>10.2} {:>10.2} {:>10.2} {:>9.2} {:>9.2}   {}, {}, {}",
            format.gst_name(),
            ms[0],
            ms[1],
            ms[2],
            ms[1] / ms[0],
            ms[2] / ms[0],
            counts[0],
            counts[1],
            counts[2]
        );
        rows.insert(
            format.gst_name().to_string(),
            json!({
                "crop_ms": ms[0], "pad_ms": ms[1], "crops_ms": ms[2],
                "pad_vs_crop": ms[1] / ms[0], "crops_vs_crop": ms[2] / ms[0],
                "inferences_per_sample": {"crop": counts[0], "pad": counts[1], "crops": counts[2]},
                "rounds": ROUNDS * 2,
            }),
        );
    }
    Ok(Value::Object(rows))
}

/// One sampled frame as `crops` crops: the spec.
fn spec_of(crops: usize) -> CropSpec {
    let grid = |n: u32| CropSpec {
        fit: Fit::Pad,
        whole_frame: false,
        tiles: Tiles::new(n, n, 0.1).ok(),
        regions: Vec::new(),
    };
    match crops {
        4 => grid(2),
        9 => grid(3),
        _ => CropSpec::whole(Fit::Pad),
    }
}

/// Samples pushed through the worker for about `seconds`, two in flight, each preprocessed
/// from the frame on this thread (end to end): (samples, images, seconds).
fn samples_through(
    engine: &Engine,
    plan: &CropPlan,
    frame: &FrameRef<'_>,
    seconds: f64,
) -> anyhow::Result<(usize, Rate)> {
    let mut pre = engine.preprocessor()?;
    let mut stream = engine.stream(StreamOptions::batch(2));
    let all: Vec<usize> = (0..plan.len()).collect();
    let (mut in_flight, mut samples) = (0usize, 0usize);
    let start = Instant::now();
    let mut took = None;
    loop {
        if took.is_none() {
            while in_flight < 2 {
                let mut buf = stream.buffer_for(plan.len());
                plan.preprocess(&mut pre, frame, &all, &mut buf)?;
                stream.submit(buf)?;
                in_flight += 1;
            }
        } else if in_flight == 0 {
            break;
        }
        let out = stream
            .wait_result(Duration::from_secs(600))
            .context("worker did not answer")?;
        in_flight -= 1;
        out.embeddings
            .as_ref()
            .map_err(|m| anyhow::anyhow!("{m}"))?;
        stream.recycle(out.pixels);
        if took.is_none() {
            samples += 1;
            if samples >= 2 && start.elapsed().as_secs_f64() >= seconds {
                took = Some(start.elapsed().as_secs_f64());
            }
        }
    }
    Ok((
        samples,
        Rate {
            images: samples * plan.len(),
            seconds: took.unwrap_or_default(),
        },
    ))
}

/// Milliseconds per sample of a static camera with the scene gate on: every crop's gate looks
/// at its box and finds it unchanged (no inference), over `n` samples.
fn static_gate_ms(plan: &CropPlan, frame: &FrameRef<'_>, n: u32) -> f64 {
    let config = GateConfig {
        threshold: 3.0,
        ..GateConfig::default()
    };
    let mut gates = vec![SceneGate::new(config); plan.len()];
    let mut check = |t: u64| {
        let mut inferred = 0usize;
        for (gate, crop) in gates.iter_mut().zip(&plan.crops) {
            if let Verdict::Infer(_) = gate.check_area(frame, crop.pixels, Duration::from_millis(t))
            {
                inferred += 1;
            }
        }
        inferred
    };
    check(0);
    let start = Instant::now();
    let mut inferred = 0;
    for t in 1..=n {
        inferred += check(u64::from(t));
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    debug_assert_eq!(inferred, 0, "a static frame is never inferred again");
    ms
}

/// The `crops` section.
pub(super) fn crops_section(args: &ModelArgs, seconds: f64) -> anyhow::Result<Value> {
    let engine = Engine::load(&engine_config(args, args.batch.max(1), args.variant))?;
    let mut pre = engine.preprocessor()?;
    let (data, offsets, strides) = frame_1080p(PixelFormat::Nv12);
    let frame = frame_ref(PixelFormat::Nv12, &data, offsets, strides);
    let counts = [1usize, 4, 9];
    let plans: Vec<CropPlan> = counts
        .iter()
        .map(|n| CropPlan::new(&spec_of(*n), &pre, 1920, 1080))
        .collect::<clipfilter::Result<_>>()?;
    let mut out = Vec::new();
    let mut ms = [0.0f64; 3];
    let mut rates = [Rate::default(); 3];
    let mut samples = [0usize; 3];
    let mut gate_ms = [0.0f64; 3];
    let slice = seconds / ROUNDS as f64;
    for p in &plans {
        plan_ms(&mut pre, p, &frame, &mut out, 3)?;
        samples_through(&engine, p, &frame, 0.0)?;
    }
    for _ in 0..ROUNDS {
        for (i, p) in plans.iter().enumerate() {
            ms[i] += plan_ms(&mut pre, p, &frame, &mut out, 10)? / ROUNDS as f64;
            gate_ms[i] += static_gate_ms(p, &frame, 50) / ROUNDS as f64;
            let (n, r) = samples_through(&engine, p, &frame, slice)?;
            samples[i] += n;
            rates[i].add(r);
        }
    }
    println!(
        "\ncrops: one sampled 1920x1080 NV12 frame as 1 (whole frame, pad), 4 (2x2 tiles) or 9 (3x3 tiles) crops, batch {} (ratios to 1 crop):",
        args.batch.max(1)
    );
    println!(
        "  {:<6} {:>14} {:>8} {:>14} {:>10} {:>14} {:>16}",
        "crops",
        "preprocess ms",
        "ratio",
        "inferences/s",
        "samples/s",
        "samples ratio",
        "static gate ms"
    );
    let mut rows = Vec::new();
    for i in 0..3 {
        let per_sample = rates[i].seconds / samples[i].max(1) as f64;
        let samples_per_s = 1.0 / per_sample;
        let base = rates[0].seconds / samples[0].max(1) as f64;
        println!(
            "  {:<6} {:>14.2} {:>8.2} {:>14.1} {:>10.2} {:>14.3} {:>16.3}",
            counts[i],
            ms[i],
            ms[i] / ms[0],
            rates[i].per_s(),
            samples_per_s,
            base / per_sample,
            gate_ms[i]
        );
        rows.push(json!({
            "crops": counts[i], "preprocess_ms_per_sample": ms[i], "preprocess_vs_one": ms[i] / ms[0],
            "inferences_per_s": rates[i].per_s(), "samples_per_s": samples_per_s,
            "samples_vs_one": base / per_sample, "rounds": ROUNDS,
            "static_gate_ms_per_sample": gate_ms[i],
        }));
    }
    Ok(Value::Array(rows))
}
