"""The tiny transformers CLIP fixtures (tests/fixtures/tiny-clip, tiny-clip-odd): their specs, the
random models with a periodic token-embedding table, their ONNX export and variants, and the
PyTorch reference outputs in reference/<name>.json (embeddings and zero-shot cases)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from .common import (CONTEXT_LENGTH, EOT, FORMULA, SOT, VOCAB_SIZE, f32_list, formula_images, l2n, log,
                     ort_session, pad_batch, sig2, softmax, write_json)
from .onnx_export import clip_preprocessor_json, convert_fp16, export_hf_clip, quantize_int8, write_toml
from .tokenizer import SINGLE_TEMPLATES, Tokenizers, long_text_300

ZEROSHOT_LABELS = ["cat", "dog", "person", "car", "fire", "smoke", "knife", "delivery van"]

TINY_SPECS = {
    "tiny-clip": dict(
        seed=20261128,
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=224, patch_size=32),
        projection_dim=32, logit_scale=100.0, toml=False,
        # token-embedding rows repeat with a prime period P < 32 KiB / row bytes so that git (zlib, 32 KiB
        # window) compresses the 49408-row table ~40x; see choose_period()
        text_fixed_len=True, attention_mask=True, variants=True,
        preprocessor=dict(shortest_edge=224, crop=224, legacy=False),
    ),
    "tiny-clip-odd": dict(
        seed=11282026,
        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4),
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    image_size=96, patch_size=16),
        projection_dim=24, logit_scale=50.0, toml=True,
        text_fixed_len=False, attention_mask=False, variants=False,
        preprocessor=dict(shortest_edge=112, crop=96, legacy=True),
    ),
}


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def choose_period(hidden: int, id_sequences) -> int:
    """Largest prime P with P * 4 * hidden <= 32 KiB such that the given token-id sequences stay pairwise
    distinct modulo P (so e.g. the zero-shot labels never share an embedding)."""
    seqs = sorted({tuple(s) for s in id_sequences})
    for p in range(32768 // (4 * hidden), 1, -1):
        if is_prime(p) and len({tuple(i % p for i in s) for s in seqs}) == len(seqs):
            return p
    raise RuntimeError("no embedding period found")


def build_tiny_model(spec, period: int):
    import torch
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(spec["seed"])
    cfg = CLIPConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, max_position_embeddings=CONTEXT_LENGTH,
                         bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT,
                         projection_dim=spec["projection_dim"], **spec["text"]),
        vision_config=dict(projection_dim=spec["projection_dim"], **spec["vision"]),
        projection_dim=spec["projection_dim"],
    )
    cfg.architectures = ["CLIPModel"]
    model = CLIPModel(cfg)
    model.eval()
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding.weight
        p = period
        reps = math.ceil(VOCAB_SIZE / p)
        emb.copy_(emb[:p].clone().repeat(reps, 1)[:VOCAB_SIZE])
        model.logit_scale.fill_(math.log(spec["logit_scale"]))
    return model


def reference_texts():
    """Texts whose embeddings the tiny models' references record (ids: the tokenizer.json / hf_fast ids)."""
    return [
        "a photo of a cat",
        "a person holding a knife",
        "smoke",
        "a delivery van at the gate",
        "",
        "Café crème brûlée 🔥🔥 at 2026-11-28!",
        "一只猫在屋顶上",
        "it's a RED car, they'll see it",
        long_text_300(),
    ]


def make_tiny(name: str, tok: Tokenizers, templates: dict, out_root: Path):
    import numpy as np
    import torch
    spec = TINY_SPECS[name]
    folder = out_root / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "onnx").mkdir(parents=True)
    important = [tok.ids_hf_fast(t) for t in reference_texts()]
    important += [tok.ids_hf_fast(w) for w in ZEROSHOT_LABELS + ["red", "green", "a person", "an empty street", "a car"]]
    important += [tok.ids_hf_fast(t.format(w)) for w in ZEROSHOT_LABELS for t in SINGLE_TEMPLATES]
    period = choose_period(spec["text"]["hidden_size"], important)
    model = build_tiny_model(spec, period)
    size = spec["vision"]["image_size"]
    model.config.to_json_file(str(folder / "config.json"))
    pp = spec["preprocessor"]
    write_json(folder / "preprocessor_config.json", clip_preprocessor_json(pp["shortest_edge"], pp["crop"], pp["legacy"]),
               compact_numbers=False)
    tok.copy_files_to(folder)
    if spec["toml"]:
        write_toml(folder, spec["logit_scale"], "The references in tests/fixtures/reference/"
                   f"{name}.json use exactly this value.")
    log(f"  {name}: exporting ONNX")
    export_hf_clip(model, folder, spec["text_fixed_len"], spec["attention_mask"], size)
    onnx_dir = folder / "onnx"
    if spec["variants"]:
        log(f"  {name}: quantized and fp16 variants")
        quantize_int8(onnx_dir / "vision_model.onnx", onnx_dir / "vision_model_quantized.onnx")
        convert_fp16(onnx_dir / "vision_model.onnx", onnx_dir / "vision_model_fp16.onnx")
        convert_fp16(onnx_dir / "text_model.onnx", onnx_dir / "text_model_fp16.onnx")

    vs = ort_session(onnx_dir / "vision_model.onnx")
    ts = ort_session(onnx_dir / "text_model.onnx")
    fixed = spec["text_fixed_len"]
    with_mask = spec["attention_mask"]

    def torch_text(id_lists):
        ids, mask = pad_batch(id_lists, CONTEXT_LENGTH if fixed else None)
        with torch.inference_mode():
            return model.get_text_features(input_ids=torch.from_numpy(ids),
                                           attention_mask=torch.from_numpy(mask)).numpy()

    def onnx_text(sess, id_lists):
        ids, mask = pad_batch(id_lists, CONTEXT_LENGTH if fixed else None)
        feed = {"input_ids": ids}
        if with_mask:
            feed["attention_mask"] = mask
        return sess.run(None, feed)[0]

    def torch_image(x):
        with torch.inference_mode():
            return model.get_image_features(pixel_values=torch.from_numpy(x)).numpy()

    diff_v = diff_t = 0.0
    images = []
    for b in (1, 3, 17):
        x = formula_images(b, size, size)
        e = torch_image(x)
        diff_v = max(diff_v, float(np.abs(vs.run(None, {"pixel_values": x})[0] - e).max()))
        images.append({"batch": b, "embeds": f32_list(e)})

    texts = []
    for t in reference_texts():
        ids = tok.ids_hf_fast(t)
        e = torch_text([ids])[0]
        # unpadded / batch-1 and padded-in-a-batch must agree (causal mask): checked through ONNX below
        diff_t = max(diff_t, float(np.abs(onnx_text(ts, [ids])[0] - e).max()))
        texts.append({"text": t, "ids": ids, "embeds": f32_list(e)})
    # a mixed-length batch through ONNX (padding with 49407) equals the single results
    all_ids = [t["ids"] for t in texts]
    batch_out = onnx_text(ts, all_ids)
    diff_t = max(diff_t, float(np.abs(batch_out - np.array([t["embeds"] for t in texts])).max()))
    if diff_v > 1e-4 or diff_t > 1e-4:
        raise RuntimeError(f"{name}: ONNX export differs from PyTorch: vision {diff_v}, text {diff_t}")

    scale = spec["logit_scale"]
    zeroshot = []
    zs_cases = [(3, ZEROSHOT_LABELS, t) for t in ("none", "single", "ensemble7", "imagenet80")]
    zs_cases.append((5, ["red", "green"], "none"))
    zs_cases.append((1, ["a person", "an empty street", "a car"], "single"))
    for nimg, labels, tmpl in zs_cases:
        x = formula_images(nimg, size, size)
        img = l2n(torch_image(x))
        if tmpl == "none":
            txt = l2n(torch_text([tok.ids_hf_fast(l) for l in labels]))
        else:
            ts_list = SINGLE_TEMPLATES if tmpl == "single" else templates[tmpl]
            rows = []
            for label in labels:
                e = l2n(torch_text([tok.ids_hf_fast(t.format(label)) for t in ts_list]))
                rows.append(l2n(e.mean(axis=0)))
            txt = np.stack(rows)
        cos = img @ txt.T
        probs = softmax(scale * cos)
        case = {"images": nimg, "labels": labels, "templates": tmpl,
                "probs": f32_list(probs), "cosine": f32_list(cos)}
        if tmpl == "none":
            id_lists = [tok.ids_hf_fast(l) for l in labels]
            ids, mask = pad_batch(id_lists, CONTEXT_LENGTH if fixed else None)
            with torch.inference_mode():
                out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                            pixel_values=torch.from_numpy(x))
            ref = out.logits_per_image.softmax(-1).numpy()
            d = float(np.abs(ref - probs).max())
            if d > 1e-5:
                raise RuntimeError(f"{name}: probs differ from CLIPModel logits_per_image.softmax: {d}")
            case["comment"] = (f"verified: probs equal transformers CLIPModel(input_ids, pixel_values)"
                               f".logits_per_image.softmax(-1) (max abs diff {sig2(d)})")
        zeroshot.append(case)

    variants = {}
    if spec["variants"]:
        x = formula_images(3, size, size)
        ref = torch_image(x)
        for v in ("vision_model_quantized.onnx", "vision_model_fp16.onnx"):
            out = ort_session(onnx_dir / v).run(None, {"pixel_values": x})[0]
            variants[v] = {"max_abs": sig2(float(np.abs(out - ref).max())),
                           "min_cosine": round(float((l2n(out) * l2n(ref)).sum(-1).min()), 6)}
        ids = [t["ids"] for t in texts]
        ref = np.array([t["embeds"] for t in texts])
        out = onnx_text(ort_session(onnx_dir / "text_model_fp16.onnx"), ids)
        variants["text_model_fp16.onnx"] = {"max_abs": sig2(float(np.abs(out - ref).max())),
                                            "min_cosine": round(float((l2n(out) * l2n(ref)).sum(-1).min()), 6)}

    ref_json = {
        "model": name,
        "logit_scale": scale,
        "image_size": size,
        "image_formula": FORMULA,
        "token_embedding_period": period,
        "text_input": ("input_ids int64 [batch, 77] (fixed) + attention_mask int64; padding id 49407"
                       if fixed else "input_ids int64 [batch, sequence] (dynamic length), no attention_mask"),
        "onnx_vs_torch_max_abs": {"vision": sig2(diff_v), "text": sig2(diff_t)},
        "image": images,
        "text": texts,
        "zeroshot": zeroshot,
    }
    if variants:
        ref_json["variants_vs_torch"] = variants
    write_json(out_root / "reference" / f"{name}.json", ref_json)
    log(f"  {name}: onnx vs torch max abs: vision {diff_v:.2g}, text {diff_t:.2g}; variants {variants}")
    return ref_json
