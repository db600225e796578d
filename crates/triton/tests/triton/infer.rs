//! Inference through every wire format against Python onnxruntime, metadata, request errors.

use std::time::{Duration, Instant};

use clipfilter_triton::fold::{Normalisation, normalisation_from_preprocessor_config};
use clipfilter_triton::{
    Code, Error, Health, ImageModelSpec, ModelSpec, Pool, PoolConfig, Tensor, TextModelSpec,
    WireFormat,
};

use crate::util::{self, fixture, max_abs_diff, normalise, onnxruntime, rgb_batch};

const SIZE: usize = 224;
const DIM: usize = 32;

fn tiny_normalisation() -> Normalisation {
    normalisation_from_preprocessor_config(&fixture("tiny-clip/preprocessor_config.json"))
        .expect("tiny-clip preprocessor_config.json")
}

fn pool(server: &util::TritonServer) -> Pool {
    let mut config = PoolConfig::new([server.grpc_url()]);
    config.timeout = Duration::from_secs(30);
    Pool::connect(config).expect("connect")
}

fn embeds(outputs: &[Tensor], batch: usize) -> Vec<f32> {
    assert_eq!(outputs.len(), 1, "one output");
    assert_eq!(outputs[0].name(), "image_embeds");
    assert_eq!(outputs[0].shape(), [batch, DIM]);
    outputs[0].to_f32().expect("float output")
}

#[test]
fn image_wire_formats_match_onnxruntime() {
    let shared = util::shared_server();
    let pool = pool(&shared.server);
    let norm = tiny_normalisation();
    let vision = fixture("tiny-clip/onnx/vision_model.onnx");
    for batch in [1, 3] {
        let shape = vec![batch, 3, SIZE, SIZE];
        let rgb = rgb_batch(batch, SIZE, SIZE, batch as u64);
        let pixels = normalise(&rgb, SIZE * SIZE, &norm);
        let fp32 = Tensor::from_f32("pixel_values", shape.clone(), &pixels).unwrap();
        let fp16 = Tensor::f16_from_f32("pixel_values", shape.clone(), &pixels).unwrap();
        let uint8 = Tensor::from_u8("pixel_values", shape.clone(), rgb.clone()).unwrap();
        // What the fp16 model computes: the float16 values widened to float32.
        let widened = Tensor::from_f32("pixel_values", shape, &fp16.to_f32().unwrap()).unwrap();
        let reference = &onnxruntime(&vision, &[&fp32])[0];
        let reference_fp16 = &onnxruntime(&vision, &[&widened])[0];
        assert_eq!(reference.1, [batch, DIM]);

        let got = embeds(&pool.infer("tiny-clip_image", vec![fp32]).unwrap(), batch);
        let d = max_abs_diff(&got, &reference.2);
        assert!(d <= 1e-5, "fp32, batch {batch}: max abs diff {d}");
        eprintln!("fp32 wire, batch {batch}: max abs diff to onnxruntime {d:e}");

        // uint8: the server's model normalises the bytes exactly as clipfilter does, so the
        // tower sees the same float32 values.
        let got = embeds(
            &pool.infer("tiny-clip_image_uint8", vec![uint8]).unwrap(),
            batch,
        );
        let d = max_abs_diff(&got, &reference.2);
        assert!(d <= 1e-5, "uint8, batch {batch}: max abs diff {d}");
        eprintln!("uint8 wire, batch {batch}: max abs diff to onnxruntime (float32 input) {d:e}");

        let got = embeds(
            &pool.infer("tiny-clip_image_fp16", vec![fp16]).unwrap(),
            batch,
        );
        let d = max_abs_diff(&got, &reference_fp16.2);
        assert!(
            d <= 1e-5,
            "fp16, batch {batch}: max abs diff {d} against its own input"
        );
        eprintln!("fp16 wire, batch {batch}: max abs diff to onnxruntime (same fp16 values) {d:e}");
        // and the rounding to float16 stays small against the float32 result
        let d = max_abs_diff(&got, &reference.2);
        let scale = reference.2.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            d <= 1e-2 * scale,
            "fp16 vs fp32, batch {batch}: {d} (scale {scale})"
        );
        eprintln!(
            "fp16 wire, batch {batch}: max abs diff to the float32 result {d:e} (largest |value| {scale})"
        );
    }
}

#[test]
fn text_matches_onnxruntime() {
    let shared = util::shared_server();
    let pool = pool(&shared.server);
    let text = fixture("tiny-clip/onnx/text_model.onnx");
    // two prompts, padded with 49407 to the fixed 77
    let mut ids = vec![49407i64; 2 * 77];
    for (row, tokens) in [[49406i64, 320, 1125, 269], [49406, 1929, 539, 320]]
        .iter()
        .enumerate()
    {
        ids[row * 77..row * 77 + 4].copy_from_slice(tokens);
    }
    let mask: Vec<i64> = (0..2 * 77).map(|i| i64::from(i % 77 <= 4)).collect();
    let ids = Tensor::from_i64("input_ids", vec![2, 77], &ids).unwrap();
    let mask = Tensor::from_i64("attention_mask", vec![2, 77], &mask).unwrap();
    let reference = &onnxruntime(&text, &[&ids, &mask])[0];
    let out = pool.infer("tiny-clip_text", vec![ids, mask]).unwrap();
    assert_eq!(out[0].name(), "text_embeds");
    assert_eq!(out[0].shape(), [2, DIM]);
    let d = max_abs_diff(&out[0].to_f32().unwrap(), &reference.2);
    assert!(d <= 1e-5, "text: max abs diff {d}");
}

#[test]
fn metadata_is_read_and_checked() {
    let shared = util::shared_server();
    let pool = pool(&shared.server);
    let meta = pool.model_metadata("tiny-clip_image_uint8").unwrap();
    assert_eq!(meta.name, "tiny-clip_image_uint8");
    let input = meta.input("pixel_values").expect("pixel_values");
    assert_eq!(
        (input.datatype.as_str(), input.shape.as_slice()),
        ("UINT8", &[-1, 3, 224, 224][..])
    );
    let output = meta.output("image_embeds").expect("image_embeds");
    assert_eq!(output.shape, [-1, 32]);

    let right = ModelSpec::Image(ImageModelSpec::clip(WireFormat::Uint8, SIZE, SIZE, DIM));
    pool.check_model("tiny-clip_image_uint8", &right).unwrap();
    let text = ModelSpec::Text(TextModelSpec::clip(true, Some(77), DIM));
    pool.check_model("tiny-clip_text", &text).unwrap();

    // a local model with another embedding size, image size or wire type is a clear error
    let wrong = ModelSpec::Image(ImageModelSpec::clip(WireFormat::Uint8, 336, 336, 512));
    let e = pool
        .check_model("tiny-clip_image_uint8", &wrong)
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::MetadataMismatch { .. }), "{e}");
    assert!(
        text.contains("model 'tiny-clip_image_uint8' does not match the local model"),
        "{text}"
    );
    assert!(text.contains("has height 224"), "{text}");
    assert!(
        text.contains("embedding size 32, the local model has 512"),
        "{text}"
    );
    let fp32 = ModelSpec::Image(ImageModelSpec::clip(WireFormat::Fp32, SIZE, SIZE, DIM));
    let e = pool
        .check_model("tiny-clip_image_uint8", &fp32)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("input 'pixel_values' is UINT8, expected FP32"),
        "{e}"
    );

    // ... and at connect time, when the pool is told what to expect
    let config =
        PoolConfig::new([shared.server.grpc_url()]).model("tiny-clip_image_uint8", Some(wrong));
    let e = Pool::connect(config).unwrap_err();
    assert!(matches!(e, Error::MetadataMismatch { .. }), "{e}");
    let config =
        PoolConfig::new([shared.server.grpc_url()]).model("tiny-clip_image_uint8", Some(right));
    let checked = Pool::connect(config).unwrap();
    assert_eq!(checked.status()[0].health, Health::Ready);
}

#[test]
fn request_errors_leave_the_endpoint_ready() {
    let shared = util::shared_server();
    let pool = pool(&shared.server);
    // wrong input shape: the server refuses the request, the endpoint is fine
    let bad = Tensor::from_f32("pixel_values", vec![1, 3, 8, 8], &[0.0; 192]).unwrap();
    let start = Instant::now();
    let e = pool.infer("tiny-clip_image", vec![bad]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Status {
                code: Code::InvalidArgument,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_endpoint_failure(), "{e}");
    assert!(e.to_string().contains("tiny-clip_image"), "{e}");
    // an unknown model
    let one = Tensor::from_f32(
        "pixel_values",
        vec![1, 3, SIZE, SIZE],
        &vec![0.0; 3 * SIZE * SIZE],
    )
    .unwrap();
    let e = pool.infer("no-such-model", vec![one.clone()]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Status {
                code: Code::NotFound,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("unknown model: 'no-such-model'"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    let status = &pool.status()[0];
    assert_eq!(status.health, Health::Ready, "{status:?}");
    assert!(pool.infer("tiny-clip_image", vec![one]).is_ok());
}

#[test]
fn concurrent_callers_get_their_own_answers() {
    let shared = util::shared_server();
    let pool = pool(&shared.server);
    // batches of 1 and 2 from four threads at once; the server's dynamic batcher may run
    // several of them as one onnxruntime call, and must split the answers back correctly
    let inputs: Vec<Tensor> = (0..8)
        .map(|i| {
            let batch = 1 + i % 2;
            let rgb = rgb_batch(batch, SIZE, SIZE, 100 + i as u64);
            Tensor::from_u8("pixel_values", vec![batch, 3, SIZE, SIZE], rgb).unwrap()
        })
        .collect();
    let alone: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| {
            let out = pool
                .infer("tiny-clip_image_uint8", vec![t.clone()])
                .unwrap();
            out[0].to_f32().unwrap()
        })
        .collect();
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (pool, inputs, alone) = (&pool, &inputs, &alone);
            scope.spawn(move || {
                for round in 0..5 {
                    let i = (thread * 2 + round) % inputs.len();
                    let out = pool
                        .infer("tiny-clip_image_uint8", vec![inputs[i].clone()])
                        .unwrap();
                    let got = out[0].to_f32().unwrap();
                    let d = max_abs_diff(&got, &alone[i]);
                    assert!(d <= 1e-5, "thread {thread}, input {i}: {d}");
                }
            });
        }
    });
    assert_eq!(pool.status()[0].errors, 0);
}
