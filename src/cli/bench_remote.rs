//! The sections of `clipfilterd bench` that need servers:
//! - `triton` (`--triton grpc://HOST:PORT`): image-tower images/s through a Triton server, per
//!   wire format and batch size, against the local ONNX Runtime session on the same model folder,
//!   in alternating rounds, with the bytes each sample puts on the wire;
//! - `nats` (`--nats nats://HOST:PORT`): events/s published to JetStream with acknowledgements,
//!   through the daemon's own NATS output (pipelined batches), against one event at a time.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::ModelArgs;
use super::bench_session::{ROUNDS, Rate, SessionBench};
use crate::daemon::outbox::Pending;
use crate::daemon::output::nats::{MAX_BATCH, NatsConfig, NatsOutput};
use crate::daemon::output::worker::SyncOutput;
use clipfilter::model::ModelDir;
use clipfilter::remote::{RemoteConfig, WireFormat};
use clipfilter::tower::ImageTower;

/// A remote image tower fed with a fixed random batch.
struct RemoteBench {
    tower: Box<dyn ImageTower>,
    input: Vec<f32>,
    out: Vec<f32>,
    batch: usize,
}

impl RemoteBench {
    fn measure(&mut self, seconds: f64) -> anyhow::Result<Rate> {
        let start = Instant::now();
        let mut runs = 0;
        while runs < 3 || start.elapsed().as_secs_f64() < seconds {
            self.tower.encode(&self.input, self.batch, &mut self.out)?;
            runs += 1;
        }
        Ok(Rate {
            images: runs * self.batch,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The `triton` section.
pub(super) fn triton_section(
    endpoint: Option<&str>,
    wires: &[WireFormat],
    batches: &[usize],
    seconds: f64,
    model_args: &ModelArgs,
    model: &ModelDir,
) -> anyhow::Result<Value> {
    let Some(endpoint) = endpoint else {
        bail!(
            "--sections triton needs --triton grpc://HOST:PORT: a server with this folder's models \
             (`clipfilterd model export-triton`, or tools/triton_repo.py --name clip for a CPU-only test server)"
        );
    };
    let (h, w) = model
        .preprocess
        .output_size()
        .context("model has no fixed input size")?;
    println!(
        "\ninference through Triton at {endpoint} vs the local session ({} rounds each):",
        ROUNDS
    );
    println!(
        "{:<6} {:<6} {:>12} {:>13} {:>13} {:>14}",
        "batch", "wire", "bytes/sample", "triton img/s", "local img/s", "triton/local"
    );
    let session_cfg = model_args.engine_config().session;
    let mut rows = Vec::new();
    for &b in batches {
        let mut local = SessionBench::load(model, model_args, b)?;
        let mut remotes = Vec::new();
        for &wire in wires {
            let mut cfg = RemoteConfig::new([endpoint]).with_wire(wire);
            cfg.timeout = Duration::from_secs(120);
            cfg.start_timeout = Duration::from_secs(30);
            let towers = clipfilter::remote::connect(&cfg, model, &session_cfg, &session_cfg)?;
            let mut rng = fastrand::Rng::with_seed(7);
            let len = b * 3 * h as usize * w as usize;
            let input: Vec<f32> = match wire {
                WireFormat::Uint8 => (0..len).map(|_| f32::from(rng.u8(..))).collect(),
                _ => (0..len).map(|_| rng.f32() * 4.0 - 2.0).collect(),
            };
            let mut bench = RemoteBench {
                tower: Box::new(towers.image),
                input,
                out: Vec::new(),
                batch: b,
            };
            bench.measure(0.0)?; // warm-up: connections, the server's first run
            remotes.push((wire, bench, Rate::default()));
        }
        let mut ses = Rate::default();
        let slice = seconds / ROUNDS as f64;
        for _ in 0..ROUNDS {
            ses.add(local.measure(slice)?);
            for (_, bench, rate) in &mut remotes {
                rate.add(bench.measure(slice)?);
            }
        }
        let ses = ses.per_s();
        for (wire, _, rate) in remotes {
            let remote = rate.per_s();
            let bytes = wire.bytes_per_sample(h as usize, w as usize);
            println!(
                "{b:<6} {:<6} {bytes:>12} {remote:>13.1} {ses:>13.1} {:>14.2}",
                wire.as_str(),
                remote / ses
            );
            rows.push(json!({"batch": b, "wire": wire.as_str(), "bytes_per_sample": bytes, "triton_images_per_s": remote, "local_images_per_s": ses, "triton_vs_local": remote / ses, "rounds": ROUNDS}));
        }
    }
    Ok(Value::Array(rows))
}

/// One event as the outbox holds it (the size of a real one).
fn event(i: usize) -> Pending {
    let id = uuid::Uuid::now_v7();
    let payload = json!({
        "id": id, "time": "2026-11-28T12:00:03.1Z", "pipeline": "bench", "label": "white van",
        "state": if i.is_multiple_of(2) { "start" } else { "end" }, "score": 0.27, "probability": 0.81,
        "frame": i, "pts": i as f64 / 10.0, "stream_time": i as f64 / 10.0, "running_time": i as f64 / 10.0,
    });
    Pending {
        seq: i as i64 + 1,
        event_id: id,
        pipeline: "bench".into(),
        label: "white van".into(),
        payload: payload.to_string(),
    }
}

const BENCH_STREAM: &str = "CLIPFILTER_BENCH";
const BENCH_SUBJECTS: &str = "clipfilter-bench.>";

/// Creates (or empties) the bench stream; returns its message count after `f`.
fn with_stream<T>(server: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, u64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let js = runtime.block_on(async {
        let client = async_nats::connect(server)
            .await
            .with_context(|| format!("connecting to {server}"))?;
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(BENCH_STREAM).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: BENCH_STREAM.into(),
            subjects: vec![BENCH_SUBJECTS.into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {BENCH_STREAM}: {e}"))?;
        anyhow::Ok(js)
    })?;
    let out = f()?;
    let count = runtime.block_on(async {
        let mut stream = js
            .get_stream(BENCH_STREAM)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = stream
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .state
            .messages;
        let _ = js.delete_stream(BENCH_STREAM).await;
        anyhow::Ok(n)
    })?;
    Ok((out, count))
}

/// The `nats` section.
pub(super) fn nats_section(server: Option<&str>, n_events: usize) -> anyhow::Result<Value> {
    let Some(server) = server else {
        bail!(
            "--sections nats needs --nats nats://HOST:PORT (a nats-server with JetStream: nats-server -js)"
        );
    };
    let config: NatsConfig = toml::from_str(&format!(
        "name = 'bench'\nservers = [{server:?}]\nsubject = 'clipfilter-bench.{{pipeline}}.{{label}}'"
    ))?;
    let events: Vec<Pending> = (0..n_events).map(event).collect();
    let ((pipelined, single), stored) = with_stream(server, || {
        let mut output = NatsOutput::new(config.clone())?;
        let (mut pipelined, mut single) = (Rate::default(), Rate::default());
        let per_round = events.len() / ROUNDS;
        for round in events.chunks(per_round.max(1)).take(ROUNDS) {
            let (a, b) = round.split_at(round.len() / 2);
            let start = Instant::now();
            for chunk in a.chunks(MAX_BATCH) {
                output
                    .send(chunk)
                    .map_err(|(_, e)| anyhow::anyhow!("{e}"))?;
            }
            pipelined.add(Rate {
                images: a.len(),
                seconds: start.elapsed().as_secs_f64(),
            });
            let start = Instant::now();
            for e in b {
                output
                    .send(std::slice::from_ref(e))
                    .map_err(|(_, e)| anyhow::anyhow!("{e}"))?;
            }
            single.add(Rate {
                images: b.len(),
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        // Every event once more: the stream drops them all as duplicates.
        for chunk in events.chunks(MAX_BATCH) {
            output
                .send(chunk)
                .map_err(|(_, e)| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok((pipelined, single))
    })?;
    let sent = events.len() as u64;
    let (p, s) = (pipelined.per_s(), single.per_s());
    println!(
        "\nNATS JetStream at {server}, acknowledged publishes of {}-byte events: {p:.0} events/s in batches of up to {MAX_BATCH}, {s:.0} events/s one at a time ({:.1}x); {sent} sent, each sent twice, {stored} stored",
        events.first().map_or(0, |e| e.payload.len()),
        p / s
    );
    if stored != sent {
        bail!("the stream holds {stored} events, {sent} were sent: duplicates were not dropped");
    }
    Ok(
        json!({"server": server, "events_per_s_pipelined": p, "events_per_s_one_at_a_time": s, "pipelined_vs_single": p / s, "events": sent, "stored_after_resending_all": stored, "max_batch": MAX_BATCH}),
    )
}
