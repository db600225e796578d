"""The export and export-random-b32 commands: a transformers or OpenCLIP checkpoint, or a random
full-size ViT-B/32, into clipfilter's model layout, with a parity report against PyTorch."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from .common import (CLIP_MEAN, CLIP_STD, CONTEXT_LENGTH, EOT, LOCAL, SOT, VOCAB_SIZE, die, formula_images,
                     l2n, log, ort_session, pad_batch, sig2, write_json)
from .onnx_export import (clip_preprocessor_json, convert_fp16, export_hf_clip, quantize_int8, torch_export,
                          wrap_module, write_toml)
from .tokenizer import Tokenizers, save_tokenizer_files


def finish_export(folder: Path, quantize: bool, fp16: bool):
    onnx_dir = folder / "onnx"
    if quantize:
        log("  quantizing (dynamic int8)")
        for base in ("vision_model", "text_model"):
            quantize_int8(onnx_dir / f"{base}.onnx", onnx_dir / f"{base}_quantized.onnx")
    if fp16:
        log("  converting to fp16 (float32 I/O)")
        for base in ("vision_model", "text_model"):
            convert_fp16(onnx_dir / f"{base}.onnx", onnx_dir / f"{base}_fp16.onnx")


def parity_report(folder: Path, image_fn, text_fn, image_size: int, tok_ids, with_mask: bool, fixed: bool):
    """Compare the exported ONNX (and variants) with the PyTorch model; returns max abs diffs."""
    import numpy as np
    x = formula_images(2, image_size, image_size)
    ref_i = image_fn(x)
    prompts = ["a photo of a cat", "a delivery van at the gate", "smoke"]
    id_lists = [tok_ids(p) for p in prompts]
    ids, mask = pad_batch(id_lists, CONTEXT_LENGTH if fixed else None)
    ref_t = text_fn(ids, mask)
    report = {}
    for f in sorted((folder / "onnx").glob("*.onnx")):
        s = ort_session(f, threads=2)
        if f.name.startswith("vision"):
            out, ref = s.run(None, {"pixel_values": x})[0], ref_i
        else:
            feed = {"input_ids": ids}
            if with_mask:
                feed["attention_mask"] = mask
            out, ref = s.run(None, feed)[0], ref_t
        report[f.name] = {"max_abs": sig2(float(np.abs(out - ref).max())),
                          "min_cosine": round(float((l2n(out) * l2n(ref)).sum(-1).min()), 6)}
        log(f"  {f.name}: max abs {report[f.name]['max_abs']}, min cosine {report[f.name]['min_cosine']}")
    for name in ("vision_model.onnx", "text_model.onnx"):
        r = report[name]
        scale = max(1.0, float(np.abs(ref_i if name.startswith("vision") else ref_t).max()))
        if r["max_abs"] > 1e-3 * scale:
            die(f"{name} differs from PyTorch by {r['max_abs']}")
    return report


def export_from_hf(model, folder: Path, image_size: int, tok_dir: Path | None, preproc, args, logit_scale: float,
                   source: str):
    import torch
    from transformers import CLIPTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    log(f"  exporting ONNX (vision + text; text: input_ids + attention_mask, dynamic batch and sequence)")
    export_hf_clip(model, folder, text_fixed_len=False, with_mask=True, image_size=image_size)
    model.config.to_json_file(str(folder / "config.json"))
    preproc.save_pretrained(str(folder))
    if tok_dir is not None:
        save_tokenizer_files(CLIPTokenizerFast.from_pretrained(str(tok_dir)), folder)
    write_toml(folder, logit_scale, f"From {source}: exp(logit_scale) clamped at 100.")
    finish_export(folder, args.quantize, args.fp16)
    tok = CLIPTokenizerFast.from_pretrained(str(folder))

    def img(x):
        with torch.inference_mode():
            return model.get_image_features(pixel_values=torch.from_numpy(x)).numpy()

    def txt(ids, mask):
        with torch.inference_mode():
            return model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).numpy()

    return parity_report(folder, img, txt, image_size,
                         lambda p: tok(p, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"], True, False)


def cmd_export(args):
    import torch
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not args.force:
        die(f"{out} exists and is not empty (use --force)")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.hf:
        from transformers import CLIPImageProcessor, CLIPModel
        log(f"export: transformers CLIP {args.hf} -> {out}")
        model = CLIPModel.from_pretrained(args.hf, attn_implementation="eager")
        preproc = CLIPImageProcessor.from_pretrained(args.hf)
        src = Path(args.hf)
        tok_dir = src if src.exists() else None
        if tok_dir is None:
            from transformers import CLIPTokenizerFast
            tmp = Path(tempfile.mkdtemp())
            CLIPTokenizerFast.from_pretrained(args.hf).save_pretrained(str(tmp))
            tok_dir = tmp
        ls = min(100.0, float(model.logit_scale.detach().exp()))
        size = model.config.vision_config.image_size
        export_from_hf(model, out, size, tok_dir, preproc, args, ls, f"transformers checkpoint {args.hf}")
    else:
        export_open_clip(args, out)
    log(f"export: done -> {out}")


def export_open_clip(args, out: Path):
    import numpy as np
    import torch
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer
    if not args.pretrained:
        die("--open-clip needs --pretrained FILE (an OpenCLIP/OpenAI checkpoint file)")
    log(f"export: OpenCLIP {args.open_clip} + {args.pretrained} -> {out}")
    model, _, _ = open_clip.create_model_and_transforms(args.open_clip, pretrained=args.pretrained)
    model.eval()
    tokenizer = open_clip.get_tokenizer(args.open_clip)
    if not isinstance(tokenizer, SimpleTokenizer) or tokenizer.clean_fn.__name__ != "_clean_lower":
        die(f"{args.open_clip} does not use OpenAI's CLIP tokenizer; only CLIP-BPE text towers are supported")
    if getattr(model, "logit_bias", None) is not None:
        die(f"{args.open_clip} has a logit_bias (SigLIP-style); clipfilter expects softmax CLIP")
    cfg = open_clip.get_model_config(args.open_clip)
    vcfg, tcfg = cfg["vision_cfg"], cfg["text_cfg"]
    size = vcfg.get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    ctx = tcfg.get("context_length", CONTEXT_LENGTH)
    if ctx != CONTEXT_LENGTH or tcfg.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
        die(f"text context {ctx} / vocab {tcfg.get('vocab_size')} is not CLIP's 77 / 49408")
    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = list(pcfg.get("mean", CLIP_MEAN))
    std = list(pcfg.get("std", CLIP_STD))
    interp = pcfg.get("interpolation", "bicubic")
    if pcfg.get("resize_mode", "shortest") != "shortest":
        log(f"  WARNING: resize_mode {pcfg.get('resize_mode')} written as shortest-edge resize + centre crop")
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx").mkdir(exist_ok=True)
    vis = wrap_module(model, "oc-vision")
    torch_export(vis, (torch.randn(2, 3, size, size),), out / "onnx" / "vision_model.onnx", ["pixel_values"],
                 ["image_embeds"], {"pixel_values": {0: "batch_size"}, "image_embeds": {0: "batch_size"}})
    # OpenCLIP's text tower has no padding mask (causal attention, pooled at the end token = argmax id):
    # exported with a fixed sequence length of 77 and input_ids only; pad with 0 as open_clip does.
    ids = tokenizer(["a photo of a cat", "smoke"])
    txt = wrap_module(model, "oc-text")
    torch_export(txt, (ids,), out / "onnx" / "text_model.onnx", ["input_ids"], ["text_embeds"],
                 {"input_ids": {0: "batch_size"}, "text_embeds": {0: "batch_size"}})
    with tempfile.TemporaryDirectory() as tmp:
        tok = Tokenizers(Path(tmp))
        tok.copy_files_to(out)
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}.get(interp, 3)
    pp = clip_preprocessor_json(size, size, False)
    pp.update(image_mean=mean, image_std=std, resample=resample)
    write_json(out / "preprocessor_config.json", pp, compact_numbers=False)
    embed_dim = cfg["embed_dim"]
    write_json(out / "config.json", {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": embed_dim,
        "clipfilter_source": {"open_clip_arch": args.open_clip, "pretrained": Path(args.pretrained).name},
        "text_config": {"model_type": "clip_text_model", "vocab_size": VOCAB_SIZE, "max_position_embeddings": ctx,
                        "hidden_size": tcfg.get("width"), "num_hidden_layers": tcfg.get("layers"),
                        "bos_token_id": SOT, "eos_token_id": EOT, "pad_token_id": 0},
        "vision_config": {"model_type": "clip_vision_model", "image_size": size, "patch_size": vcfg.get("patch_size"),
                          "hidden_size": vcfg.get("width"), "num_hidden_layers": vcfg.get("layers")},
    }, compact_numbers=False)
    ls = min(100.0, float(model.logit_scale.detach().exp()))
    write_toml(out, ls, f"From OpenCLIP {args.open_clip} {Path(args.pretrained).name}: exp(logit_scale) "
               "clamped at 100. Text model: fixed length 77, input_ids only, pad with 0.")
    finish_export(out, args.quantize, args.fp16)

    def img(x):
        with torch.inference_mode():
            return model.encode_image(torch.from_numpy(x)).numpy()

    def txt_fn(ids_np, mask):
        with torch.inference_mode():
            return model.encode_text(torch.from_numpy(ids_np * mask)).numpy()  # pad 0 like open_clip

    def tok_ids(p):
        ids = [SOT] + tokenizer.encode(p) + [EOT]
        return ids[:CONTEXT_LENGTH]

    # parity with padding 0 (pad_batch pads 49407; multiply by the mask to get open_clip's zeros)
    import onnxruntime  # noqa: F401
    report = {}
    x = formula_images(2, size, size)
    ref_i = img(x)
    id_lists = [tok_ids(p) for p in ["a photo of a cat", "a delivery van at the gate", "smoke"]]
    pids, pmask = pad_batch(id_lists, CONTEXT_LENGTH, pad=0)
    ref_t = txt_fn(pids, pmask)
    for f in sorted((out / "onnx").glob("*.onnx")):
        s = ort_session(f, threads=2)
        o, r = ((s.run(None, {"pixel_values": x})[0], ref_i) if f.name.startswith("vision")
                else (s.run(None, {"input_ids": pids})[0], ref_t))
        report[f.name] = (sig2(float(np.abs(o - r).max())), round(float((l2n(o) * l2n(r)).sum(-1).min()), 6))
        log(f"  {f.name}: max abs {report[f.name][0]}, min cosine {report[f.name][1]}")
    for n in ("vision_model.onnx", "text_model.onnx"):
        if report[n][0] > 1e-3 * max(1.0, float(np.abs(ref_i if n.startswith("v") else ref_t).max())):
            die(f"{n} differs from PyTorch by {report[n][0]}")


def cmd_export_random_b32(args):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    out = Path(args.out).resolve()
    if out.exists() and not args.force and (out / "onnx" / "vision_model.onnx").exists():
        log(f"export-random-b32: {out} already exists (use --force to rebuild)")
        return
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = CLIPConfig()  # defaults = openai/clip-vit-base-patch32 geometry
    cfg.text_config.eos_token_id = EOT
    cfg.text_config.bos_token_id = SOT
    cfg.text_config.pad_token_id = EOT
    cfg.architectures = ["CLIPModel"]
    log(f"export-random-b32: ViT-B/32 geometry, random weights (seed {args.seed}) -> {out}")
    model = CLIPModel(cfg)
    model.eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    n_all = sum(p.numel() for p in model.parameters())
    n_vis = sum(p.numel() for p in model.vision_model.parameters()) + model.visual_projection.weight.numel()
    log(f"  parameters: {n_all / 1e6:.1f} M total, {n_vis / 1e6:.1f} M image tower")
    preproc = CLIPImageProcessor(**{k: v for k, v in clip_preprocessor_json(224, 224, False).items()
                                   if k not in ("feature_extractor_type", "image_processor_type")})
    with tempfile.TemporaryDirectory() as tmp:
        tok = Tokenizers(Path(tmp))
        args.quantize, args.fp16 = True, True
        export_from_hf(model, out, 224, tok.fast_dir, preproc, args, 100.0, "random init (benchmark model)")
    (out / "README.md").write_text(
        "Full-size ViT-B/32 CLIP (transformers CLIPConfig defaults = openai/clip-vit-base-patch32 geometry) with "
        f"RANDOM weights (seed {args.seed}); same FLOPs as the real model, meaningless outputs. Made by "
        "`tools/clip-tools export-random-b32`. Not committed.\n", encoding="utf-8")
    log("export-random-b32: done")


def register(sub):
    """Add export and export-random-b32 to the subcommand parsers `sub`."""
    p = sub.add_parser("export", help="export a CLIP checkpoint into clipfilter's model layout",
                       description="Export a transformers CLIP folder (--hf) or an OpenCLIP/OpenAI checkpoint "
                                   "(--open-clip ARCH --pretrained FILE) into OUT: config.json, "
                                   "preprocessor_config.json, tokenizer.json, clipfilter.toml, onnx/*.onnx.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--hf", metavar="DIR_OR_NAME", help="transformers CLIPModel folder (or hub name if reachable)")
    g.add_argument("--open-clip", metavar="ARCH", help="OpenCLIP architecture, e.g. ViT-B-32")
    p.add_argument("--pretrained", metavar="FILE", help="OpenCLIP/OpenAI weights file (with --open-clip)")
    p.add_argument("--quantize", action="store_true", help="also write *_quantized.onnx (dynamic int8)")
    p.add_argument("--fp16", action="store_true", help="also write *_fp16.onnx (fp16 weights, float32 I/O)")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT")
    p.add_argument("out", metavar="OUT")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("export-random-b32", help="ViT-B/32 with random weights for benchmarks",
                       description="Full-size ViT-B/32 (transformers CLIPConfig defaults) with random weights, "
                                   "exported with quantized and fp16 variants. Not committed.")
    p.add_argument("out", nargs="?", default=str(LOCAL / "models" / "clip-vit-base-patch32-random"))
    p.add_argument("--seed", type=int, default=32)
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.set_defaults(fn=cmd_export_random_b32)
