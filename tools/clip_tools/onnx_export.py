"""Writing clipfilter's model layout from PyTorch: ONNX export of the image and text towers
(transformers and OpenCLIP), the int8 and fp16 variants, preprocessor_config.json and
clipfilter.toml. Used by make-fixtures (tiny models) and by export / export-random-b32."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import CLIP_MEAN, CLIP_STD, CONTEXT_LENGTH, EOT, OPSET, SOT, f32, log


def wrap_module(model, kind: str):
    """nn.Module with explicit ONNX input names around a CLIP model (the model is a registered submodule,
    so its weights become ONNX initializers). kind: hf-vision, hf-text, hf-text-nomask, oc-vision, oc-text."""
    import torch

    class Vision(torch.nn.Module):
        def __init__(self, m, fn):
            super().__init__()
            self.m, self.fn = m, fn

        def forward(self, pixel_values):
            return self.fn(self.m, pixel_values)

    class TextMask(torch.nn.Module):
        def __init__(self, m, fn):
            super().__init__()
            self.m, self.fn = m, fn

        def forward(self, input_ids, attention_mask):
            return self.fn(self.m, input_ids, attention_mask)

    class Text(torch.nn.Module):
        def __init__(self, m, fn):
            super().__init__()
            self.m, self.fn = m, fn

        def forward(self, input_ids):
            return self.fn(self.m, input_ids, None)

    fns = {
        "hf-vision": (Vision, lambda m, pv: m.get_image_features(pixel_values=pv)),
        "hf-text": (TextMask, lambda m, i, a: m.get_text_features(input_ids=i, attention_mask=a)),
        "hf-text-nomask": (Text, lambda m, i, a: m.get_text_features(input_ids=i)),
        "oc-vision": (Vision, lambda m, pv: m.encode_image(pv)),
        "oc-text": (Text, lambda m, i, a: m.encode_text(i)),
    }
    cls, fn = fns[kind]
    for p in model.parameters():
        p.requires_grad_(False)
    return cls(model, fn).eval()


def torch_export(module, args, path: Path, input_names, output_names, dynamic_axes):
    """TorchScript-based exporter (single file, deterministic, fast). Falls back to the dynamo
    exporter (weights re-inlined into one file) if a future torch drops it."""
    import warnings
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    # nn.MultiheadAttention (OpenCLIP) takes a fused "fast path" in eval mode that has no ONNX export
    if hasattr(torch.backends, "mha"):
        torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True,
                              dynamo=False)
            return
        except TypeError:
            pass
        import onnx
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=max(OPSET, 18), dynamo=True)
        m = onnx.load(str(path), load_external_data=True)
        for p in path.parent.glob(path.name + ".data"):
            p.unlink()
        onnx.save(m, str(path), save_as_external_data=False)


def quantize_int8(src: Path, dst: Path):
    """Dynamic int8 quantisation like transformers.js' `*_quantized.onnx`: MatMul/Gemm weights -> int8
    (QInt8, per tensor, MatMulConstBOnly); Conv stays float (ConvInteger would need uint8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    import logging
    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     per_channel=False, reduce_range=False, extra_options={"MatMulConstBOnly": True})


def ort_loads_in_subprocess(path: Path) -> tuple[bool, str]:
    """Can onnxruntime (CPU, default ORT_ENABLE_ALL) create a session? Run in a child process because
    some graphs crash onnxruntime with a segfault rather than an error."""
    import subprocess
    code = ("import sys, onnxruntime as ort; so = ort.SessionOptions(); so.log_severity_level = 3; "
            "ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]


def convert_fp16(src: Path, dst: Path):
    """fp16 weights and activations, float32 graph inputs/outputs (keep_io_types), with onnxruntime's
    float16 converter and its default op block list. onnxruntime 1.31.1 (CPU, ORT_ENABLE_ALL) segfaults
    while creating a session for some fp16 graphs (seen with OpenCLIP exports: NchwcTransformer together
    with ConstantSharing, around fp16 Transpose); then Transpose is kept in float32 (Cast around it)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    for extra in ([], ["Transpose"]):
        m16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                       op_block_list=list(DEFAULT_OP_BLOCK_LIST) + extra)
        onnx.save(m16, str(dst))
        ok, err = ort_loads_in_subprocess(dst)
        if ok:
            if extra:
                log(f"  {dst.name}: kept {extra} in float32 (onnxruntime crashed on the plain fp16 graph)")
            return
        log(f"  {dst.name}: onnxruntime cannot load the fp16 graph with {extra or 'the default'} block list: {err}")
    raise RuntimeError(f"no fp16 conversion of {src} that onnxruntime can load")


def clip_preprocessor_json(shortest_edge: int, crop: int, legacy: bool) -> dict:
    if legacy:
        # the old format of openai/clip-vit-base-patch32's own preprocessor_config.json (ints, no rescale keys)
        return {"crop_size": crop, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD, "resample": 3, "size": shortest_edge}
    # the current format (as in Xenova/clip-vit-base-patch32)
    return {"crop_size": {"height": crop, "width": crop}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": shortest_edge}}


def write_toml(folder: Path, logit_scale: float, comment: str):
    (folder / "clipfilter.toml").write_text(
        f"# clipfilter model settings. {comment}\nlogit_scale = {f32(logit_scale)!r}\n", encoding="utf-8")


def export_hf_clip(model, folder: Path, text_fixed_len: bool, with_mask: bool, image_size: int):
    """vision_model.onnx + text_model.onnx for a transformers CLIPModel."""
    import torch
    vis = wrap_module(model, "hf-vision")
    torch_export(vis, (torch.randn(2, 3, image_size, image_size),), folder / "onnx" / "vision_model.onnx",
                 ["pixel_values"], ["image_embeds"],
                 {"pixel_values": {0: "batch_size"}, "image_embeds": {0: "batch_size"}})
    seq = CONTEXT_LENGTH if text_fixed_len else 9
    ids = torch.full((2, seq), EOT, dtype=torch.long)
    ids[:, 0] = SOT
    ids[0, 1:4] = torch.tensor([320, 1125, 539])
    ids[1, 1:2] = torch.tensor([2368])
    mask = (torch.arange(seq)[None, :] < torch.tensor([[5], [3]])).long()
    txt = wrap_module(model, "hf-text" if with_mask else "hf-text-nomask")
    axes = {"input_ids": {0: "batch_size"}, "text_embeds": {0: "batch_size"}}
    if not text_fixed_len:
        axes["input_ids"][1] = "sequence_length"
    names = ["input_ids"]
    args = (ids,)
    if with_mask:
        names.append("attention_mask")
        axes["attention_mask"] = dict(axes["input_ids"])
        args = (ids, mask)
    torch_export(txt, args, folder / "onnx" / "text_model.onnx", names, ["text_embeds"], axes)
