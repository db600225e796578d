"""The oracle-spot fixture (tests/fixtures/oracle-spot): oracle-clip's text tower, tokenizer and palette
with a vision tower that max-pools the per-pixel palette weights instead of looking at the mean colour,
its reference reference/oracle-spot.json and README; and the letterbox ("pad") preprocessing reference
reference/pad.json, computed with PIL like CLIPImageProcessor's resize.

Both are written by make-fixtures (fast, no training) and checked by check-fixtures (ref venv: numpy,
PIL, onnxruntime)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from .common import CLIP_MEAN, CLIP_STD, f32_list, l2n, ort_session, pad_batch, write_json
from .onnx_export import clip_preprocessor_json, write_toml
from .oracle import (ORACLE_NEUTRAL, ORACLE_SIGMA, ORACLE_SIZE, PALETTE, oracle_config_json, oracle_text_graph,
                     oracle_word_ids, save_graph)
from .tokenizer import Tokenizers

SPOT_SIZE = ORACLE_SIZE  # same 64x64 input geometry as oracle-clip

# Reference frames with coloured patches on a grey background: (name, background rgb, [(x, y, w, h, rgb)]).
GREY = [128, 128, 128]
SPOT_FRAMES = [
    ("red fifth on grey", GREY, [(18, 18, 29, 29, [255, 0, 0])]),          # 841 px = 20.5% of the frame
    ("green 8x8 corner on grey", GREY, [(0, 0, 8, 8, [0, 255, 0])]),
    ("blue 16x16 on grey", GREY, [(40, 8, 16, 16, [0, 0, 255])]),
    ("one red pixel on grey", GREY, [(63, 63, 1, 1, [255, 0, 0])]),
    ("red and blue 10x10 on grey", GREY, [(4, 50, 10, 10, [255, 0, 0]), (50, 4, 10, 10, [0, 0, 255])]),
    ("yellow 12x12 on black", [0, 0, 0], [(26, 26, 12, 12, [255, 255, 0])]),
]
SPOT_PROMPTS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "gray", "grey", "aqua",
                "a red screen", "a photo of a dog", "Red", "red red", ""]


def spot_vision_graph():
    """pixel_values [B,3,64,64] -> image_embeds [B,D]: per pixel c = x*std + mean, w_k = exp(-|c-p_k|^2/(2s^2)),
    max over pixels, then the palette dimensions + 0.05 neutral."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    K = len(PALETTE)
    D = K + 1
    inits = [
        numpy_helper.from_array(np.array(CLIP_STD, np.float32).reshape(1, 3, 1, 1), "clip_std"),
        numpy_helper.from_array(np.array(CLIP_MEAN, np.float32).reshape(1, 3, 1, 1), "clip_mean"),
        numpy_helper.from_array(np.array([c for _, c in PALETTE], np.float32), "palette"),          # [K,3]
        numpy_helper.from_array(np.array([-1.0 / (2 * ORACLE_SIGMA ** 2)], np.float32), "neg_inv_2s2"),
        numpy_helper.from_array(np.eye(K, D, dtype=np.float32), "to_embed"),                       # [K,D]
        numpy_helper.from_array(np.eye(1, D, K, dtype=np.float32)[0] * ORACLE_NEUTRAL, "neutral"),  # [D]
        numpy_helper.from_array(np.array([0, 3, -1], np.int64), "shape_b3n"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([3], np.int64), "axis3"),
    ]
    nodes = [
        helper.make_node("Mul", ["pixel_values", "clip_std"], ["xs"]),
        helper.make_node("Add", ["xs", "clip_mean"], ["c"]),                                # [B,3,H,W] in [0,1]
        helper.make_node("Reshape", ["c", "shape_b3n"], ["c3n"]),                            # [B,3,HW]
        helper.make_node("Transpose", ["c3n"], ["cn3"], perm=[0, 2, 1]),                     # [B,HW,3]
        helper.make_node("Unsqueeze", ["cn3", "axis2"], ["cn13"]),                           # [B,HW,1,3]
        helper.make_node("Sub", ["cn13", "palette"], ["diff"]),                              # [B,HW,K,3]
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis3"], ["d2"], keepdims=0),                  # [B,HW,K]
        helper.make_node("Mul", ["d2", "neg_inv_2s2"], ["logw"]),
        helper.make_node("Exp", ["logw"], ["w"]),
        helper.make_node("ReduceMax", ["w"], ["wmax"], axes=[1], keepdims=0),                # [B,K]
        helper.make_node("MatMul", ["wmax", "to_embed"], ["e0"]),                            # [B,D]
        helper.make_node("Add", ["e0", "neutral"], ["image_embeds"]),
    ]
    return helper.make_graph(
        nodes, "oracle_spot_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch_size", 3, SPOT_SIZE, SPOT_SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch_size", D])],
        inits)


def normalise_rgb(rgb):
    """float32 pixel value of an 8-bit colour, exactly as transformers' CLIPImageProcessor computes it:
    rescale in float64 then cast to float32, then (x - mean) / std in float32."""
    import numpy as np
    x = (np.asarray(rgb, np.float64) * 0.00392156862745098).astype(np.float32)
    return (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)


def spot_frame_rgb(background, patches, size: int = SPOT_SIZE):
    """uint8 [H,W,3] picture of a reference frame (the model input, no resizing)."""
    import numpy as np
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    for x, y, w, h, rgb in patches:
        img[y:y + h, x:x + w] = rgb
    return img


def frames_pixel_values(frames):
    import numpy as np
    return np.stack([normalise_rgb(spot_frame_rgb(bg, patches)).transpose(2, 0, 1) for _, bg, patches in frames]
                    ).astype(np.float32)


def spot_frames():
    """Reference frames: the solid colours of oracle-clip.json, then the patch frames."""
    colours = [(name, [int(round(v * 255)) for v in rgb]) for name, rgb in PALETTE]
    colours = [(n, [128, 128, 128] if n == "gray" else rgb) for n, rgb in colours]
    colours += [("orange", [255, 128, 0]), ("dark-red", [128, 0, 0])]
    return [(f"solid {n}", rgb, []) for n, rgb in colours] + list(SPOT_FRAMES)


def make_oracle_spot(tok: Tokenizers, out_root: Path):
    import numpy as np
    word_ids = oracle_word_ids(tok)
    folder = out_root / "oracle-spot"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "onnx").mkdir(parents=True)
    save_graph(spot_vision_graph(), folder / "onnx" / "vision_model.onnx")
    save_graph(oracle_text_graph(word_ids), folder / "onnx" / "text_model.onnx")
    cfg = oracle_config_json()
    cfg["clipfilter_oracle"]["pooling"] = "max over pixels of the palette weights (oracle-clip: weights of the mean colour)"
    write_json(folder / "config.json", cfg, compact_numbers=False)
    write_json(folder / "preprocessor_config.json", clip_preprocessor_json(SPOT_SIZE, SPOT_SIZE, False),
               compact_numbers=False)
    tok.copy_files_to(folder)
    write_toml(folder, 100.0, "Hand-built oracle model (max-pooled colours), see README.md.")

    vs = ort_session(folder / "onnx" / "vision_model.onnx")
    ts = ort_session(folder / "onnx" / "text_model.onnx")
    mean_vs = ort_session(out_root / "oracle-clip" / "onnx" / "vision_model.onnx")
    frames = spot_frames()
    x = frames_pixel_values(frames)
    iemb = vs.run(None, {"pixel_values": x})[0]
    iemb_mean = mean_vs.run(None, {"pixel_values": x})[0]
    ids = [tok.ids_hf_fast(p) for p in SPOT_PROMPTS]
    pid, pmask = pad_batch(ids)
    temb = ts.run(None, {"input_ids": pid, "attention_mask": pmask})[0]
    cos = l2n(iemb) @ l2n(temb).T
    cos_mean = l2n(iemb_mean) @ l2n(temb).T
    # what the fixture is for: the red fifth shows as red (and grey) here, not in oracle-clip
    r = [f[0] for f in frames].index("red fifth on grey")
    pr, pg = SPOT_PROMPTS.index("red"), SPOT_PROMPTS.index("gray")
    if not (abs(cos[r, pr] - 2 ** -0.5) < 2e-3 and abs(cos[r, pg] - 2 ** -0.5) < 2e-3 and cos_mean[r, pr] < 0.05):
        raise RuntimeError(f"oracle-spot: unexpected cosines for the red fifth: {cos[r]} (mean model {cos_mean[r]})")
    solid = [i for i, f in enumerate(frames) if f[0].startswith("solid ")]
    if not np.allclose(iemb[solid], iemb_mean[solid], atol=1e-5):
        raise RuntimeError("oracle-spot differs from oracle-clip on solid frames")
    ref = {
        "model": "oracle-spot",
        "logit_scale": 100.0,
        "frames_description": ("model inputs, no resizing: a [64,64] uint8 RGB picture filled with `background`, then "
                               "each patch [x, y, w, h, rgb] painted over columns x..x+w-1, rows y..y+h-1 in order; "
                               "pixel_values = float32(float64(v) * (1/255)) then (x - mean) / std in float32, "
                               "CHW"),
        "frames": [{"name": n, "background": bg, "patches": [[px, py, pw, ph, rgb] for px, py, pw, ph, rgb in p]}
                   for n, bg, p in frames],
        "prompts": [{"text": p, "ids": i} for p, i in zip(SPOT_PROMPTS, ids)],
        "image_embeds": f32_list(iemb),
        "text_embeds": f32_list(temb),
        "cosine": f32_list(cos),
        "oracle_clip_cosine": f32_list(cos_mean),
    }
    write_json(out_root / "reference" / "oracle-spot.json", ref)
    (folder / "README.md").write_text(spot_readme(cos[r, pr], cos_mean[r, pr], cos_mean[r, pg]), encoding="utf-8")
    return ref


SPOT_README = """# oracle-spot — the oracle that sees a colour anywhere in the picture

Like `../oracle-clip/` (same `onnx/text_model.onnx`, tokenizer, palette, `clipfilter.toml` with
`logit_scale = 100.0`, preprocessor: shortest_edge {size}, centre crop {size}, bicubic, CLIP mean/std), but
its vision tower max-pools the per-pixel palette weights instead of taking the weights of the mean
colour. oracle-clip cannot see a colour that covers a fifth of the picture (the mean colour moves too
little); oracle-spot can: use it to test that a frame is scored as a whole picture (pad / letterbox,
tiling) and not only its centre crop. Built by `tools/clip-tools make-fixtures`
(`spot_vision_graph` in `tools/clip_tools/spot.py`).

## Vision tower — `onnx/vision_model.onnx`
Input `pixel_values` float32 [batch_size, 3, {size}, {size}]. Output `image_embeds` float32
[batch_size, {D}], not normalised.

1. for every pixel: c = pixel_values * std + mean (undo CLIP normalisation: its colour in [0,1]^3);
2. w_k(pixel) = exp(-||c - p_k||^2 / (2 * {sigma}^2)) for each palette colour p_k;
3. image_embeds_k = max over pixels of w_k(pixel); image_embeds_neutral = {neutral}.

Palette (k = dimension): {palette}. Text tower: exactly oracle-clip's (see `../oracle-clip/README.md`).

## What follows
- A solid frame gives the same embedding as oracle-clip (max = mean when every pixel is equal).
- A frame with colour patches shows each patch colour (w = 1 for an exact palette colour) and the
  background: a grey frame with a red patch of any size, down to one pixel, gives
  image_embeds = e_red + e_gray + {neutral} e_neutral, cosine {spot_red:.4f} with "red" and with "gray"
  (oracle-clip, same frame with a red 29x29 patch, a fifth of the picture: {mean_red:.4f} with "red",
  {mean_gray:.4f} with "gray": its mean colour stays near grey).
- Only colours in the model input count: a patch that the centre crop cuts away is not seen.
  Resizing blends edges into intermediate colours, so small patches should be a few pixels wide
  after resizing; the interior keeps its exact colour.
- `tests/fixtures/reference/oracle-spot.json`: solid frames and patch frames (described, not stored
  as pixels) against the colour prompts, with oracle-clip's cosines on the same frames for contrast.
- `tests/fixtures/reference/pad.json`: the letterbox ("pad") preprocessing reference for this
  model's 64x64 input (see `tests/fixtures/README.md`).
"""


def spot_readme(spot_red: float, mean_red: float, mean_gray: float):
    K = len(PALETTE)
    palette = "; ".join(f"{k} {n} {rgb}" for k, (n, rgb) in enumerate(PALETTE)) + f"; {K} neutral"
    return SPOT_README.format(size=SPOT_SIZE, D=K + 1, sigma=ORACLE_SIGMA, neutral=ORACLE_NEUTRAL, palette=palette,
                              spot_red=spot_red, mean_red=mean_red, mean_gray=mean_gray)


# ----------------------------------------------------------------------------------------------
# pad (letterbox) reference
# ----------------------------------------------------------------------------------------------

PAD_IMAGE_FORMULA = ("rgb[y][x][c] = t if t < 256 else 511 - t, with t = (3*x + 5*y + 85*c + (x*y) // 16) % 512, "
                     "integer arithmetic; x = column, y = row, c = channel 0..2 (R, G, B); uint8, HWC, row-major")
PAD_SIZES = [(160, 90), (90, 160), (200, 50), (30, 20)]  # (width, height)
PAD_RULE = (
    "S = crop size (64). L = max(w, h). Scaled size: new_w = (2*w*S + L) // (2*L), new_h = (2*h*S + L) // (2*L) "
    "(integer arithmetic: w*S/L rounded half up; the long side becomes exactly S), each at least 1. "
    "The uint8 RGB image is resized to (new_w, new_h) with PIL Image.resize(..., Image.BICUBIC) (reducing_gap "
    "None; PIL's bicubic a = -0.5 with antialiasing, i.e. the support widened by the scale when downscaling, "
    "as CLIPImageProcessor resizes). Offsets: left = (S - new_w) // 2, top = (S - new_h) // 2 (floor). "
    "pixel_values[c][top + y][left + x] = (float32(float64(v) * 0.00392156862745098) - float32(mean[c])) "
    "/ float32(std[c]) in float32 for the resized pixel v = resized[y][x][c]; every other pixel (the border) "
    "is exactly 0.0, i.e. the model's mean colour after normalisation.")


def pad_formula_image(width: int, height: int):
    import numpy as np
    y, x, c = np.meshgrid(np.arange(height, dtype=np.int64), np.arange(width, dtype=np.int64),
                          np.arange(3, dtype=np.int64), indexing="ij")
    t = (3 * x + 5 * y + 85 * c + (x * y) // 16) % 512
    return np.where(t < 256, t, 511 - t).astype(np.uint8)


def pad_geometry(width: int, height: int, size: int):
    long_side = max(width, height)
    new_w = max(1, (2 * width * size + long_side) // (2 * long_side))
    new_h = max(1, (2 * height * size + long_side) // (2 * long_side))
    return new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def pad_preprocess(rgb, size: int):
    """Letterbox: the whole picture scaled into size x size (see PAD_RULE). Returns (pixel_values [3,S,S]
    float32, resized uint8 [new_h,new_w,3], (new_w, new_h, left, top))."""
    import numpy as np
    from PIL import Image
    h, w = rgb.shape[:2]
    new_w, new_h, left, top = pad_geometry(w, h, size)
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BICUBIC))
    out = np.zeros((3, size, size), np.float32)
    out[:, top:top + new_h, left:left + new_w] = normalise_rgb(resized).transpose(2, 0, 1)
    return out, resized, (new_w, new_h, left, top)


def make_pad_reference(out_root: Path, model: str = "oracle-spot"):
    import numpy as np
    from transformers import CLIPImageProcessor
    size = SPOT_SIZE
    # the part inside the picture must be CLIPImageProcessor's numbers: check on a square image, where
    # letterboxing and shortest-edge resize + centre crop are the same operation
    proc = CLIPImageProcessor.from_pretrained(str(out_root / model))
    for w in (64, 100):
        sq = pad_formula_image(w, w)
        ref = proc(images=sq, return_tensors="np")["pixel_values"][0]
        mine = pad_preprocess(sq, size)[0]
        if not np.array_equal(ref, mine):
            raise RuntimeError(f"pad: square {w}x{w} differs from CLIPImageProcessor by {np.abs(ref - mine).max()}")
    images = []
    for w, h in PAD_SIZES:
        rgb = pad_formula_image(w, h)
        pv, resized, (nw, nh, left, top) = pad_preprocess(rgb, size)
        images.append({
            "width": w, "height": h,
            "image_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
            "resized_width": nw, "resized_height": nh, "left": left, "top": top,
            "resized_sha256": hashlib.sha256(np.ascontiguousarray(resized).tobytes()).hexdigest(),
            "pixel_values": [f32_list(pv[c]) for c in range(3)],
        })
    write_json(out_root / "reference" / "pad.json", {
        "model": model,
        "size": size,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_formula": PAD_IMAGE_FORMULA,
        "rule": PAD_RULE,
        "hashes": "image_sha256: the formula image's bytes (HWC uint8); resized_sha256: the PIL-resized picture's "
                  "bytes (HWC uint8, resized_height x resized_width), before normalisation",
        "checked": "on square 64x64 and 100x100 formula images the rule gives CLIPImageProcessor's pixel_values "
                   "exactly (transformers 4.57.6, slow, PIL)",
        "images": images,
    })


# ----------------------------------------------------------------------------------------------
# check-fixtures
# ----------------------------------------------------------------------------------------------

def check_spot(root: Path, tk, check):
    """check(cond, msg) for oracle-spot.json and pad.json (ref venv)."""
    import json
    import numpy as np
    ref = json.loads((root / "reference" / "oracle-spot.json").read_text(encoding="utf-8"))
    vs = ort_session(root / "oracle-spot" / "onnx" / "vision_model.onnx")
    ts = ort_session(root / "oracle-spot" / "onnx" / "text_model.onnx")
    frames = [(f["name"], f["background"], [tuple(p) for p in f["patches"]]) for f in ref["frames"]]
    iemb = vs.run(None, {"pixel_values": frames_pixel_values(frames)})[0]
    d = float(np.abs(iemb - np.array(ref["image_embeds"], np.float32)).max())
    check(d < 1e-4, f"oracle-spot vision, {len(frames)} frames: max abs {d:.2g}")
    ids = [tk.encode(p["text"]).ids for p in ref["prompts"]]
    check(ids == [p["ids"] for p in ref["prompts"]], "oracle-spot prompt ids = tokenizer.json")
    pid, pmask = pad_batch(ids)
    temb = ts.run(None, {"input_ids": pid, "attention_mask": pmask})[0]
    d = float(np.abs(temb - np.array(ref["text_embeds"], np.float32)).max())
    check(d < 1e-4, f"oracle-spot text: max abs {d:.2g}")
    cos = l2n(iemb) @ l2n(temb).T
    r = [f[0] for f in frames].index("red fifth on grey")
    red = [p["text"] for p in ref["prompts"]].index("red")
    check(abs(cos[r, red] - 2 ** -0.5) < 2e-3 and float(np.abs(cos - np.array(ref["cosine"])).max()) < 1e-4,
          f"oracle-spot: red fifth on grey -> cosine with 'red' {cos[r, red]:.4f} "
          f"(oracle-clip {ref['oracle_clip_cosine'][r][red]:.4f})")

    pad = json.loads((root / "reference" / "pad.json").read_text(encoding="utf-8"))
    worst = 0.0
    for im in pad["images"]:
        rgb = pad_formula_image(im["width"], im["height"])
        ok_hash = hashlib.sha256(rgb.tobytes()).hexdigest() == im["image_sha256"]
        pv, resized, geo = pad_preprocess(rgb, pad["size"])
        ok_geo = list(geo) == [im["resized_width"], im["resized_height"], im["left"], im["top"]]
        ok_rs = hashlib.sha256(np.ascontiguousarray(resized).tobytes()).hexdigest() == im["resized_sha256"]
        worst = max(worst, float(np.abs(pv - np.array(im["pixel_values"], np.float32)).max()))
        check(ok_hash and ok_geo and ok_rs, f"pad {im['width']}x{im['height']}: image, geometry {geo}, resized bytes")
    check(worst < 1e-6, f"pad.json pixel_values recomputed with PIL: max abs {worst:.2g}")
