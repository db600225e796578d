"""The oracle fixtures (tests/fixtures/oracle-clip, oracle-slow): hand-built ONNX graphs whose answers
are known (a colour palette), the deliberately slow variant and its timing, the reference
reference/oracle-clip.json and both READMEs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .common import (CLIP_MEAN, CLIP_STD, CONTEXT_LENGTH, EOT, OPSET, SOT, VOCAB_SIZE, f32_list,
                     formula_images, l2n, log, ort_session, pad_batch, write_json)
from .onnx_export import clip_preprocessor_json, write_toml
from .tokenizer import Tokenizers


# Oracle palette: name -> RGB in [0,1]. Order = embedding dimension; the neutral dimension is last.
PALETTE = [
    ("red", (1.0, 0.0, 0.0)),
    ("green", (0.0, 1.0, 0.0)),
    ("blue", (0.0, 0.0, 1.0)),
    ("yellow", (1.0, 1.0, 0.0)),
    ("cyan", (0.0, 1.0, 1.0)),
    ("magenta", (1.0, 0.0, 1.0)),
    ("white", (1.0, 1.0, 1.0)),
    ("black", (0.0, 0.0, 0.0)),
    ("gray", (0.5, 0.5, 0.5)),
]
PALETTE_WORDS = {name: k for k, (name, _) in enumerate(PALETTE)}
PALETTE_WORDS["grey"] = PALETTE_WORDS["gray"]
PALETTE_WORDS["aqua"] = PALETTE_WORDS["cyan"]
# Vocabulary tokens whose Gather rows are e_k. "cyan" is NOT one token in CLIP's vocabulary
# ("cy" + "an</w>"), so the prefix token "cy" carries the cyan dimension ("an</w>", the word "an",
# stays zero) and "aqua</w>" does too.
ORACLE_TOKENS = {(w + "</w>" if w != "cyan" else "cy"): k for w, k in PALETTE_WORDS.items()}
ORACLE_SIGMA = 0.15
ORACLE_NEUTRAL = 0.05
ORACLE_SIZE = 64


ORACLE_SLOW_N_MATMUL = 16  # tuned so that one image takes >= 150 ms with 1 intra-op thread here


def oracle_vision_graph(slow: bool, n_matmul: int = ORACLE_SLOW_N_MATMUL):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    K = len(PALETTE)
    D = K + 1
    inits = [
        numpy_helper.from_array(np.array(CLIP_STD, np.float32), "clip_std"),
        numpy_helper.from_array(np.array(CLIP_MEAN, np.float32), "clip_mean"),
        numpy_helper.from_array(np.array([c for _, c in PALETTE], np.float32), "palette"),          # [K,3]
        numpy_helper.from_array(np.array([-1.0 / (2 * ORACLE_SIGMA ** 2)], np.float32), "neg_inv_2s2"),
        numpy_helper.from_array(np.eye(K, D, dtype=np.float32), "to_embed"),                       # [K,D]
        numpy_helper.from_array(np.eye(1, D, K, dtype=np.float32)[0] * ORACLE_NEUTRAL, "neutral"),  # [D]
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values"], ["m"], axes=[2, 3], keepdims=0),  # [B,3]
        helper.make_node("Mul", ["m", "clip_std"], ["ms"]),
        helper.make_node("Add", ["ms", "clip_mean"], ["c"]),                                # colour in [0,1]^3
        helper.make_node("Unsqueeze", ["c", "axis1"], ["c1"]),                               # [B,1,3]
        helper.make_node("Sub", ["c1", "palette"], ["diff"]),                                # [B,K,3]
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis2"], ["d2"], keepdims=0),                  # [B,K]
        helper.make_node("Mul", ["d2", "neg_inv_2s2"], ["logw"]),
        helper.make_node("Exp", ["logw"], ["w"]),
        helper.make_node("MatMul", ["w", "to_embed"], ["e0"]),                               # [B,D]
    ]
    out_name = "image_embeds"
    if not slow:
        nodes.append(helper.make_node("Add", ["e0", "neutral"], [out_name]))
    else:
        # Deliberately heavy, input-dependent work (cannot be constant-folded): A = Tile(reshape(x)),
        # [B,768,1024]; a chain of n batched MatMuls with tanh; its sum * 1e-30 goes into the neutral dim.
        inits += [
            numpy_helper.from_array(np.array([-1, 96, 128], np.int64), "shape_r"),
            numpy_helper.from_array(np.array([1, 8, 8], np.int64), "tiles"),
            numpy_helper.from_array(np.array([1.0 / 512.0], np.float32), "mm_scale"),
            numpy_helper.from_array(np.array([1e-30], np.float32), "tiny"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
            numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
        ]
        nodes += [
            helper.make_node("Reshape", ["pixel_values", "shape_r"], ["r"]),                 # [B,96,128]
            helper.make_node("Tile", ["r", "tiles"], ["A"]),                                 # [B,768,1024]
            helper.make_node("Transpose", ["A"], ["AT"], perm=[0, 2, 1]),                    # [B,1024,768]
        ]
        y = "A"
        for i in range(n_matmul):
            rhs = "AT" if i % 2 == 0 else "A"
            nodes += [
                helper.make_node("MatMul", [y, rhs], [f"p{i}"]),
                helper.make_node("Mul", [f"p{i}", "mm_scale"], [f"q{i}"]),
                helper.make_node("Tanh", [f"q{i}"], [f"y{i}"]),
            ]
            y = f"y{i}"
        nodes += [
            helper.make_node("ReduceSum", [y, "axes12"], ["s"], keepdims=0),                 # [B]
            helper.make_node("Mul", ["s", "tiny"], ["s_tiny"]),
            helper.make_node("Unsqueeze", ["s_tiny", "axis_last"], ["s_col"]),              # [B,1]
            helper.make_node("Mul", ["s_col", "neutral"], ["extra"]),                        # [B,D]
            helper.make_node("Add", ["e0", "neutral"], ["e1"]),
            helper.make_node("Add", ["e1", "extra"], [out_name]),
        ]
    graph = helper.make_graph(
        nodes, "oracle_vision_slow" if slow else "oracle_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                       ["batch_size", 3, ORACLE_SIZE, ORACLE_SIZE])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch_size", D])],
        inits)
    return graph


def oracle_text_graph(word_ids: dict):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    K = len(PALETTE)
    D = K + 1
    table = np.zeros((VOCAB_SIZE, D), np.float32)
    for word, k in word_ids.items():
        table[k[0], k[1]] = 1.0
    inits = [
        numpy_helper.from_array(table, "word_table"),
        numpy_helper.from_array(np.eye(1, D, K, dtype=np.float32)[0] * ORACLE_NEUTRAL, "neutral"),
        numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["word_table", "input_ids"], ["g"], axis=0),       # [B,S,D]
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "axis_last"], ["mf3"]),                  # [B,S,1]
        helper.make_node("Mul", ["g", "mf3"], ["gm"]),
        helper.make_node("ReduceSum", ["gm", "axis1"], ["s"], keepdims=0),            # [B,D]
        helper.make_node("Add", ["s", "neutral"], ["text_embeds"]),
    ]
    return helper.make_graph(
        nodes, "oracle_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch_size", D])],
        inits)


def save_graph(graph, path: Path):
    import onnx
    from onnx import helper
    m = helper.make_model(graph, producer_name="clipfilter-tools", opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))


def oracle_config_json():
    K = len(PALETTE)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": K + 1,
        "logit_scale_init_value": 2.6592,
        "clipfilter_oracle": {
            "palette": {name: list(rgb) for name, rgb in PALETTE},
            "sigma": ORACLE_SIGMA, "neutral": ORACLE_NEUTRAL, "embedding_dim": K + 1,
            "note": "hand-built ONNX model, see README.md; there are no PyTorch weights",
        },
        "text_config": {"model_type": "clip_text_model", "vocab_size": VOCAB_SIZE,
                        "max_position_embeddings": CONTEXT_LENGTH, "bos_token_id": SOT, "eos_token_id": EOT,
                        "pad_token_id": EOT, "projection_dim": K + 1},
        "vision_config": {"model_type": "clip_vision_model", "image_size": ORACLE_SIZE, "patch_size": ORACLE_SIZE,
                          "num_channels": 3, "projection_dim": K + 1},
    }


def oracle_word_ids(tok: Tokenizers):
    """{token string: (token id, embedding dim)}; checks that every colour word maps to exactly one e_k."""
    out = {t: (tok.vocab[t], k) for t, k in ORACLE_TOKENS.items()}
    by_id = {tid: k for tid, k in out.values()}
    for word, k in PALETTE_WORDS.items():
        for text in (word, f"a {word} screen"):
            for ids in (tok.ids_hf_fast(text), tok.ids_original(text)):
                hits = [by_id[i] for i in ids if i in by_id]
                if hits != [k]:
                    raise RuntimeError(f"oracle: {text!r} -> {ids} does not hit exactly dimension {k}: {hits}")
    return out


def time_oracle_slow(path: Path, threads: int = 1, reps: int = 5):
    import numpy as np
    s = ort_session(path, threads)
    x = formula_images(1, ORACLE_SIZE, ORACLE_SIZE)
    s.run(None, {"pixel_values": x})
    best, total = float("inf"), 0.0
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, {"pixel_values": x})
        dt = time.perf_counter() - t
        best, total = min(best, dt), total + dt
    return best * 1000, total / reps * 1000


def make_oracles(tok: Tokenizers, out_root: Path):
    import numpy as np
    word_ids = oracle_word_ids(tok)
    for name in ("oracle-clip", "oracle-slow"):
        folder = out_root / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "onnx").mkdir(parents=True)
        save_graph(oracle_vision_graph(slow=(name == "oracle-slow")), folder / "onnx" / "vision_model.onnx")
        save_graph(oracle_text_graph(word_ids), folder / "onnx" / "text_model.onnx")
        write_json(folder / "config.json", oracle_config_json(), compact_numbers=False)
        write_json(folder / "preprocessor_config.json", clip_preprocessor_json(ORACLE_SIZE, ORACLE_SIZE, False),
                   compact_numbers=False)
        tok.copy_files_to(folder)
        write_toml(folder, 100.0, "Hand-built oracle model, see README.md.")

    # reference: solid-colour frames against colour prompts
    vs = ort_session(out_root / "oracle-clip" / "onnx" / "vision_model.onnx")
    ts = ort_session(out_root / "oracle-clip" / "onnx" / "text_model.onnx")
    vslow = ort_session(out_root / "oracle-slow" / "onnx" / "vision_model.onnx")
    colours = [(name, [int(round(v * 255)) for v in rgb]) for name, rgb in PALETTE]
    colours = [(n, [128, 128, 128] if n == "gray" else rgb) for n, rgb in colours]
    colours += [("orange", [255, 128, 0]), ("dark-red", [128, 0, 0])]
    prompts = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "gray", "grey", "aqua",
               "a red screen", "a photo of a dog", "Red", "red red", ""]
    ids = [tok.ids_hf_fast(p) for p in prompts]
    pid, pmask = pad_batch(ids)
    temb = ts.run(None, {"input_ids": pid, "attention_mask": pmask})[0]
    frames = np.stack([np.broadcast_to(((np.array(rgb, np.float64) / 255.0 - CLIP_MEAN) / CLIP_STD)
                                       .astype(np.float32)[:, None, None], (3, ORACLE_SIZE, ORACLE_SIZE))
                       for _, rgb in colours]).astype(np.float32)
    iemb = vs.run(None, {"pixel_values": frames})[0]
    iemb_slow = vslow.run(None, {"pixel_values": frames})[0]
    slow_diff = float(np.abs(iemb - iemb_slow).max())
    if slow_diff > 1e-6:
        raise RuntimeError(f"oracle-slow differs from oracle-clip by {slow_diff}")
    cos = l2n(iemb) @ l2n(temb).T
    red = [c[0] for c in colours].index("red")
    if prompts[int(np.argmax(cos[red]))] not in ("red", "a red screen", "Red", "red red"):
        raise RuntimeError("oracle: a red frame does not match 'red' best")
    if not (cos[red][prompts.index("red")] > 0.999 and cos[red][prompts.index("green")] < 0.01):
        raise RuntimeError(f"oracle: unexpected cosines for red: {cos[red]}")
    ref = {
        "model": "oracle-clip (oracle-slow gives identical outputs)",
        "logit_scale": 100.0,
        "frames": "solid-colour frames, pixel_values = (rgb/255 - mean)/std for every pixel, [3,64,64]",
        "oracle_slow_vs_oracle_max_abs": slow_diff,
        "colours": [{"name": n, "rgb": rgb} for n, rgb in colours],
        "prompts": [{"text": p, "ids": i} for p, i in zip(prompts, ids)],
        "image_embeds": f32_list(iemb),
        "text_embeds": f32_list(temb),
        "cosine": f32_list(cos),
    }
    write_json(out_root / "reference" / "oracle-clip.json", ref)
    return word_ids, cos, colours, prompts


ORACLE_README = """# oracle-clip — a hand-built CLIP-shaped model whose answers we know

Not a neural network: two small ONNX graphs built with the `onnx` helper API by
`tools/clip-tools make-fixtures` (`oracle_vision_graph` / `oracle_text_graph` in
`tools/clip_tools/oracle.py`).
Same file layout, input and output names as a transformers.js CLIP export, with the real CLIP
`tokenizer.json`, so every part of clipfilter (preprocessing, tokenizer, both towers, cosine, softmax,
thresholds) can be tested end to end with outcomes a person can predict.

Embedding dimension D = {D}: one dimension per palette colour plus a last "neutral" dimension.

Palette (k = dimension): {palette}

## Vision tower — `onnx/vision_model.onnx`
Input `pixel_values` float32 [batch_size, 3, 64, 64] (preprocessor: shortest_edge 64, centre crop 64,
bicubic, CLIP mean/std). Output `image_embeds` float32 [batch_size, {D}], not normalised.

1. m = per-channel mean of pixel_values over H, W;
2. c = m * std + mean (undo CLIP normalisation: the frame's mean colour in [0,1]^3);
3. w_k = exp(-||c - p_k||^2 / (2 * 0.15^2)) for each palette colour p_k;
4. image_embeds = sum_k w_k e_k + 0.05 e_neutral.

## Text tower — `onnx/text_model.onnx`
Inputs `input_ids` int64 [batch_size, sequence_length] (dynamic length) and `attention_mask` int64 (same
shape). Output `text_embeds` float32 [batch_size, {D}].
A Gather table [49408, {D}] is zero except the rows of these tokens of the real vocabulary, which hold e_k:
{words}.
"gray" and "grey" share a dimension. "cyan" is not a single token in CLIP's vocabulary (it is
"cy" + "an</w>"), so the prefix token "cy" carries the cyan dimension ("an</w>" is the word "an" and
stays zero) and "aqua" is a synonym; a rare word that starts with the token "cy" also counts as cyan.
text_embeds = sum over the sequence of table[input_ids] * attention_mask + 0.05 e_neutral.
Start/end/padding tokens and every other word add nothing.

## What follows
- A pure red frame: image_embeds = e_red + 0.05 e_neutral (other w_k < 1e-7), cosine with "red",
  "Red", "a red screen", "red red" = 1.0000, with "green" = 0.0025, with "a photo of a dog" = 0.0499.
- Mixed frames give mixed colours by their mean colour only; the layout of the frame does not matter.
- `clipfilter.toml` sets `logit_scale = 100.0`.
- `tests/fixtures/reference/oracle-clip.json`: embeddings and cosines of solid-colour frames against
  colour prompts (computed with onnxruntime from these files).

## oracle-slow
`../oracle-slow/` is identical (same tokenizer, text model and outputs) but its vision model is
deliberately slow; see `../oracle-slow/README.md`.
"""


ORACLE_SLOW_README = """# oracle-slow — oracle-clip with a deliberately slow vision model

Identical to `../oracle-clip/` (same tokenizer, same `onnx/text_model.onnx`, same outputs: on the
reference frames the difference is exactly 0) except that `onnx/vision_model.onnx` also does heavy,
useless work. Read `../oracle-clip/README.md` for what the model computes.

The extra work: the input is reshaped to [B,96,128] and tiled to A = [B,768,1024]; a chain of {nmm}
batched MatMuls (alternately with A^T and A, each scaled by 1/512 and passed through tanh) runs on it;
the sum of the result times 1e-30 is added to the neutral dimension (far below the float32 resolution
of its value 0.05, so the output is bit-identical to oracle-clip). Everything is derived from the
input, so ONNX Runtime cannot constant-fold it, and the file stays small (no big weights).
About {gflop:.1f} GFLOP per image; cost grows linearly with the batch size.

Use it to test timeouts, frame dropping, back-pressure and queueing.

<!-- timing: measured by tools/clip-tools make-fixtures; kept on regeneration unless --update-timing -->
{timing}
<!-- /timing -->
"""


TIMING_START = "<!-- timing: measured by tools/clip-tools make-fixtures; kept on regeneration unless --update-timing -->"
TIMING_END = "<!-- /timing -->"


def write_readmes(tok: Tokenizers, out_root: Path, previous_slow_readme: str | None, update_timing: bool):
    """oracle-slow/README.md and oracle-clip/README.md. The oracle-slow timing is measured every run; the
    README keeps the committed measurement (from previous_slow_readme) unless update_timing (or there is
    none yet), so regeneration stays bit-identical."""
    import onnxruntime
    slow = out_root / "oracle-slow" / "onnx" / "vision_model.onnx"
    b1, m1 = time_oracle_slow(slow, 1)
    b2, m2 = time_oracle_slow(slow, 2)
    timing = (f"Measured on the 2-core development machine (onnxruntime {onnxruntime.__version__}, CPU "
              f"execution provider, sequential execution, batch 1, formula image):\n\n"
              f"- intra_op_num_threads = 1: best {b1:.0f} ms, mean {m1:.0f} ms per image\n"
              f"- intra_op_num_threads = 2: best {b2:.0f} ms, mean {m2:.0f} ms per image")
    log(f"  oracle-slow: 1 thread best {b1:.0f} ms / mean {m1:.0f} ms; 2 threads best {b2:.0f} / mean {m2:.0f} ms")
    if b1 < 150:
        log(f"  WARNING: oracle-slow took only {b1:.0f} ms (< 150 ms) with 1 thread on this machine")
    readme_path = out_root / "oracle-slow" / "README.md"
    old = previous_slow_readme
    if old and not update_timing and TIMING_START in old and TIMING_END in old:
        timing = old.split(TIMING_START, 1)[1].split(TIMING_END, 1)[0].strip("\n")
        log("  oracle-slow/README.md: keeping the committed timing (use --update-timing to replace it)")
    gflop = ORACLE_SLOW_N_MATMUL * 2 * 768 * 768 * 1024 / 1e9
    readme_path.write_text(ORACLE_SLOW_README.format(nmm=ORACLE_SLOW_N_MATMUL, gflop=gflop, timing=timing),
                           encoding="utf-8")
    K = len(PALETTE)
    words = ", ".join(f'`{t}` ({tid}) -> {PALETTE[k][0]}' for t, (tid, k) in oracle_word_ids(tok).items())
    palette = "; ".join(f"{k} {n} {rgb}" for k, (n, rgb) in enumerate(PALETTE)) + f"; {K} neutral"
    (out_root / "oracle-clip" / "README.md").write_text(
        ORACLE_README.format(D=K + 1, palette=palette, words=words), encoding="utf-8")
