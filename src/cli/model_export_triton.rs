//! `clipfilterd model export-triton -m DIR OUT`: a Triton Inference Server model repository for
//! a model folder, ready for Triton's container (onnxruntime backend):
//!
//! ```text
//! OUT/clip_image/        config.pbtxt  1/model.onnx   pixel_values FP32  [N,3,H,W]
//! OUT/clip_image_fp16/   config.pbtxt  1/model.onnx   pixel_values FP16  (one Cast folded in)
//! OUT/clip_image_uint8/  config.pbtxt  1/model.onnx   pixel_values UINT8 RGB (rescale, mean and
//!                                                      std folded in: clipfilter_triton::fold)
//! OUT/clip_text/         config.pbtxt  1/model.onnx   input_ids INT64 [N,L] (+ attention_mask)
//! OUT/README.md          how to serve it, and the clipfilterd settings that use it
//! ```
//!
//! Each `config.pbtxt`: `backend: "onnxruntime"`, `max_batch_size`, dynamic batching with
//! preferred sizes, instance groups, and (GPU instances) the TensorRT accelerator in fp16 with a
//! persistent engine cache for the image models. The names are those the `[model]` settings of
//! `backend = "triton"` default to.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::{Outcome, parse_variant};
use clipfilter::model::{ModelDir, Variant};
use clipfilter::remote::{DEFAULT_TEXT_MODEL, WireFormat, default_image_model};
use clipfilter_triton::fold::{FoldInput, FoldOptions, fold_file};
use clipfilter_triton::{GraphIo, TensorInfo, read_graph_io};

/// Where Triton runs the model instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InstanceKind {
    /// On GPUs (KIND_GPU), with the TensorRT accelerator for the image models.
    Gpu,
    /// On CPUs (KIND_CPU), no accelerator.
    Cpu,
}

/// Arguments of `model export-triton`.
#[derive(Debug, Args)]
pub struct ExportTritonArgs {
    /// Model folder (Hugging Face ONNX layout).
    #[arg(long, short = 'm', env = "CLIPFILTER_MODEL", value_name = "DIR")]
    pub model: PathBuf,

    /// Which weights to export.
    #[arg(long, default_value = "fp32", value_parser = parse_variant)]
    pub variant: Variant,

    /// The repository folder to write (created; must be empty unless --force).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,

    /// Largest batch Triton forms (max_batch_size).
    #[arg(long, default_value_t = 32)]
    pub max_batch: u32,

    /// Batch sizes the dynamic batcher prefers (default: 4, 8, 16 and max-batch, those not above it).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub preferred_batch: Vec<u32>,

    /// Longest a request waits in the dynamic batcher for others to join it, in microseconds.
    #[arg(long, default_value_t = 2000)]
    pub max_queue_delay_us: u64,

    /// Where the instances run.
    #[arg(long, value_enum, default_value_t = InstanceKind::Gpu)]
    pub kind: InstanceKind,

    /// Model instances per GPU (or on the CPU).
    #[arg(long, default_value_t = 1)]
    pub instances: u32,

    /// Folder inside the server (container) where TensorRT keeps the engines it builds.
    #[arg(long, default_value = "/models/.tensorrt-cache", value_name = "DIR")]
    pub tensorrt_cache: String,

    /// Replace model folders that exist in OUT.
    #[arg(long)]
    pub force: bool,
}

/// One model to write.
struct Export {
    name: String,
    /// `Some`: fold the image tower's input first.
    fold: Option<FoldInput>,
    source: PathBuf,
    io: GraphIo,
    image: bool,
}

/// Runs `model export-triton`.
pub fn run(args: ExportTritonArgs) -> anyhow::Result<Outcome> {
    if args.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    let preferred = preferred_sizes(&args.preferred_batch, args.max_batch)?;
    let model = ModelDir::open(&args.model, args.variant)?;
    let normalisation = clipfilter_triton::fold::normalisation_from_preprocessor_config(
        &model.dir.join("preprocessor_config.json"),
    )?;
    let image_io = read_graph_io(&model.vision_onnx)?;
    let text_io = read_graph_io(&model.text_onnx)?;
    let exports = [
        (WireFormat::Fp32, None),
        (WireFormat::Fp16, Some(FoldInput::Fp16)),
        (WireFormat::Uint8, Some(FoldInput::Uint8)),
    ]
    .into_iter()
    .map(|(wire, fold)| Export {
        name: default_image_model(wire),
        fold,
        source: model.vision_onnx.clone(),
        io: image_io.clone(),
        image: true,
    })
    .chain(std::iter::once(Export {
        name: DEFAULT_TEXT_MODEL.to_string(),
        fold: None,
        source: model.text_onnx.clone(),
        io: text_io,
        image: false,
    }))
    .collect::<Vec<_>>();

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for export in &exports {
        let dir = args.out.join(&export.name);
        if dir.exists() {
            if !args.force {
                bail!("{} exists (give --force to replace it)", dir.display());
            }
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        let version = dir.join("1");
        std::fs::create_dir_all(&version)
            .with_context(|| format!("cannot create {}", version.display()))?;
        let onnx = version.join("model.onnx");
        let io = match export.fold {
            Some(input) => {
                fold_file(
                    &export.source,
                    &onnx,
                    &FoldOptions {
                        input_name: image_input(&export.io)?.name.clone(),
                        ..FoldOptions::new(input, normalisation)
                    },
                )?;
                read_graph_io(&onnx)?
            }
            None => {
                link_or_copy(&export.source, &onnx)?;
                export.io.clone()
            }
        };
        let config = config_pbtxt(&export.name, &io, export.image, &args, &preferred)?;
        std::fs::write(dir.join("config.pbtxt"), config)
            .with_context(|| format!("cannot write {}", dir.join("config.pbtxt").display()))?;
        println!("{}", dir.display());
    }
    let readme = args.out.join("README.md");
    std::fs::write(&readme, readme_text(&model, &args, &image_io))
        .with_context(|| format!("cannot write {}", readme.display()))?;
    println!("{}", readme.display());
    Ok(Outcome::Ok)
}

/// The preferred batch sizes: those given, or 4, 8, 16 and the largest, none above it.
fn preferred_sizes(given: &[u32], max: u32) -> anyhow::Result<Vec<u32>> {
    let mut sizes: Vec<u32> = if given.is_empty() {
        [4, 8, 16, max].into_iter().filter(|n| *n <= max).collect()
    } else {
        if let Some(n) = given.iter().find(|n| **n == 0 || **n > max) {
            bail!("--preferred-batch {n} is not between 1 and --max-batch {max}");
        }
        given.to_vec()
    };
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

fn image_input(io: &GraphIo) -> anyhow::Result<&TensorInfo> {
    io.input("pixel_values")
        .or_else(|| (io.inputs.len() == 1).then(|| &io.inputs[0]))
        .context("the image tower has no input `pixel_values`")
}

fn link_or_copy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

/// Triton's `TYPE_*` name of an ONNX element type.
fn triton_type(t: &TensorInfo) -> anyhow::Result<&'static str> {
    use clipfilter_triton::DataType as D;
    Ok(match t.datatype() {
        Some(D::Fp32) => "TYPE_FP32",
        Some(D::Fp16) => "TYPE_FP16",
        Some(D::Fp64) => "TYPE_FP64",
        Some(D::Uint8) => "TYPE_UINT8",
        Some(D::Int8) => "TYPE_INT8",
        Some(D::Int32) => "TYPE_INT32",
        Some(D::Int64) => "TYPE_INT64",
        Some(D::Bool) => "TYPE_BOOL",
        _ => bail!(
            "tensor `{}` has ONNX element type {}, which this export does not handle",
            t.name,
            t.elem_type
        ),
    })
}

/// `[ 3, 224, 224 ]`: the dimensions after the batch.
fn dims(t: &TensorInfo) -> anyhow::Result<String> {
    if t.shape.is_empty() {
        bail!("tensor `{}` has no batch dimension", t.name);
    }
    let rest: Vec<String> = t.shape[1..].iter().map(|d| d.to_string()).collect();
    Ok(format!("[ {} ]", rest.join(", ")))
}

fn tensors(list: &[TensorInfo]) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for t in list {
        out.push(format!(
            "  {{ name: \"{}\" data_type: {} dims: {} }}",
            t.name,
            triton_type(t)?,
            dims(t)?
        ));
    }
    Ok(out.join(",\n"))
}

fn config_pbtxt(
    name: &str,
    io: &GraphIo,
    image: bool,
    args: &ExportTritonArgs,
    preferred: &[u32],
) -> anyhow::Result<String> {
    let mut s = String::new();
    let kind = match args.kind {
        InstanceKind::Gpu => "KIND_GPU",
        InstanceKind::Cpu => "KIND_CPU",
    };
    let _ = writeln!(s, "# Written by `clipfilterd model export-triton`.");
    let _ = writeln!(s, "name: \"{name}\"");
    let _ = writeln!(s, "backend: \"onnxruntime\"");
    let _ = writeln!(s, "max_batch_size: {}", args.max_batch);
    let _ = writeln!(s, "input [\n{}\n]", tensors(&io.inputs)?);
    let _ = writeln!(s, "output [\n{}\n]", tensors(&io.outputs)?);
    let sizes: Vec<String> = preferred.iter().map(|n| n.to_string()).collect();
    let _ = writeln!(
        s,
        "# Each clipfilterd host sends batches its own worker formed; the dynamic batcher merges\n# the batches of many hosts into these sizes.\ndynamic_batching {{\n  preferred_batch_size: [ {} ]\n  max_queue_delay_microseconds: {}\n}}",
        sizes.join(", "),
        args.max_queue_delay_us
    );
    let _ = writeln!(
        s,
        "instance_group [ {{ count: {} kind: {kind} }} ]",
        args.instances
    );
    if image && args.kind == InstanceKind::Gpu {
        let _ = writeln!(
            s,
            "# TensorRT in fp16; engines are built on first load (minutes) and kept in the cache.\noptimization {{ execution_accelerators {{\n  gpu_execution_accelerator : [ {{\n    name : \"tensorrt\"\n    parameters {{ key: \"precision_mode\" value: \"FP16\" }}\n    parameters {{ key: \"max_workspace_size_bytes\" value: \"1073741824\" }}\n    parameters {{ key: \"trt_engine_cache_enable\" value: \"1\" }}\n    parameters {{ key: \"trt_engine_cache_path\" value: \"{}\" }}\n  }} ]\n}} }}",
            args.tensorrt_cache
        );
    } else if !image {
        let _ = writeln!(
            s,
            "# The text tower runs once per label change with prompts of every length: it stays on\n# CUDA (TensorRT would build an engine for each new shape)."
        );
    }
    Ok(s)
}

fn readme_text(model: &ModelDir, args: &ExportTritonArgs, image_io: &GraphIo) -> String {
    let size = model
        .preprocess
        .output_size()
        .map_or_else(String::new, |(h, w)| format!("{w}x{h}"));
    let dim = image_io
        .outputs
        .first()
        .and_then(|o| o.shape.last().copied())
        .unwrap_or(-1);
    format!(
        r#"# Triton model repository for {model_dir}

Written by `clipfilterd model export-triton` from `{model_dir}` ({variant}, images {size},
embeddings of width {dim}).

| model | input | what the client sends per {size} sample |
|---|---|---|
| `clip_image` | `pixel_values` FP32 [N,3,H,W], normalised | 4 bytes a value |
| `clip_image_fp16` | `pixel_values` FP16, normalised (one Cast folded in) | 2 bytes a value |
| `clip_image_uint8` | `pixel_values` UINT8 RGB; rescale, mean and std folded into the graph | 1 byte a value |
| `clip_text` | `input_ids` INT64 [N,L] (+ `attention_mask`) | token ids |

Every model: onnxruntime backend, `max_batch_size: {max_batch}`, dynamic batching,
`instance_group` {instances} x {kind:?}{trt}.

## Serve it with Triton's container

```sh
docker run --rm --gpus all --shm-size 1g -p 8001:8001 -p 8002:8002 \
  -v $PWD/{out}:/models nvcr.io/nvidia/tritonserver:24.10-py3 \
  tritonserver --model-repository=/models
```

Port 8001 is gRPC (what clipfilterd speaks), 8002 Prometheus metrics. The first start builds
the TensorRT engines (minutes); they are kept in `{cache}` inside the repository
folder, so later starts load them in seconds. For TLS, give tritonserver `--grpc-use-ssl=true
--grpc-server-cert=... --grpc-server-key=...` and use `grpcs://` endpoints.

## Use it from clipfilterd

The camera hosts keep the model folder itself (tokenizer, preprocessing); at start they check
the server's models against it.

```toml
[model]
path = "{model_dir}"
backend = "triton"
endpoints = ["grpc://gpu1:8001", "grpc://gpu2:8001"]
wire_format = "uint8"        # clip_image_uint8; fp32 -> clip_image, fp16 -> clip_image_fp16
```

The element: `clipfilter model={model_dir} backend=triton endpoints=grpc://gpu1:8001 wire-format=uint8`.
"#,
        model_dir = model.dir.display(),
        variant = model.variant,
        max_batch = args.max_batch,
        instances = args.instances,
        kind = args.kind,
        trt = if args.kind == InstanceKind::Gpu {
            ", TensorRT fp16 with an engine cache for the image models"
        } else {
            ""
        },
        out = args.out.display(),
        cache = args.tensorrt_cache,
    )
}
