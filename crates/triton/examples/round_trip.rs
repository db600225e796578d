//! Loopback round-trip per wire format and batch size against a running server.
//!
//!     .local/triton/venv/bin/python tools/triton_repo.py tests/fixtures/tiny-clip /tmp/repo
//!     .local/triton/bin/tritonserver --model-repository=/tmp/repo --grpc-port=8001 &
//!     cargo run --release -p clipfilter-triton --example round_trip -- \
//!         --endpoint grpc://127.0.0.1:8001 --prefix tiny-clip --size 224 --runs 50
//!
//! Uses the models `<prefix>_image`, `<prefix>_image_fp16` and `<prefix>_image_uint8` that
//! tools/triton_repo.py writes; prints one line per wire format and batch size.

use std::process::ExitCode;
use std::time::Duration;

use clipfilter_triton::bench::{BenchOptions, round_trip};
use clipfilter_triton::{Pool, PoolConfig, WireFormat};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoint = "grpc://127.0.0.1:8001".to_string();
    let mut prefix = "tiny-clip".to_string();
    let mut size = 224usize;
    let mut runs = 30usize;
    let mut batches = vec![1usize, 8];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--endpoint" => endpoint = value()?,
            "--prefix" => prefix = value()?,
            "--size" => size = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            "--batches" => {
                batches = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => {
                println!(
                    "round_trip [--endpoint URL] [--prefix NAME] [--size N] [--runs N] [--batches 1,8]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument '{other}'").into()),
        }
    }
    let mut config = PoolConfig::new([endpoint]);
    config.timeout = Duration::from_secs(60);
    let pool = Pool::connect(config)?;
    pool.wait_ready(Duration::from_secs(10))?;
    let mut options = BenchOptions::new(size, size);
    options.runs = runs;
    println!("wire   batch  bytes/sample  median ms  p95 ms  ms/sample  samples/s");
    for batch in batches {
        for wire in WireFormat::ALL {
            let model = match wire {
                WireFormat::Fp32 => format!("{prefix}_image"),
                WireFormat::Fp16 => format!("{prefix}_image_fp16"),
                WireFormat::Uint8 => format!("{prefix}_image_uint8"),
            };
            let r = round_trip(&pool, &model, wire, batch, &options)?;
            println!(
                "{:<6} {:>5}  {:>12}  {:>9.2}  {:>6.2}  {:>9.3}  {:>9.1}",
                wire.as_str(),
                batch,
                r.bytes_per_sample,
                r.median.as_secs_f64() * 1e3,
                r.p95.as_secs_f64() * 1e3,
                r.per_sample().as_secs_f64() * 1e3,
                r.samples_per_s()
            );
        }
    }
    Ok(())
}
