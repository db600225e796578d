//! The folded image towers against the original ones, both run by Python onnxruntime.

use clipfilter_triton::Tensor;
use clipfilter_triton::fold::{
    FoldInput, FoldOptions, fold_file, normalisation_from_preprocessor_config,
};

use crate::util::{fixture, max_abs_diff, normalise, onnxruntime, rgb_batch};

fn check(model: &str, size: usize, batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    let original = fixture(model).join("onnx/vision_model.onnx");
    let norm =
        normalisation_from_preprocessor_config(&fixture(model).join("preprocessor_config.json"))
            .unwrap();
    let uint8_model = dir.path().join("vision_model_uint8.onnx");
    let fp16_model = dir.path().join("vision_model_fp16in.onnx");
    fold_file(
        &original,
        &uint8_model,
        &FoldOptions::new(FoldInput::Uint8, norm),
    )
    .unwrap();
    fold_file(
        &original,
        &fp16_model,
        &FoldOptions::new(FoldInput::Fp16, norm),
    )
    .unwrap();

    let shape = vec![batch, 3, size, size];
    let rgb = rgb_batch(batch, size, size, 11);
    let pixels = normalise(&rgb, size * size, &norm);
    let fp32 = Tensor::from_f32("pixel_values", shape.clone(), &pixels).unwrap();
    let uint8 = Tensor::from_u8("pixel_values", shape.clone(), rgb).unwrap();
    let fp16 = Tensor::f16_from_f32("pixel_values", shape.clone(), &pixels).unwrap();
    let widened = Tensor::from_f32("pixel_values", shape, &fp16.to_f32().unwrap()).unwrap();

    let reference = &onnxruntime(&original, &[&fp32])[0];
    let folded = &onnxruntime(&uint8_model, &[&uint8])[0];
    assert_eq!(folded.0, "image_embeds");
    assert_eq!(folded.1, reference.1);
    // The folded graph computes the same float32 inputs from the bytes as clipfilter does, so
    // only the rounding of the 8-bit input separates them from an ideal image (none here).
    let d = max_abs_diff(&folded.2, &reference.2);
    assert!(
        d <= 1e-5,
        "{model}: uint8 folded vs float32 original: max abs diff {d}"
    );
    eprintln!("{model}: uint8-input folded vs original: max abs diff {d:e}");

    let reference16 = &onnxruntime(&original, &[&widened])[0];
    let folded16 = &onnxruntime(&fp16_model, &[&fp16])[0];
    let d = max_abs_diff(&folded16.2, &reference16.2);
    assert!(
        d <= 1e-5,
        "{model}: fp16-input folded vs original on the same values: {d}"
    );
    eprintln!("{model}: fp16-input folded vs original: max abs diff {d:e}");
}

#[test]
fn folded_models_match_the_original() {
    check("tiny-clip", 224, 2);
    check("tiny-clip-odd", 96, 3);
    check("oracle-clip", 64, 1);
}
