#!/usr/bin/env python3
"""Write a Triton model repository for a clipfilter model folder (python backend + onnxruntime).

    .local/triton/venv/bin/python tools/triton_repo.py MODEL_DIR REPO [--name NAME]
        [--variants image,image_fp16,image_uint8,text] [--max-batch-size 32] [--threads 1] [--force]

MODEL_DIR has the layout clipfilter reads (config.json, preprocessor_config.json, tokenizer.json,
onnx/vision_model.onnx, onnx/text_model.onnx). REPO gets one Triton model per variant:

    <name>_image        pixel_values FP32  [N,3,H,W] -> image_embeds FP32 [N,D]
    <name>_image_fp16   pixel_values FP16  [N,3,H,W] -> image_embeds FP32 [N,D]
    <name>_image_uint8  pixel_values UINT8 [N,3,H,W] RGB, normalised with the folder's
                        preprocessor_config (x/255 - mean)/std inside -> image_embeds FP32 [N,D]
    <name>_text         input_ids INT64 [N,L] (+ attention_mask when the graph has it) -> text_embeds

each as `<model>/config.pbtxt` (backend "python", max_batch_size, dynamic_batching, one CPU instance)
and `<model>/1/model.py` (a copy of tools/triton_model.py) next to the ONNX file it runs (hard link
when possible, else a copy). Needs numpy and onnxruntime (the venv of tools/setup-triton.sh): the
graphs' inputs, shapes and embedding size are read from the ONNX files themselves.
Also writes REPO/<name>.clipfilter.json, a summary: {"name", "model_dir", "models": {variant: model
name}, "image_size", "embed_dim", "text_inputs", "seq_len", "mean", "std", "rescale_factor"}
(Triton ignores files at the top of a repository).
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

VARIANTS = ("image", "image_fp16", "image_uint8", "text")
HERE = Path(__file__).resolve().parent
MODEL_PY = HERE / "triton_model.py"


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def onnx_io(path):
    """(inputs, outputs) of an ONNX file as [(name, type, shape)], shape entries int or None."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        fail(f"{path}: onnxruntime cannot load it: {e}")

    def dims(shape):
        return [d if isinstance(d, int) else None for d in shape]

    return (
        [(i.name, i.type, dims(i.shape)) for i in session.get_inputs()],
        [(o.name, o.type, dims(o.shape)) for o in session.get_outputs()],
    )


def find(items, name, path):
    for item in items:
        if item[0] == name:
            return item
    fail(f"{path}: no tensor named '{name}' (has {[i[0] for i in items]})")


def pbtxt_dims(shape):
    return "[ " + ", ".join(str(-1 if d is None else d) for d in shape) + " ]"


def config_pbtxt(name, max_batch, inputs, output, params):
    lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {max_batch}", "input ["]
    lines.append(
        ",\n".join(
            f'  {{ name: "{n}" data_type: {t} dims: {pbtxt_dims(s)} }}' for n, t, s in inputs
        )
    )
    lines.append("]")
    n, t, s = output
    lines.append(f'output [\n  {{ name: "{n}" data_type: {t} dims: {pbtxt_dims(s)} }}\n]')
    lines.append("dynamic_batching { }")
    lines.append("instance_group [ { count: 1 kind: KIND_CPU } ]")
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def link_or_copy(src, dst):
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("repo", type=Path)
    ap.add_argument("--name", help="model name prefix (default: the folder's name)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per model")
    ap.add_argument("--force", action="store_true", help="replace existing model folders in REPO")
    args = ap.parse_args()

    model_dir = args.model_dir.resolve()
    name = args.name or model_dir.name
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            fail(f"unknown variant '{v}' (known: {', '.join(VARIANTS)})")
    if args.max_batch_size < 1:
        fail("--max-batch-size must be at least 1")

    vision = model_dir / "onnx" / "vision_model.onnx"
    text = model_dir / "onnx" / "text_model.onnx"
    pre_path = model_dir / "preprocessor_config.json"
    for p in (vision, text, pre_path):
        if not p.is_file():
            fail(f"{p} not found (is {model_dir} a clipfilter model folder?)")
    pre = json.loads(pre_path.read_text())
    mean = pre.get("image_mean")
    std = pre.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3):
        fail(f"{pre_path}: image_mean and image_std must be lists of 3 numbers")
    if not pre.get("do_normalize", True):
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    rescale = pre.get("rescale_factor", 1.0 / 255.0) if pre.get("do_rescale", True) else 1.0

    v_in, v_out = onnx_io(vision)
    _, v_type, v_shape = find(v_in, "pixel_values", vision)
    _, _, e_shape = find(v_out, "image_embeds", vision)
    if v_type != "tensor(float)" or len(v_shape) != 4 or v_shape[1] != 3:
        fail(f"{vision}: pixel_values is {v_type} {v_shape}, expected float [N,3,H,W]")
    if v_shape[2] is None or v_shape[3] is None:
        crop = pre.get("crop_size")
        if isinstance(crop, dict):
            v_shape = [None, 3, crop["height"], crop["width"]]
        elif isinstance(crop, int):
            v_shape = [None, 3, crop, crop]
        else:
            fail(f"{vision}: H and W are dynamic and {pre_path} has no crop_size")
    embed_dim = e_shape[-1]
    if embed_dim is None:
        fail(f"{vision}: image_embeds has a dynamic last dimension")

    t_in, t_out = onnx_io(text)
    find(t_in, "input_ids", text)
    _, _, te_shape = find(t_out, "text_embeds", text)
    text_inputs = [n for n, _, _ in t_in]
    for n in text_inputs:
        if n not in ("input_ids", "attention_mask"):
            fail(f"{text}: unexpected input '{n}' (expected input_ids and optionally attention_mask)")
    seq_len = find(t_in, "input_ids", text)[2][1]

    image_params = {"onnx_file": "vision_model.onnx"}
    chw = v_shape[1:]
    models = {}
    specs = {
        "image": ([("pixel_values", "TYPE_FP32", chw)], image_params),
        "image_fp16": ([("pixel_values", "TYPE_FP16", chw)], image_params),
        "image_uint8": (
            [("pixel_values", "TYPE_UINT8", chw)],
            dict(
                image_params,
                image_mean=" ".join(repr(float(m)) for m in mean),
                image_std=" ".join(repr(float(s)) for s in std),
                rescale_factor=repr(float(rescale)),
            ),
        ),
        "text": (
            [(n, "TYPE_INT64", [seq_len]) for n in text_inputs],
            {"onnx_file": "text_model.onnx"},
        ),
    }
    args.repo.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        model = f"{name}_{variant}"
        inputs, params = specs[variant]
        params = dict(params, clipfilter_kind=variant, intra_op_threads=str(args.threads))
        if variant == "text":
            output = ("text_embeds", "TYPE_FP32", [te_shape[-1] or embed_dim])
            src = text
        else:
            output = ("image_embeds", "TYPE_FP32", [embed_dim])
            src = vision
        folder = args.repo / model
        if folder.exists():
            if not args.force:
                fail(f"{folder} exists (use --force to replace it)")
            shutil.rmtree(folder)
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(config_pbtxt(model, args.max_batch_size, inputs, output, params))
        shutil.copyfile(MODEL_PY, folder / "1" / "model.py")
        link_or_copy(src, folder / "1" / params["onnx_file"])
        models[variant] = model
        print(f"    {folder}")

    summary = {
        "name": name,
        "model_dir": str(model_dir),
        "models": models,
        "image_size": [v_shape[2], v_shape[3]],
        "embed_dim": embed_dim,
        "text_inputs": text_inputs,
        "seq_len": seq_len,
        "mean": mean,
        "std": std,
        "rescale_factor": rescale,
    }
    (args.repo / f"{name}.clipfilter.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
