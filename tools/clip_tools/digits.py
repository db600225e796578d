"""The digits fixture (tests/fixtures/digits, `make-digits`): a small CLIP-style model that is really
trained, so that zero-shot is imperfect and thresholds matter.

Data: scikit-learn's 8x8 digits (`load_digits()`, shipped inside the wheel, 1797 images), rendered as
40x40 RGB pictures (random solid / gradient / smooth-noise backgrounds, the digit upscaled to 18..34 px
with a contrasting colour, random place and opacity, Gaussian pixel noise), preprocessed exactly as
CLIPImageProcessor does (shortest edge 32, bicubic, centre crop 32, rescale, CLIP mean/std). Per
digit, a fixed 55% of the dataset images train the model; the rest ("held-out pool") never does: the
committed example pictures and the held-out evaluation come only from it.

Model: vision = 3 conv layers (16/32/64 channels, BatchNorm folded at export, ReLU, max-pool) + mean
pool + linear -> 32; text = bag of words over the real CLIP vocabulary, tokens hashed to a table of P
rows (id mod P; P prime, every caption token distinct mod P), masked mean up to the first end token,
MLP -> 32. Trained CLIP-style (symmetric softmax loss between the batch's images and one caption per
class, temperature = the learnable logit scale) on captions such as "a photo of the digit seven".

Writes tests/fixtures/digits/ (model layout + examples/ + labels.toml + README.md) and
reference/digits.json, digits-examples.json, digits-probe.json, then MANIFEST.sha256.

Determinism: fixed seeds everywhere (numpy Generators seeded per picture, torch.manual_seed),
torch.use_deterministic_algorithms(True), torch.set_num_threads(1), BLAS limited to one thread for
scikit-learn. A second run rewrites every file bit-identically on the same machine (checked with
sha256 of every output). Bit-identity holds for the same CPU family only: PyTorch's CPU kernels (and
libm) may round differently on another CPU, which changes the trained weights in the last bits and from
there every file (the existing tiny fixtures' reference JSONs already differ in their last bits on an AMD
EPYC); check-fixtures compares with tolerances and passes anyway.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from .common import (CLIP_MEAN, CLIP_STD, EOT, FIXTURES, SOT, VOCAB_SIZE, f32, f32_list, l2n, log, ort_session,
                     pad_batch, sig2, softmax, write_json, write_manifest)
from .onnx_export import clip_preprocessor_json, torch_export, write_toml

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LABELS = ["three", "seven", "eight"]         # example folders with a label; "none" holds everything else
NONE = "none"
CLASSES = LABELS + [NONE]                    # probe class order
CANVAS = 40                                  # example / training pictures: CANVAS x CANVAS RGB
IMAGE_SIZE = 32                              # model input (shortest_edge = crop = 32)
EMBED_DIM = 32
TOKEN_DIM = 32
TEXT_HIDDEN = 64
WIDTH = 16                                   # conv channels 16 / 32 / 64
SEED = 20261201
MODEL_FRACTION = 0.55                        # of each digit's dataset images train the model
N_TRAIN_PICTURES = 12000
STEPS = 700
BATCH = 128
LR = 3e-3
WARMUP = 50
WEIGHT_DECAY = 1e-4
N_PER_LABEL = 30                             # example pictures per label folder and split
NONE_PER_DIGIT = 3                           # none/: 3 of each other digit + blank backgrounds
BLANK_FRACTION = 1 / 11                      # of the training pictures have no digit

# Training captions; one is drawn per class and step. {w} = word, {n} = numeral.
CAPTION_TEMPLATES = ["a photo of the digit {w}", "a photo of the number {w}", "the digit {n}",
                     "a picture of a {w}", "a handwritten {w}", "the number {n}"]
BLANK_CAPTIONS = ["a blank background", "a photo of an empty background", "a plain picture with no digit",
                  "nothing"]
ZEROSHOT_TEMPLATE = "a photo of the digit {}"

# The sample label set: hand-set (not calibrated) thresholds; README.md says how they fare.
LABELS_TOML = """# Sample label set for the digits fixture model (tests/fixtures/digits).
# Thresholds are set by hand, NOT calibrated: README.md measures how they fare on examples/heldout.
# Format: see the labels module of clipfilter (src/labels/mod.rs).

[defaults]
templates = ["a photo of the digit {}", "a picture of a {}", "a handwritten {}"]
min_probability = 0.5

[[label]]
name = "three"

[[label]]
name = "seven"
min_probability = 0.4

[[label]]
name = "eight"
min_cosine = 0.6

# The other digits and empty pictures compete in the softmax and never fire.
[[label]]
name = "zero"
negative = true

[[label]]
name = "one"
negative = true

[[label]]
name = "two"
negative = true

[[label]]
name = "four"
negative = true

[[label]]
name = "five"
negative = true

[[label]]
name = "six"
negative = true

[[label]]
name = "nine"
negative = true

[[label]]
name = "blank"
prompts = ["a blank background", "a plain picture with no digit"]
templates = "none"
negative = true
"""


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def render(rng, digit):
    """One CANVAS x CANVAS uint8 RGB picture; digit = 8x8 array (0..16) or None (background only)."""
    import numpy as np
    from PIL import Image
    S = CANVAS
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    if kind == 0:                                    # solid colour
        bg = np.broadcast_to(rng.uniform(0, 255, 3), (S, S, 3)).copy()
    elif kind == 1:                                  # linear gradient between two colours
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        th = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(th) + yy * np.sin(th)
        t = (t - t.min()) / (t.max() - t.min())
        bg = a + (b - a) * t[..., None]
    else:                                            # smooth noise texture: a random g x g grid, bicubic
        g = int(rng.integers(2, 7))
        grid = rng.uniform(0, 255, (g, g, 3)).astype(np.uint8)
        bg = np.asarray(Image.fromarray(grid).resize((S, S), Image.BICUBIC), np.float64)
    img = bg
    if digit is not None:
        s = int(rng.integers(18, 35))
        alpha = np.asarray(Image.fromarray((np.asarray(digit, np.float64) / 16).astype(np.float32), "F")
                           .resize((s, s), Image.BICUBIC), np.float64).clip(0, 1)
        x0, y0 = int(rng.integers(0, S - s + 1)), int(rng.integers(0, S - s + 1))
        lum = np.array([0.299, 0.587, 0.114])
        bg_lum = float(bg[y0:y0 + s, x0:x0 + s].reshape(-1, 3).mean(0) @ lum)
        for _ in range(20):                          # a colour that contrasts with the background (or the last try)
            col = rng.uniform(0, 255, 3)
            if abs(float(col @ lum) - bg_lum) >= 70:
                break
        opacity = rng.uniform(0.75, 1.0)
        a = np.zeros((S, S))
        a[y0:y0 + s, x0:x0 + s] = alpha * opacity
        img = img * (1 - a[..., None]) + col * a[..., None]
    sigma = rng.uniform(0, 10)
    img = img + rng.normal(0, 1, img.shape) * sigma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def preprocess(u8):
    """CLIPImageProcessor's computation for a CANVAS-square picture (checked equal on every example):
    PIL bicubic resize to 32x32, centre crop (no-op), float64 * (1/255) -> float32, (x - mean) / std in
    float32. Returns [3,32,32] float32."""
    import numpy as np
    from PIL import Image
    r = np.asarray(Image.fromarray(u8).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
    x = (r.astype(np.float64) * 0.00392156862745098).astype(np.float32)
    return ((x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)).transpose(2, 0, 1)


def picture_rng(*key):
    import numpy as np
    return np.random.default_rng([SEED, *key])


def dataset_pools():
    """(images [1797,8,8], target [1797], model pool {digit: indices}, held-out pool {digit: indices})."""
    import numpy as np
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = picture_rng(0)
    model, held = {}, {}
    for c in range(10):
        ii = rng.permutation(np.flatnonzero(d.target == c))
        n = int(len(ii) * MODEL_FRACTION)
        model[c], held[c] = ii[:n], ii[n:]
    return d.images, d.target, model, held


def example_plan(held):
    """[(split, label, file name, digit or None, dataset index or None, rng key)] for examples/.
    Positive labels: held-out pool images [0, 30) -> train, [30, 60) -> heldout. none/: 3 images of each
    other digit per split ([0,3) train, [3,6) heldout) + blank backgrounds up to 30."""
    plan = []
    others = [c for c in range(10) if DIGIT_WORDS[c] not in LABELS]
    for si, split in enumerate(("train", "heldout")):
        for li, label in enumerate(LABELS):
            c = DIGIT_WORDS.index(label)
            for k in range(N_PER_LABEL):
                idx = int(held[c][si * N_PER_LABEL + k])
                plan.append((split, label, f"{k:03d}.png", c, idx, (3, si, li, k)))
        k = 0
        for c in others:
            for j in range(NONE_PER_DIGIT):
                idx = int(held[c][si * NONE_PER_DIGIT + j])
                plan.append((split, NONE, f"{k:03d}-{DIGIT_WORDS[c]}.png", c, idx, (3, si, 9, k)))
                k += 1
        while k < N_PER_LABEL:
            plan.append((split, NONE, f"{k:03d}-blank.png", None, None, (3, si, 9, k)))
            k += 1
    return plan


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------

def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def choose_token_period(token_ids, limit: int = 509) -> int:
    """Largest prime P <= limit with every given token id distinct mod P."""
    ids = sorted(set(token_ids))
    for p in range(limit, 1, -1):
        if is_prime(p) and len({i % p for i in ids}) == len(ids):
            return p
    raise RuntimeError("no token period found")


def make_modules(period: int):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Vision(nn.Module):
        def __init__(self):
            super().__init__()
            w = WIDTH
            self.c1, self.b1 = nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w)
            self.c2, self.b2 = nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w)
            self.c3, self.b3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w)
            self.proj = nn.Linear(4 * w, EMBED_DIM)

        def forward(self, pixel_values):
            x = F.max_pool2d(F.relu(self.b1(self.c1(pixel_values))), 2)
            x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
            x = F.relu(self.b3(self.c3(x)))
            return self.proj(x.mean(dim=(2, 3)))

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(period, TOKEN_DIM) * 0.5)
            self.fc1 = nn.Linear(TOKEN_DIM, TEXT_HIDDEN)
            self.fc2 = nn.Linear(TEXT_HIDDEN, EMBED_DIM)

        def forward(self, input_ids, attention_mask):
            # tokens up to and including the first end token (so padding with 49407 or 0, with or without
            # a mask, gives the same result), times the attention mask
            is_end = (input_ids == EOT).to(torch.int64)
            keep = ((torch.cumsum(is_end, 1) - is_end) == 0).to(torch.float32) * attention_mask.to(torch.float32)
            e = self.table[torch.remainder(input_ids, period)] * keep.unsqueeze(-1)
            e = e.sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
            return self.fc2(F.gelu(self.fc1(e)))

    return Vision, Text


def captions():
    """[[captions of class k]] for k = 0..9 (digits) and 10 (blank)."""
    return [[t.format(w=DIGIT_WORDS[c], n=c) for t in CAPTION_TEMPLATES] for c in range(10)] + [list(BLANK_CAPTIONS)]


def train(tok, images, target, model_pool, period):
    import numpy as np
    import torch
    import torch.nn.functional as F
    t0 = time.time()
    pick = picture_rng(1)
    pool = np.concatenate([model_pool[c] for c in range(10)])
    xs, ys = [], []
    for i in range(N_TRAIN_PICTURES):
        if pick.random() < BLANK_FRACTION:
            xs.append(preprocess(render(picture_rng(1, i), None)))
            ys.append(10)
        else:
            idx = int(pool[pick.integers(len(pool))])
            xs.append(preprocess(render(picture_rng(1, i), images[idx])))
            ys.append(int(target[idx]))
    X = torch.from_numpy(np.stack(xs))
    Y = torch.tensor(ys)
    log(f"  digits: rendered {N_TRAIN_PICTURES} training pictures in {time.time() - t0:.0f} s")

    caps = captions()
    flat = [c for cs in caps for c in cs]
    ncap = torch.tensor([len(cs) for cs in caps])
    first = torch.cumsum(ncap, 0) - ncap
    ids, mask = (torch.from_numpy(a) for a in pad_batch([tok.ids_hf_fast(c) for c in flat]))

    torch.manual_seed(SEED)
    Vision, Text = make_modules(period)
    vision, text = Vision(), Text()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(vision.parameters()) + list(text.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    g = torch.Generator().manual_seed(SEED)
    n_cls = len(caps)
    t0 = time.time()
    losses = []
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        bi = torch.randint(0, len(X), (BATCH,), generator=g)
        x, y = X[bi], Y[bi]
        ci = first + (torch.rand(n_cls, generator=g) * ncap).long()          # one caption per class
        ie = F.normalize(vision(x), dim=-1)
        te = F.normalize(text(ids[ci], mask[ci]), dim=-1)
        logits = logit_scale.exp().clamp(max=100.0) * ie @ te.T               # [B, classes]
        loss_i = F.cross_entropy(logits, y)
        tgt = (torch.arange(n_cls)[:, None] == y[None, :]).float()           # text -> its class's images
        has = tgt.sum(1) > 0
        loss_t = -(tgt[has] / tgt[has].sum(1, keepdim=True) * F.log_softmax(logits.T[has], 1)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            log(f"  digits: step {step + 1}/{STEPS} loss {np.mean(losses[-100:]):.3f} "
                f"logit_scale {float(logit_scale.detach().exp()):.2f} ({time.time() - t0:.0f} s)")
    vision.eval()
    text.eval()
    for p in params:
        p.requires_grad_(False)
    scale = f32(min(100.0, math.exp(float(logit_scale))))   # the float32 value, as clipfilter.toml holds it
    info = {"train_seconds": time.time() - t0, "final_loss": float(np.mean(losses[-50:]))}
    return vision, text, scale, info


def export(vision, text, folder: Path):
    import torch
    torch_export(vision, (torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE),), folder / "onnx" / "vision_model.onnx",
                 ["pixel_values"], ["image_embeds"],
                 {"pixel_values": {0: "batch_size"}, "image_embeds": {0: "batch_size"}})
    ids = torch.full((2, 9), EOT, dtype=torch.long)
    ids[:, 0] = SOT
    ids[0, 1:4] = torch.tensor([320, 1125, 539])
    ids[1, 1:2] = torch.tensor([2368])
    mask = (torch.arange(9)[None, :] < torch.tensor([[5], [3]])).long()
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "sequence_length"}, "text_embeds": {0: "batch_size"}}
    torch_export(text, (ids, mask), folder / "onnx" / "text_model.onnx", ["input_ids", "attention_mask"],
                 ["text_embeds"], axes)


def config_json(period: int, scale: float):
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": EMBED_DIM,
        "logit_scale_init_value": 2.6592,
        "clipfilter_digits": {
            "note": ("small CLIP-style model trained on scikit-learn's digits by tools/clip-tools make-digits; "
                     "not a transformers CLIPModel (there are no PyTorch weights here), see README.md"),
            "vision": f"conv {WIDTH}/{2 * WIDTH}/{4 * WIDTH} + BatchNorm (folded) + ReLU + max-pool, mean pool, "
                      f"linear -> {EMBED_DIM}",
            "text": f"bag of words: table[{period}, {TOKEN_DIM}] indexed by token id mod {period}, masked mean up "
                    f"to the first end token, linear {TOKEN_DIM}->{TEXT_HIDDEN}, GELU, linear -> {EMBED_DIM}",
            "token_period": period,
            "trained_logit_scale": scale,
        },
        "text_config": {"model_type": "clip_text_model", "vocab_size": VOCAB_SIZE, "max_position_embeddings": 77,
                        "bos_token_id": SOT, "eos_token_id": EOT, "pad_token_id": EOT, "projection_dim": EMBED_DIM},
        "vision_config": {"model_type": "clip_vision_model", "image_size": IMAGE_SIZE, "num_channels": 3,
                          "projection_dim": EMBED_DIM},
    }


# ----------------------------------------------------------------------------------------------
# label set and scoring (numpy, shared with check-fixtures)
# ----------------------------------------------------------------------------------------------

def label_set(text: str):
    """The label set's labels as [{"name", "texts", "negative", "threshold": ("probability"|"cosine", v) or
    None}], resolving defaults like clipfilter's labels module (only the features labels.toml uses)."""
    import tomllib
    raw = tomllib.loads(text)
    d = raw.get("defaults", {})

    def texts(prompts, templates):
        if templates == "none":
            return list(prompts)
        if not isinstance(templates, list):
            raise RuntimeError(f"labels.toml: template set {templates!r} is not handled here")
        return [t.replace("{}", p) for p in prompts for t in templates]

    def threshold(x):
        if "min_probability" in x:
            return ("probability", x["min_probability"])
        if "min_cosine" in x:
            return ("cosine", x["min_cosine"])
        return None

    out = []
    for lab in raw["label"]:
        neg = lab.get("negative", False)
        out.append({"name": lab["name"], "negative": neg,
                    "texts": texts(lab.get("prompts", [lab["name"]]), lab.get("templates", d.get("templates", "none"))),
                    "threshold": None if neg else (threshold(lab) or threshold(d))})
    return out


def class_rows(text_session, tokenizer, labels):
    """One ensembled, normalised row per label (normalise each text embedding, mean, renormalise), as
    clipfilter does; tokenizer(text) -> ids."""
    import numpy as np
    rows, texts = [], []
    for lab in labels:
        ids, mask = pad_batch([tokenizer(t) for t in lab["texts"]])
        e = text_session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        rows.append(l2n(l2n(e).mean(0)))
        texts.append(e)
    return np.stack(rows), texts


def score(image_embeds, rows, scale):
    """(cosine [N,L], probability [N,L]) like clipfilter: normalised image . row, softmax(scale * cosine)."""
    cos = l2n(image_embeds) @ rows.T
    return cos, softmax(scale * cos)


def auc(pos, neg):
    import numpy as np
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------------------------
# make-digits
# ----------------------------------------------------------------------------------------------

def cmd_make_digits(args):
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits
    from .tokenizer import Tokenizers
    import tempfile
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out_root = Path(args.out).resolve()
    folder = out_root / "digits"
    t_start = time.time()
    log(f"make-digits -> {folder}")
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        tok = Tokenizers(Path(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "onnx").mkdir(parents=True)
        images, target, model_pool, held = dataset_pools()
        labels = label_set(LABELS_TOML)
        all_texts = [c for cs in captions() for c in cs] + [t for lab in labels for t in lab["texts"]]
        all_texts += [ZEROSHOT_TEMPLATE.format(w) for w in DIGIT_WORDS]
        period = choose_token_period([i for t in all_texts for i in tok.ids_hf_fast(t)])
        vision, text, scale, info = train(tok, images, target, model_pool, period)
        info["model_pool_images"] = int(sum(len(v) for v in model_pool.values()))
        export(vision, text, folder)
        write_json(folder / "config.json", config_json(period, scale), compact_numbers=False)
        write_json(folder / "preprocessor_config.json", clip_preprocessor_json(IMAGE_SIZE, IMAGE_SIZE, False),
                   compact_numbers=False)
        tok.copy_files_to(folder)
        write_toml(folder, scale, "The trained logit scale of the digits model (make-digits).")
        (folder / "labels.toml").write_text(LABELS_TOML, encoding="utf-8")
        results = write_examples_and_references(folder, out_root, tok, vision, text, scale, period, images,
                                                target, held, labels, info)
        write_readme(folder, results)
        write_manifest(out_root)
    log(f"make-digits: done in {time.time() - t_start:.0f} s; zero-shot 10-way {results['zs10']['accuracy']:.3f}, "
        f"label set on heldout {results['ls_heldout']['accuracy']:.3f}, probe {results['probe']['heldout_accuracy']:.3f} "
        f"(C = {results['probe']['C']:g})")


def write_examples_and_references(folder, out_root, tok, vision, text, scale, period, images, target, held,
                                  labels, info):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor
    vs = ort_session(folder / "onnx" / "vision_model.onnx")
    ts = ort_session(folder / "onnx" / "text_model.onnx")

    # ---- examples: PNG files, embeddings through CLIPImageProcessor + onnxruntime
    proc = CLIPImageProcessor.from_pretrained(str(folder))
    plan = example_plan(held)
    examples, pv = [], []
    for split, label, name, digit, idx, key in plan:
        u8 = render(picture_rng(*key), None if idx is None else images[idx])
        rel = Path("examples") / split / label / name
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8).save(folder / rel, format="PNG", compress_level=9)
        with Image.open(folder / rel) as im:
            x = proc(images=im, return_tensors="np")["pixel_values"][0]
        if not np.array_equal(x, preprocess(u8)):
            raise RuntimeError(f"digits: preprocess() differs from CLIPImageProcessor on {rel}")
        pv.append(x)
        examples.append({"path": f"digits/{rel.as_posix()}", "split": split, "label": label,
                         "digit": None if digit is None else DIGIT_WORDS[digit], "digits_index": idx})
    pv = np.stack(pv)
    emb = vs.run(None, {"pixel_values": pv})[0]
    with torch.inference_mode():
        diff_v = float(np.abs(vision(torch.from_numpy(pv)).numpy() - emb).max())
    for e, v in zip(examples, emb):
        e["embeds"] = f32_list(v)
    write_json(out_root / "reference" / "digits-examples.json", {
        "model": "digits",
        "description": ("every picture under tests/fixtures/digits/examples: path (relative to tests/fixtures), "
                        "split, label folder, the digit drawn (null: blank background) and its index in "
                        "sklearn.datasets.load_digits(); embeds = image_embeds of onnx/vision_model.onnx (float32, "
                        "not normalised) for the PNG preprocessed by transformers 4.57.6 CLIPImageProcessor with "
                        "this folder's preprocessor_config.json (40x40 -> bicubic 32x32, centre crop 32, rescale, "
                        "CLIP mean/std); onnxruntime CPU"),
        "examples": examples,
    })
    emb64 = np.array([e["embeds"] for e in examples], np.float64)      # what the JSON holds
    split_of = np.array([e["split"] for e in examples])
    label_of = np.array([e["label"] for e in examples])

    # ---- texts
    tokenizer = tok.ids_hf_fast
    rows, _ = class_rows(ts, tokenizer, labels)
    ref_texts = [ZEROSHOT_TEMPLATE.format("seven"), "the number 7", "a handwritten three", "a blank background",
                 "a photo of a dog", "", "A Photo Of The Digit Eight."]
    ids = [tokenizer(t) for t in ref_texts]
    a, m = pad_batch(ids)
    temb = ts.run(None, {"input_ids": a, "attention_mask": m})[0]
    with torch.inference_mode():
        diff_t = float(np.abs(text(torch.from_numpy(a), torch.from_numpy(m)).numpy() - temb).max())
    # padding with 0 / an all-ones mask give the same result (everything after the first end token is ignored)
    a0, _ = pad_batch(ids, pad=0)
    same_pad = float(np.abs(ts.run(None, {"input_ids": a0, "attention_mask": np.ones_like(m)})[0] - temb).max())
    if diff_v > 1e-4 or diff_t > 1e-4 or same_pad > 1e-6:
        raise RuntimeError(f"digits: ONNX vs torch vision {diff_v}, text {diff_t}; padding {same_pad}")

    # ---- zero-shot, 10 digits, on the held-out pool (pictures rendered for this, not stored)
    zs_prompts = [ZEROSHOT_TEMPLATE.format(w) for w in DIGIT_WORDS]
    a, m = pad_batch([tokenizer(t) for t in zs_prompts])
    zrows = l2n(ts.run(None, {"input_ids": a, "attention_mask": m})[0])
    pool_x, pool_y = [], []
    for c in range(10):
        for idx in held[c]:
            pool_x.append(preprocess(render(picture_rng(2, int(idx)), images[idx])))
            pool_y.append(c)
    pool_y = np.array(pool_y)
    pool_e = np.concatenate([vs.run(None, {"pixel_values": np.stack(pool_x[i:i + 256])})[0]
                             for i in range(0, len(pool_x), 256)])
    pred = (l2n(pool_e) @ zrows.T).argmax(1)
    zs10 = {"prompts": zs_prompts, "n": int(len(pool_y)), "correct": int((pred == pool_y).sum()),
            "accuracy": round(float((pred == pool_y).mean()), 4),
            "per_digit": {DIGIT_WORDS[c]: round(float((pred[pool_y == c] == c).mean()), 4) for c in range(10)},
            "description": ("every held-out-pool dataset image (never used in training), rendered once with "
                            "picture_rng(2, index); argmax over the 10 prompts; chance = 0.1")}

    # ---- the label set on the examples
    names = [lab["name"] for lab in labels]
    cos, prob = score(emb64, rows, scale)
    ls = {}
    scores = {}
    for split in ("train", "heldout"):
        sel = split_of == split
        top = np.array([names[i] for i in prob[sel].argmax(1)])
        top = np.where(np.isin(top, LABELS), top, NONE)
        truth = label_of[sel]
        confusion = {t: {p: int(((truth == t) & (top == p)).sum()) for p in CLASSES} for t in CLASSES}
        ls[split] = {"n": int(sel.sum()), "correct": int((top == truth).sum()),
                     "accuracy": round(float((top == truth).mean()), 4), "confusion": confusion}
        per = {}
        for lab in labels:
            if lab["negative"]:
                continue
            k = names.index(lab["name"])
            pos, neg = sel & (label_of == lab["name"]), sel & (label_of != lab["name"])
            entry = {}
            for kind, val in (("cosine", cos[:, k]), ("probability", prob[:, k])):
                p, n = val[pos], val[neg]
                entry[kind] = {
                    "positives": {"n": int(len(p)), "mean": round(float(p.mean()), 4), "std": round(float(p.std()), 4),
                                  "min": round(float(p.min()), 4), "max": round(float(p.max()), 4)},
                    "negatives": {"n": int(len(n)), "mean": round(float(n.mean()), 4), "std": round(float(n.std()), 4),
                                  "min": round(float(n.min()), 4), "max": round(float(n.max()), 4)},
                    "auc": round(auc(p, n), 4),
                    "negatives_at_or_above_lowest_positive": int((n >= p.min()).sum()),
                    "positives_at_or_below_highest_negative": int((p <= n.max()).sum()),
                }
            kind, thr = lab["threshold"]
            val = cos[:, k] if kind == "cosine" else prob[:, k]
            fired = val >= thr
            entry["hand_threshold"] = {"kind": kind, "value": thr, "true_positives": int((fired & pos).sum()),
                                       "false_positives": int((fired & neg).sum()),
                                       "false_negatives": int((~fired & pos).sum())}
            per[lab["name"]] = entry
        scores[split] = per

    # ---- linear probe
    probe = fit_probe(emb64, split_of, label_of, ls["heldout"]["accuracy"])
    probe_json = probe.pop("json")
    probe_json["train"]["paths"] = [e["path"] for e in examples if e["split"] == "train"]
    probe_json["heldout"]["paths"] = [e["path"] for e in examples if e["split"] == "heldout"]
    write_json(out_root / "reference" / "digits-probe.json", probe_json)

    # ---- digits.json
    first = {}
    for i, e in enumerate(examples):
        first.setdefault((e["split"], e["label"]), i)
    ref = {
        "model": "digits",
        "logit_scale": scale,
        "image_size": IMAGE_SIZE,
        "canvas": CANVAS,
        "embed_dim": EMBED_DIM,
        "token_period": period,
        "onnx_vs_torch_max_abs": {"vision": sig2(diff_v), "text": sig2(diff_t)},
        "text": [{"text": t, "ids": i, "embeds": f32_list(e)} for t, i, e in zip(ref_texts, ids, temb)],
        "image": [{"path": examples[i]["path"], "embeds": examples[i]["embeds"]} for i in first.values()],
        "label_set": {"file": "digits/labels.toml", "labels": [
            {"name": lab["name"], "negative": lab["negative"], "texts": lab["texts"],
             "threshold": None if lab["threshold"] is None else {lab["threshold"][0]: lab["threshold"][1]},
             "class_embedding": f32_list(r)} for lab, r in zip(labels, rows)]},
        "zeroshot": {
            "pool_10way": zs10,
            "label_set_train": ls["train"],
            "label_set_heldout": ls["heldout"],
            "label_set_description": ("examples scored with labels.toml as clipfilter does (texts ensembled per "
                                      "label, cosine with the normalised image embedding, softmax of logit_scale x "
                                      "cosine over all 11 labels); top label = argmax probability, a negative "
                                      "label counts as 'none'"),
        },
        "scores": scores,
        "training": {"pictures": N_TRAIN_PICTURES, "steps": STEPS, "batch": BATCH, "lr": LR,
                     "final_loss": round(info["final_loss"], 3), "model_pool_images": info["model_pool_images"],
                     "held_out_pool_images": int(sum(len(v) for v in held.values()))},
    }
    write_json(out_root / "reference" / "digits.json", ref)
    return {"zs10": zs10, "ls_train": ls["train"], "ls_heldout": ls["heldout"], "scores": scores, "probe": probe,
            "scale": scale, "period": period, "info": info, "diff": (diff_v, diff_t), "n_examples": len(examples),
            "sizes": {p.name: p.stat().st_size for p in (folder / "onnx").iterdir()}}


def fit_probe(emb64, split_of, label_of, zeroshot_heldout_accuracy):
    """Multinomial L2 logistic regression on the normalised train-split embeddings; C by 5-fold CV."""
    import numpy as np
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    X = l2n(emb64)
    y = np.array([CLASSES.index(l) for l in label_of])
    tr, he = split_of == "train", split_of == "heldout"
    Xtr, ytr, Xhe, yhe = X[tr], y[tr], X[he], y[he]
    grid = [float(f"{c:.6g}") for c in 10.0 ** np.linspace(-3, 3, 13)]
    folds = np.zeros(len(ytr), np.int64)
    skf = StratifiedKFold(n_splits=5, shuffle=False)
    for f, (_, te) in enumerate(skf.split(Xtr, ytr)):
        folds[te] = f

    def fit(C, Xf, yf):
        return LogisticRegression(C=C, tol=1e-10, max_iter=100000).fit(Xf, yf)

    cv_loss, cv_acc = [], []
    for C in grid:
        ll, acc = [], []
        for f in range(5):
            m = fit(C, Xtr[folds != f], ytr[folds != f])
            p = m.predict_proba(Xtr[folds == f])
            ll.append(float(-np.log(p[np.arange(len(p)), ytr[folds == f]]).mean()))
            acc.append(float((p.argmax(1) == ytr[folds == f]).mean()))
        cv_loss.append(float(np.mean(ll)))
        cv_acc.append(float(np.mean(acc)))
    best = int(np.argmin(cv_loss))                     # first (smallest C) on ties
    C = grid[best]
    model = fit(C, Xtr, ytr)
    W, b = model.coef_, model.intercept_
    # gradient of the objective C * sum(-log p) + 0.5 |W|^2 at the solution
    P = softmax(Xtr @ W.T + b)
    Yoh = np.eye(len(CLASSES))[ytr]
    gW = C * (P - Yoh).T @ Xtr + W
    gb = C * (P - Yoh).sum(0)
    grad = float(max(np.abs(gW).max(), np.abs(gb).max()))
    phe = model.predict_proba(Xhe)
    if float(np.abs(phe - softmax(Xhe @ W.T + b)).max()) > 1e-9:
        raise RuntimeError("probe: predict_proba is not softmax(X W^T + b)")
    acc_tr = float((model.predict(Xtr) == ytr).mean())
    acc_he = float((phe.argmax(1) == yhe).mean())
    js = {
        "sklearn": sklearn.__version__,
        "classes": CLASSES,
        "features": ("the float32 `embeds` of reference/digits-examples.json, converted to float64 and L2-normalised "
                     "(32 values); class order as in `classes`"),
        "objective": ("multinomial logistic regression: minimise C * sum_i -log softmax(W x_i + b)[y_i] + 0.5 * "
                      "||W||_F^2 over W [4, 32] and b [4] (b not penalised). sklearn LogisticRegression(C=C, "
                      "solver='lbfgs' (default), l1_ratio=0 (L2), fit_intercept=True, tol=1e-10, "
                      "max_iter=100000). b is defined up to a constant added to all classes; sklearn's sums to ~0: "
                      "compare probabilities, W, and b minus its mean"),
        "cv": {"C_grid": grid, "splitter": "sklearn StratifiedKFold(n_splits=5, shuffle=False) on the train split "
                                           "in the order of `train.paths`; `folds[i]` = the fold that tests example i",
               "folds": folds.tolist(),
               "mean_log_loss": [round(v, 6) for v in cv_loss], "mean_accuracy": [round(v, 4) for v in cv_acc],
               "criterion": "lowest mean held-out-fold log loss (the smallest C on a tie)"},
        "C": C,
        "coef": [[float(v) for v in row] for row in W],
        "intercept": [float(v) for v in b],
        "n_iter": int(model.n_iter_[0]),
        "gradient_max_abs": sig2(grad),
        "train": {"accuracy": round(acc_tr, 4)},
        "heldout": {"probs": [[float(v) for v in row] for row in phe], "pred": [CLASSES[i] for i in phe.argmax(1)],
                    "accuracy": round(acc_he, 4)},
        "zeroshot_heldout_accuracy": zeroshot_heldout_accuracy,
    }
    return {"C": C, "train_accuracy": acc_tr, "heldout_accuracy": acc_he, "cv_loss": cv_loss, "cv_acc": cv_acc,
            "grid": grid, "grad": grad, "n_iter": int(model.n_iter_[0]), "json": js}


README = """# digits — a small CLIP-style model that is really trained (zero-shot is imperfect)

Generated by `tools/clip-tools make-digits` (`tools/clip_tools/digits.py`; about 3 minutes on the
2-core development machine, 1.5 of them training). Unlike the oracles, its scores overlap between positives and negatives, so
thresholds, calibration and linear probes have something to do.

Model layout as every fixture (`config.json`, `preprocessor_config.json`: shortest_edge 32, crop 32,
bicubic, CLIP mean/std; the real CLIP `tokenizer.json` etc.; `onnx/vision_model.onnx` `pixel_values`
[N,3,32,32] -> `image_embeds` [N,{D}]; `onnx/text_model.onnx` `input_ids` + `attention_mask` [N,L] (dynamic
L) -> `text_embeds` [N,{D}]; `clipfilter.toml`: the trained `logit_scale = {scale}`). ONNX sizes: vision
{vsize} KB, text {tsize} KB.

- **Data**: scikit-learn's 8x8 digits (`sklearn.datasets.load_digits()`, 1797 images), drawn on 40x40
  RGB pictures: a solid, gradient or smooth-noise background, the digit upscaled (bicubic) to 18..34 px in
  a colour that contrasts with the background, opacity 0.75..1, random place, Gaussian noise sigma
  0..10. Per digit a fixed 55% of the dataset images train the model (the "model pool"); the other 45%
  (the "held-out pool") never do, and every example picture and evaluation below comes from them.
- **Vision tower**: 3x (conv 3x3 + BatchNorm + ReLU), channels {w}/{w2}/{w4}, max-pool after the first two,
  global mean pool, linear -> {D}.
- **Text tower**: bag of words over the real CLIP vocabulary: token id mod {period} indexes a
  [{period}, {td}] table (P prime; every token of the training captions and of labels.toml is distinct mod
  P; other words share rows), mean over the tokens up to and including the first end token (times the
  attention mask; padding with 49407 or 0 and an all-ones mask give the same result), linear {td} -> {th},
  GELU, linear -> {D}. Word order does not matter.
- **Training**: {pictures} pictures ({blank:.0%} blank backgrounds, the rest from the model pool), {steps}
  AdamW steps of batch {batch} (lr {lr} with warm-up and cosine decay), CLIP's symmetric softmax loss between
  the batch's images and one caption per class (10 digits + blank), temperature = the learnable logit scale
  (start 1/0.07, trained to {scale}). Captions: {captions}; blank: {blank_caps}.
  Final loss {loss:.3f}. ONNX vs PyTorch: vision {dv:.2g}, text {dt:.2g} max abs.

## Zero-shot accuracy

- 10 digits, prompt "a photo of the digit {{word}}", on all {n10} held-out-pool images (rendered for this,
  not stored): **{acc10:.1%}** (chance 10%). Per digit: {per_digit}.
- `labels.toml` (three, seven, eight + 8 negatives: the other digits and "blank") on the examples, top label
  (a negative counts as none): train {lstr:.1%}, **heldout {lshe:.1%}** ({lshe_c}/{lshe_n}).
  Heldout confusion (rows = folder, columns = top label): {confusion}.

## Scores on examples/heldout (positives = the label's folder, negatives = every other folder)

{score_table}

The hand-set thresholds in `labels.toml` (three: probability >= 0.5 via the default; seven: probability
>= 0.4; eight: cosine >= 0.6) on heldout: {hand}.

## Linear probe (scikit-learn {sk})

Multinomial logistic regression (L2, lbfgs) on the L2-normalised image embeddings of examples/train (4
classes: three, seven, eight, none), C by 5-fold stratified cross-validation (lowest mean log loss) over
10^-3 .. 10^3 in half decades: **C = {C:g}** (CV accuracy there {cvacc:.1%}). Train accuracy {ptr:.1%},
**heldout accuracy {phe:.1%}** vs zero-shot (label set) {lshe:.1%}. Reference:
`tests/fixtures/reference/digits-probe.json` (coefficients, intercepts, heldout probabilities, the CV table
and fold assignment; gradient max abs at the solution {grad:.2g}).

## Files

- `examples/{{train,heldout}}/{{three,seven,eight,none}}/*.png`: {nex} pictures (40x40 RGB, rendered exactly like
  the training pictures, from held-out-pool dataset images only): 30 per folder and split; `none/` has 3 of
  each other digit (`NNN-<digit>.png`) and 9 blank backgrounds (`NNN-blank.png`). train and heldout use
  different dataset images (disjoint); "train" is for calibration / probes, the model never saw either.
- `labels.toml`: the sample label set (hand-set thresholds, custom templates, negatives).
- `tests/fixtures/reference/digits.json`: text embeddings of a few prompts, embeddings of one example per
  folder, the label set's class embeddings, zero-shot results, the score statistics above.
- `tests/fixtures/reference/digits-examples.json`: the image embedding of every example (onnxruntime, PNG
  -> CLIPImageProcessor -> vision_model.onnx), for the calibration tests.
- `tests/fixtures/reference/digits-probe.json`: the probe above.

Regeneration (`tools/clip-tools make-digits`) is bit-identical on the same machine / CPU family (fixed
seeds, one thread, deterministic torch); another CPU may round differently in the last bits and so
train slightly different weights: then every file changes, but the figures stay close.
"""


def write_readme(folder: Path, r):
    def stat(e):
        p, n = e["positives"], e["negatives"]
        return (f"pos {p['mean']:.3f} ± {p['std']:.3f} [{p['min']:.3f}, {p['max']:.3f}], "
                f"neg {n['mean']:.3f} ± {n['std']:.3f} [{n['min']:.3f}, {n['max']:.3f}], AUC {e['auc']:.3f}, "
                f"{e['negatives_at_or_above_lowest_positive']} neg ≥ lowest pos, "
                f"{e['positives_at_or_below_highest_negative']} pos ≤ highest neg")
    lines = ["| label | cosine | probability (softmax over the 11 labels) |", "|---|---|---|"]
    for name, e in r["scores"]["heldout"].items():
        lines.append(f"| {name} | {stat(e['cosine'])} | {stat(e['probability'])} |")
    hand = "; ".join(f"{n}: {e['hand_threshold']['true_positives']} TP, {e['hand_threshold']['false_positives']} FP, "
                     f"{e['hand_threshold']['false_negatives']} FN" for n, e in r["scores"]["heldout"].items())
    conf = r["ls_heldout"]["confusion"]
    confusion = "; ".join(f"{t}: " + " ".join(f"{p} {conf[t][p]}" for p in CLASSES) for t in CLASSES)
    p = r["probe"]
    best = p["grid"].index(p["C"])
    import sklearn
    text = README.format(
        D=EMBED_DIM, scale=r["scale"], vsize=round(r["sizes"]["vision_model.onnx"] / 1024),
        tsize=round(r["sizes"]["text_model.onnx"] / 1024), w=WIDTH, w2=2 * WIDTH, w4=4 * WIDTH, period=r["period"],
        td=TOKEN_DIM, th=TEXT_HIDDEN, pictures=N_TRAIN_PICTURES, blank=BLANK_FRACTION, steps=STEPS, batch=BATCH,
        lr=LR, captions=", ".join(f'"{t}"' for t in CAPTION_TEMPLATES),
        blank_caps=", ".join(f'"{t}"' for t in BLANK_CAPTIONS), loss=r["info"]["final_loss"], dv=r["diff"][0],
        dt=r["diff"][1], n10=r["zs10"]["n"], acc10=r["zs10"]["accuracy"],
        per_digit=", ".join(f"{k} {v:.0%}" for k, v in r["zs10"]["per_digit"].items()),
        lstr=r["ls_train"]["accuracy"], lshe=r["ls_heldout"]["accuracy"], lshe_c=r["ls_heldout"]["correct"],
        lshe_n=r["ls_heldout"]["n"], confusion=confusion, score_table="\n".join(lines), hand=hand,
        sk=sklearn.__version__, C=p["C"], cvacc=p["cv_acc"][best], ptr=p["train_accuracy"], phe=p["heldout_accuracy"],
        grad=p["grad"], nex=r["n_examples"])
    (folder / "README.md").write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# check-fixtures (ref venv: numpy, PIL, transformers' CLIPImageProcessor, onnxruntime, tokenizers)
# ----------------------------------------------------------------------------------------------

def check_digits(root: Path, tk, check):
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor
    folder = root / "digits"
    ref = json.loads((root / "reference" / "digits.json").read_text(encoding="utf-8"))
    exs = json.loads((root / "reference" / "digits-examples.json").read_text(encoding="utf-8"))["examples"]
    probe = json.loads((root / "reference" / "digits-probe.json").read_text(encoding="utf-8"))
    vs = ort_session(folder / "onnx" / "vision_model.onnx")
    ts = ort_session(folder / "onnx" / "text_model.onnx")
    proc = CLIPImageProcessor.from_pretrained(str(folder))
    on_disk = sorted(p.relative_to(root).as_posix() for p in (folder / "examples").rglob("*.png"))
    check(on_disk == sorted(e["path"] for e in exs), f"digits: {len(exs)} example PNGs, as listed")
    pv = []
    for e in exs:
        with Image.open(root / e["path"]) as im:
            pv.append(proc(images=im, return_tensors="np")["pixel_values"][0])
    emb = vs.run(None, {"pixel_values": np.stack(pv)})[0]
    stored = np.array([e["embeds"] for e in exs], np.float32)
    d = float(np.abs(emb - stored).max())
    check(d < 1e-4, f"digits vision on every example PNG (CLIPImageProcessor): max abs {d:.2g}")
    ids = [tk.encode(t["text"]).ids for t in ref["text"]]
    check(ids == [t["ids"] for t in ref["text"]], "digits prompt ids = tokenizer.json")
    a, m = pad_batch(ids)
    d = float(np.abs(ts.run(None, {"input_ids": a, "attention_mask": m})[0]
                     - np.array([t["embeds"] for t in ref["text"]], np.float32)).max())
    check(d < 1e-4, f"digits text: max abs {d:.2g}")
    scale = float((folder / "clipfilter.toml").read_text(encoding="utf-8").split("logit_scale =")[1].strip())
    check(scale == ref["logit_scale"], f"digits clipfilter.toml logit_scale {scale} = reference")
    labels = label_set((folder / "labels.toml").read_text(encoding="utf-8"))
    rows, _ = class_rows(ts, lambda t: tk.encode(t).ids, labels)
    d = float(np.abs(rows - np.array([lab["class_embedding"] for lab in ref["label_set"]["labels"]])).max())
    check(d < 1e-4, f"digits label set ({len(labels)} labels) class embeddings: max abs {d:.2g}")
    emb64 = stored.astype(np.float64)
    _, prob = score(emb64, rows, scale)
    names = [lab["name"] for lab in labels]
    he = [i for i, e in enumerate(exs) if e["split"] == "heldout"]
    top = [names[k] if names[k] in LABELS else NONE for k in prob[he].argmax(1)]
    correct = sum(t == exs[i]["label"] for t, i in zip(top, he))
    want = ref["zeroshot"]["label_set_heldout"]
    check(correct == want["correct"], f"digits zero-shot (label set) on heldout: {correct}/{len(he)} "
                                      f"= {correct / len(he):.1%} (reference {want['correct']}/{want['n']}; "
                                      f"10-way pool accuracy {ref['zeroshot']['pool_10way']['accuracy']:.1%})")
    X = l2n(emb64[he])
    p = softmax(X @ np.array(probe["coef"]).T + np.array(probe["intercept"]))
    d = float(np.abs(p - np.array(probe["heldout"]["probs"])).max())
    acc = float(np.mean([CLASSES[k] == exs[i]["label"] for k, i in zip(p.argmax(1), he)]))
    check(d < 1e-6 and abs(acc - probe["heldout"]["accuracy"]) < 1e-4,
          f"digits probe (C = {probe['C']:g}) heldout probabilities from coef/intercept: max abs {d:.2g}, "
          f"accuracy {acc:.1%} (zero-shot {probe['zeroshot_heldout_accuracy']:.1%})")


def register(sub):
    p = sub.add_parser("make-digits", help="train the digits fixture model and write tests/fixtures/digits (tools venv)",
                       description="Train the small CLIP-style digits model (scikit-learn digits; about 3 minutes on "
                                   "2 cores), export it, write its example pictures, label set, README and the "
                                   "references reference/digits*.json, then MANIFEST.sha256. Deterministic.")
    p.add_argument("--out", default=str(FIXTURES), help="fixtures folder (default: tests/fixtures)")
    p.set_defaults(fn=cmd_make_digits)
