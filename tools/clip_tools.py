#!/usr/bin/env python3
"""clipfilter model tools: test fixtures, reference outputs, model export and speed baselines.

Run it through the wrapper, which picks (and creates or updates) the right virtual environment:

    tools/clip-tools <subcommand> [options]

Subcommands (details: `tools/clip-tools <subcommand> --help`, and tools/README.md):

    make-fixtures     write tests/fixtures/ (tiny CLIP models, oracle models, reference JSON)  [tools venv]
    check-fixtures    run every committed fixture model with onnxruntime against its references   [ref venv]
    photo-refs        CLIPImageProcessor pixel references for .local/media/photos/                 [ref venv]
    export            export a transformers or OpenCLIP checkpoint into clipfilter's model layout  [tools venv]
    export-random-b32 full-size ViT-B/32 with random weights (benchmarks)                          [tools venv]
    bench-baselines   images/s of onnxruntime-python and transformers/PyTorch (JSON lines)         [either]

Heavy imports (torch, transformers, open_clip, onnx) happen inside the subcommands, so `--help`
works with any python3.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "None of PyTorch ... found" in the ref venv

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
LOCAL = REPO / ".local"
MEDIA_PHOTOS = LOCAL / "media" / "photos"
PHOTO_REFS = LOCAL / "fixtures" / "photos"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SOT, EOT, VOCAB_SIZE, CONTEXT_LENGTH = 49406, 49407, 49408, 77
OPSET = 17

FORMULA = ("pixel[b][c][y][x] = float32(1.5 * sin(0.1*x + 0.173*y + 1.7*c + 0.917*b + 0.05*x*y/W)), "
           "computed in float64 and then cast to float32; b = image index in the batch, c = channel 0..2, "
           "y = row, x = column, W = image width (= height)")

SINGLE_TEMPLATES = ["a photo of a {}."]

# Words whose embeddings the tiny models' references record (ids: the tokenizer.json / hf_fast ids).
REFERENCE_TEXTS = None  # filled lazily by reference_texts()

ZEROSHOT_LABELS = ["cat", "dog", "person", "car", "fire", "smoke", "knife", "delivery van"]

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


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def die(msg: str, code: int = 1):
    log(f"error: {msg}")
    sys.exit(code)


def f32(x) -> float:
    """Shortest decimal that round-trips to the same float32 (keeps the JSON small and exact)."""
    import numpy as np
    return float(str(np.float32(x)))


def f32_list(a):
    import numpy as np
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 1:
        return [f32(v) for v in a]
    return [f32_list(r) for r in a]


def sig2(x: float) -> float:
    """Two significant digits: measured differences vary in the last bits between machines."""
    return float(f"{x:.2g}")


def write_json(path: Path, obj, compact_numbers: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    if compact_numbers:
        # put innermost number lists on one line: [\n 1.0,\n 2.0\n] -> [1.0, 2.0]
        import re
        num = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
        pat = re.compile(r"\[\s*(" + num + r"(?:,\s*" + num + r")*)\s*\]")
        text = pat.sub(lambda m: "[" + ", ".join(s.strip() for s in m.group(1).split(",")) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def formula_images(batch: int, height: int, width: int):
    """The reference images: no pixels are stored, both sides compute them (see FORMULA)."""
    import numpy as np
    b, c, y, x = np.meshgrid(np.arange(batch, dtype=np.float64), np.arange(3, dtype=np.float64),
                             np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                             indexing="ij")
    v = 1.5 * np.sin(0.1 * x + 0.173 * y + 1.7 * c + 0.917 * b + 0.05 * x * y / width)
    return np.ascontiguousarray(v.astype(np.float32))


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------

def openai_templates():
    """(ensemble7, imagenet80) from the open-clip-torch wheel (OpenAI's notebook lists, verified equal)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
    t80 = [f("{}") for f in OPENAI_IMAGENET_TEMPLATES]
    t7 = [f("{}") for f in SIMPLE_IMAGENET_TEMPLATES]
    expected7 = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
    if t7 != expected7:
        raise RuntimeError(f"open_clip SIMPLE_IMAGENET_TEMPLATES is not OpenAI's forward-selected 7: {t7}")
    if len(t80) != 80 or len(set(t80)) != 80 or not all(t.count("{}") == 1 for t in t80):
        raise RuntimeError("OPENAI_IMAGENET_TEMPLATES is not 80 distinct one-slot templates")
    return t7, t80


def all_templates():
    t7, t80 = openai_templates()
    return {"single": list(SINGLE_TEMPLATES), "ensemble7": t7, "imagenet80": t80}


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

def bpe_file() -> Path:
    from open_clip.tokenizer import default_bpe
    return Path(default_bpe())


def write_vocab_and_merges(folder: Path):
    """vocab.json / merges.txt from OpenAI's bpe_simple_vocab_16e6.txt.gz, exactly as OpenAI's
    SimpleTokenizer builds its vocabulary (and as transformers' converted CLIP checkpoints ship them)."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode
    lines = gzip.open(bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    bs = list(bytes_to_unicode().values())
    vocab = bs + [v + "</w>" for v in bs]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE and len(set(vocab)) == VOCAB_SIZE, len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return {t: i for i, t in enumerate(vocab)}


def save_tokenizer_files(fast, folder: Path):
    """tokenizer.json (compact, like the transformers.js exports: 1.7 MB instead of 3.6 MB),
    tokenizer_config.json and special_tokens_map.json of a CLIPTokenizerFast into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp, legacy_format=False)
        cfg = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
        cfg.pop("from_slow", None)  # an init flag, not a property of the saved tokenizer
        (folder / "tokenizer_config.json").write_text(
            json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        shutil.copyfile(Path(tmp) / "special_tokens_map.json", folder / "special_tokens_map.json")
    fast.backend_tokenizer.save(str(folder / "tokenizer.json"), pretty=False)


class Tokenizers:
    """The reference tokenizers: OpenAI's own (`clip.simple_tokenizer` from the openai-clip package,
    the code CLIP was trained with), open_clip's port of it, transformers' slow CLIPTokenizer (with
    ftfy) and the converted fast one whose tokenizer.json we ship."""

    def __init__(self, workdir: Path):
        import ftfy  # noqa: F401  (hf slow must run WITH ftfy)
        from open_clip.tokenizer import SimpleTokenizer
        from transformers import CLIPTokenizer, CLIPTokenizerFast
        slow_dir, fast_dir = workdir / "slow", workdir / "fast"
        self.vocab = write_vocab_and_merges(slow_dir)
        slow = CLIPTokenizer(str(slow_dir / "vocab.json"), str(slow_dir / "merges.txt"), model_max_length=77)
        if getattr(slow, "fix_text", None) is None:
            raise RuntimeError("transformers' CLIPTokenizer did not pick up ftfy")
        slow.save_pretrained(str(slow_dir))
        fast = CLIPTokenizerFast.from_pretrained(str(slow_dir), from_slow=True)
        save_tokenizer_files(fast, fast_dir)
        self.fast_dir = fast_dir
        # reload from the saved tokenizer.json: exactly what users and the Rust side get
        self.slow = slow
        self.fast = CLIPTokenizerFast.from_pretrained(str(fast_dir))
        # Load clip/simple_tokenizer.py on its own: the package's __init__ imports pkg_resources.
        import importlib.util
        clip_dir = Path(importlib.util.find_spec("clip").submodule_search_locations[0])
        spec = importlib.util.spec_from_file_location("openai_clip_simple_tokenizer", clip_dir / "simple_tokenizer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.original = module.SimpleTokenizer()
        if dict(self.original.encoder) != self.vocab:
            raise RuntimeError("vocab.json differs from OpenAI's SimpleTokenizer vocabulary")
        self.openai = SimpleTokenizer()
        assert self.openai.sot_token_id == SOT and self.openai.eot_token_id == EOT
        # vocabulary identical to open_clip's (its special tokens are spelled <start_of_text>/<end_of_text>)
        oc = dict(self.openai.encoder)
        oc["<|startoftext|>"] = oc.pop("<start_of_text>")
        oc["<|endoftext|>"] = oc.pop("<end_of_text>")
        if oc != self.vocab:
            raise RuntimeError("vocab.json differs from open_clip's SimpleTokenizer vocabulary")

    def ids_original(self, text: str):
        """OpenAI's clip.tokenize(text, truncate=True): start, BPE, end; truncated keeping the end."""
        ids = [SOT] + self.original.encode(text) + [EOT]
        if len(ids) > CONTEXT_LENGTH:
            ids = ids[:CONTEXT_LENGTH]
            ids[-1] = EOT
        return ids

    def ids_open_clip(self, text: str):
        ids = [SOT] + self.openai.encode(text) + [EOT]
        if len(ids) > CONTEXT_LENGTH:
            ids = ids[:CONTEXT_LENGTH]
            ids[-1] = EOT
        padded = self.openai([text], context_length=CONTEXT_LENGTH)[0].tolist()
        assert padded[:len(ids)] == ids and all(v == 0 for v in padded[len(ids):]), text
        return ids

    def ids_hf_slow(self, text: str):
        return self.slow(text, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]

    def ids_hf_fast(self, text: str):
        return self.fast(text, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]

    def copy_files_to(self, folder: Path):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(self.fast_dir / name, folder / name)


def long_text_300() -> str:
    base = ("the quick brown fox jumps over the lazy dog while a white delivery van waits at the gate "
            "and a person in a red jacket walks past the camera near the parked car at night").split()
    return " ".join(base[i % len(base)] for i in range(300))


def emoji_100() -> str:
    em = ["🔥", "🚒", "🐱", "🐶", "🚗", "😀", "👍", "🎉", "🌍", "⚡"]
    return "".join(em[i % len(em)] for i in range(100))


# (text, group). Group "plain" must give identical ids with all three tokenizers.
TOKENIZER_CASES = [
    ("a photo of a cat", "plain"),
    ("a person holding a knife", "plain"),
    ("smoke", "plain"),
    ("a delivery van at the gate", "plain"),
    ("a photo of a dog.", "plain"),
    ("fire", "plain"),
    ("someone climbing over a fence at night", "plain"),
    ("A Photo Of A CAT", "plain"),
    ("DELIVERY Van", "plain"),
    ("iPhone XR", "plain"),
    ("!!!???...", "plain"),
    ("--==--", "plain"),
    ("hello, world!", "plain"),
    ("(parenthesised) [bracketed] {braced}", "plain"),
    ("a/b\\c|d #hashtag @mention", "plain"),
    ("it's", "plain"),
    ("they'll", "plain"),
    ("I'm here, we've gone, you'd know", "plain"),
    ("IT'S LOUD, DON'T", "plain"),
    ("1080p", "plain"),
    ("3.14159", "plain"),
    ("2026-11-28", "plain"),
    ("12:30:45 100% $5.99", "plain"),
    ("café crème brûlée", "plain"),
    ("Ünïcödé", "plain"),
    ("naïve résumé façade Ångström", "plain"),
    ("🧠", "plain"),
    ("🔥🔥 fire 🚒", "plain"),
    ("👩\u200d👩\u200d👧", "plain"),
    ("👍🏽 thumbs up", "plain"),
    ("一只猫", "plain"),
    ("東京タワー", "plain"),
    ("한국어 문장", "plain"),
    ("مرحبا بالعالم", "plain"),
    ("שלום עולם", "plain"),
    ("Привет, мир", "plain"),
    ("नमस्ते दुनिया", "plain"),
    ("Γειά σου Κόσμε", "plain"),
    ("  a \t\n b  ", "plain"),
    ("", "plain"),
    ("   ", "plain"),
    ("ＡＢＣ１２３", "unicode-normalisation"),
    ("你好，世界", "unicode-normalisation"),
    ("“quoted” ‘single’", "unicode-normalisation"),
    ("ﬁsh ﬂower", "unicode-normalisation"),
    ("e\u0301clair", "unicode-normalisation"),
    ("cafÃ© mojibake", "unicode-normalisation"),
    ("non\u00a0breaking\u00a0space", "unicode-normalisation"),
    ("zero\u200bwidth", "unicode-normalisation"),
    ("fish &amp; chips", "html"),
    ("&lt;b&gt;", "html"),
    ("&amp;amp; twice", "html"),
    ("&#39;quoted&#39;", "html"),
    ("<|startoftext|>a<|endoftext|>", "special-literal"),
    ("<start_of_text>", "special-literal"),
    (long_text_300(), "long"),
    (emoji_100(), "long"),
]


def make_tokenizer_cases(tok: Tokenizers):
    cases, divergent = [], []
    for text, group in TOKENIZER_CASES:
        o, s, f = tok.ids_original(text), tok.ids_hf_slow(text), tok.ids_hf_fast(text)
        oc = tok.ids_open_clip(text)
        for name, ids in (("openai", o), ("open_clip", oc), ("hf_slow", s), ("hf_fast", f)):
            if not (ids[0] == SOT and ids[-1] == EOT and len(ids) <= CONTEXT_LENGTH):
                raise RuntimeError(f"{name} ids malformed for {text!r}: {ids}")
        diffs = []
        if o != s:
            diffs.append("openai!=hf_slow")
        if o != f:
            diffs.append("openai!=hf_fast")
        if s != f:
            diffs.append("hf_slow!=hf_fast")
        if o != oc:
            diffs.append("openai!=open_clip")
        if group == "plain" and diffs:
            raise RuntimeError(f"tokenizers disagree on plain case {text!r}: {diffs}\n{o}\n{s}\n{f}")
        cases.append({"text": text, "group": group, "openai": o, "open_clip": oc, "hf_slow": s, "hf_fast": f})
        if diffs:
            divergent.append({"text": text, "group": group, "differs": diffs})
    return cases, divergent


# ----------------------------------------------------------------------------------------------
# ONNX export helpers (torch)
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Tiny transformers CLIP models
# ----------------------------------------------------------------------------------------------

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


def reference_texts():
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


def pad_batch(id_lists, length=None, pad=EOT):
    import numpy as np
    n = length or max(len(i) for i in id_lists)
    ids = np.full((len(id_lists), n), pad, dtype=np.int64)
    mask = np.zeros((len(id_lists), n), dtype=np.int64)
    for r, seq in enumerate(id_lists):
        ids[r, :len(seq)] = seq
        mask[r, :len(seq)] = 1
    return ids, mask


def softmax(x):
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def l2n(x):
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


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


# ----------------------------------------------------------------------------------------------
# Oracle models (hand-built ONNX)
# ----------------------------------------------------------------------------------------------

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
`tools/clip-tools make-fixtures` (`tools/clip_tools.py`, `oracle_vision_graph` / `oracle_text_graph`).
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

FIXTURES_README = """# tests/fixtures — committed CLIP test models and reference outputs

Generated by `tools/clip-tools make-fixtures` (deterministic: a second run rewrites every file
bit-identically, see MANIFEST.sha256); checked with `tools/clip-tools check-fixtures`. Do not edit by
hand. Details: `tools/README.md`.

Every model folder has the layout of a transformers.js / Hugging Face ONNX export
(e.g. Xenova/clip-vit-base-patch32): `config.json`, `preprocessor_config.json`, `tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json`, `onnx/vision_model.onnx`, `onnx/text_model.onnx`,
plus our own optional `clipfilter.toml` (`logit_scale = ...`; absent means 100).

| folder | image | embed D | text_model inputs | seq len | logit_scale | extra files |
|---|---|---|---|---|---|---|
| tiny-clip | 224 (resize 224, crop 224) | 32 | input_ids + attention_mask | fixed 77 | 100 (no toml) | vision_model_quantized, vision_model_fp16, text_model_fp16 |
| tiny-clip-odd | 96 (resize 112, crop 96; legacy int format in preprocessor_config) | 24 | input_ids only | dynamic | 50 (toml) | - |
| oracle-clip | 64 (resize 64, crop 64) | 10 | input_ids + attention_mask | dynamic | 100 (toml) | README.md |
| oracle-slow | 64 | 10 | input_ids + attention_mask | dynamic | 100 (toml) | README.md (timing) |

ONNX I/O (all models, all variants): input `pixel_values` float32 [batch_size, 3, H, W] -> output
`image_embeds` float32 [batch_size, D]; `input_ids` int64 [batch_size, seq] (+ `attention_mask` int64,
same shape) -> `text_embeds` float32 [batch_size, D]. Batch is always dynamic. Outputs are NOT
normalised (projection outputs, as transformers' get_image_features / get_text_features give them).
The fp16 and quantized variants keep float32/int64 inputs and float32 outputs.
Text: start 49406, end 49407; pad with 49407 (tokenizer_config's pad_token) or 0, the result is the
same (causal attention, pooled at the first end token); fixed-77 models need exactly 77 columns.

The tiny models are transformers `CLIPModel`s with random weights (fixed seeds), 2 layers; their
token-embedding rows repeat with a prime period P (`token_embedding_period` in the reference JSON) so
that git compresses the 49408-row table: ids i and i+P share an embedding.

## reference/
- `tokenizer_cases.json`: `{"context_length": 77, "description", "cases": [{"text", "group", "openai": [ids],
  "open_clip": [ids], "hf_slow": [ids], "hf_fast": [ids]}], "divergent": [{"text", "group", "differs": [...]}]}`; ids with
  49406/49407, no padding, truncated to 77 with 49407 last. `openai` = OpenAI's own
  `clip.simple_tokenizer` (openai-clip 1.0.1), `open_clip` = open_clip's port, `hf_slow` = transformers'
  CLIPTokenizer with ftfy, `hf_fast` = this tokenizer.json alone.
- `templates.json`: `{"single": [1], "ensemble7": [7], "imagenet80": [80]}` (OpenAI's lists, `{}` = label).
- `tiny-clip.json`, `tiny-clip-odd.json`: `{"model", "logit_scale", "image_size", "token_embedding_period",
  "image_formula", "text_input", "onnx_vs_torch_max_abs": {"vision", "text"},
  "image": [{"batch": B, "embeds": [[D floats] x B]}] for B = 1, 3, 17,
  "text": [{"text", "ids": [hf_fast ids], "embeds": [D floats]}],
  "zeroshot": [{"images": B, "labels": [...], "templates": "none"|"single"|"ensemble7"|"imagenet80",
  "probs": [[L] x B], "cosine": [[L] x B], "comment"?}], "variants_vs_torch"? }`.
  Images are not stored: `pixel[b][c][y][x] = float32(1.5*sin(0.1*x + 0.173*y + 1.7*c + 0.917*b +
  0.05*x*y/W))` computed in float64, W = image width, b = index in the batch (images 0..B-1).
  Embeds come from PyTorch (transformers CLIPModel), not from the ONNX files.
  Zero-shot: normalise image embeds; text per label = normalised embed of the prompt ("none": the label
  itself, "single": "a photo of a {}.") or, for ensembles, mean of normalised prompt embeds renormalised;
  cosine = image . text; probs = softmax(logit_scale * cosine) over the labels.
- `oracle-clip.json`: solid-colour frames (pixel_values = (rgb/255 - mean)/std everywhere) against
  colour prompts: `{"colours": [{"name", "rgb"}], "prompts": [{"text", "ids"}], "image_embeds",
  "text_embeds", "cosine": [[prompts] x colours]}` (computed with onnxruntime).
"""

TIMING_START = "<!-- timing: measured by tools/clip-tools make-fixtures; kept on regeneration unless --update-timing -->"
TIMING_END = "<!-- /timing -->"

# ----------------------------------------------------------------------------------------------
# make-fixtures
# ----------------------------------------------------------------------------------------------

def cmd_make_fixtures(args):
    import numpy as np
    import onnxruntime
    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    log(f"make-fixtures -> {out_root}")
    previous_readmes = {}
    for n in ("oracle-slow",):
        if (out_root / n / "README.md").exists():
            previous_readmes[n] = (out_root / n / "README.md").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        tok = Tokenizers(Path(tmp))
        log("  tokenizer cases")
        cases, divergent = make_tokenizer_cases(tok)
        write_json(out_root / "reference" / "tokenizer_cases.json", {
            "context_length": CONTEXT_LENGTH,
            "description": ("ids include 49406 (start) and 49407 (end), no padding, truncated to 77 with the end "
                            "token kept last. openai = OpenAI's clip.simple_tokenizer.SimpleTokenizer (openai-clip "
                            "1.0.1: ftfy + double html.unescape + whitespace clean + lower, special tokens "
                            "<|startoftext|>/<|endoftext|> recognised in text); open_clip = open_clip's port (it "
                            "spells the special tokens <start_of_text>/<end_of_text>); hf_slow = transformers CLIPTokenizer "
                            "with ftfy (no html.unescape); hf_fast = tokenizer.json (NFC + whitespace + lower, no "
                            "ftfy, no html.unescape). Group 'plain' cases agree in all four."),
            "cases": cases,
            "divergent": divergent,
        })
        templates = all_templates()
        write_json(out_root / "reference" / "templates.json", templates, compact_numbers=False)
        for name in TINY_SPECS:
            make_tiny(name, tok, templates, out_root)
        log("  oracle models")
        make_oracles(tok, out_root)
        # oracle-slow timing: measured every run; the README keeps the committed measurement unless
        # --update-timing (or there is none yet), so regeneration stays bit-identical
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
        old = previous_readmes.get("oracle-slow")
        if old and not args.update_timing and TIMING_START in old and TIMING_END in old:
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
        (out_root / "README.md").write_text(FIXTURES_README, encoding="utf-8")
        write_manifest(out_root)
    sizes = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    log(f"make-fixtures: done, {sizes / 1e6:.1f} MB in {out_root}")
    if divergent:
        log("divergent tokenizer cases:")
        for d in divergent:
            log(f"  {d['text'][:50]!r:55} {', '.join(d['differs'])}")


def write_manifest(out_root: Path):
    lines = []
    for p in sorted(out_root.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.sha256":
            lines.append(f"{sha256_file(p)}  {p.relative_to(out_root).as_posix()}")
    (out_root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# check-fixtures (ref venv: onnxruntime + tokenizers, no torch)
# ----------------------------------------------------------------------------------------------

def cmd_check_fixtures(args):
    import numpy as np
    from tokenizers import Tokenizer
    root = Path(args.fixtures).resolve()
    ok = True

    def check(cond, msg):
        nonlocal ok
        log(("  ok    " if cond else "  FAIL  ") + msg)
        ok = ok and bool(cond)

    cases = json.loads((root / "reference" / "tokenizer_cases.json").read_text(encoding="utf-8"))
    tk = Tokenizer.from_file(str(root / "tiny-clip" / "tokenizer.json"))
    tk.enable_truncation(CONTEXT_LENGTH)
    bad = [c["text"] for c in cases["cases"] if tk.encode(c["text"]).ids != c["hf_fast"]]
    check(not bad, f"tokenizer.json reproduces hf_fast ids for {len(cases['cases'])} cases {bad[:3]}")
    t = json.loads((root / "reference" / "templates.json").read_text(encoding="utf-8"))
    check(len(t["single"]) == 1 and len(t["ensemble7"]) == 7 and len(t["imagenet80"]) == 80, "templates.json 1/7/80")

    for name in ("tiny-clip", "tiny-clip-odd"):
        ref = json.loads((root / "reference" / f"{name}.json").read_text(encoding="utf-8"))
        size = ref["image_size"]
        onnx_dir = root / name / "onnx"
        vs = ort_session(onnx_dir / "vision_model.onnx")
        ts = ort_session(onnx_dir / "text_model.onnx")
        names = [i.name for i in ts.get_inputs()]
        fixed = isinstance(ts.get_inputs()[0].shape[1], int)
        for item in ref["image"]:
            out = vs.run(None, {"pixel_values": formula_images(item["batch"], size, size)})[0]
            d = float(np.abs(out - np.array(item["embeds"], np.float32)).max())
            check(d < 1e-4, f"{name} vision batch {item['batch']}: max abs {d:.2g}")
        ids, mask = pad_batch([x["ids"] for x in ref["text"]], CONTEXT_LENGTH if fixed else None)
        feed = {"input_ids": ids}
        if "attention_mask" in names:
            feed["attention_mask"] = mask
        out = ts.run(None, feed)[0]
        d = float(np.abs(out - np.array([x["embeds"] for x in ref["text"]], np.float32)).max())
        check(d < 1e-4, f"{name} text ({'fixed 77' if fixed else 'dynamic'}, inputs {names}): max abs {d:.2g}")
        for v in sorted(list(onnx_dir.glob("*_quantized.onnx")) + list(onnx_dir.glob("*_fp16.onnx"))):
            s = ort_session(v)
            kind = s.get_inputs()[0].name
            check(all(i.type == "tensor(float)" or i.type == "tensor(int64)" for i in s.get_inputs())
                  and all(o.type == "tensor(float)" for o in s.get_outputs()), f"{name} {v.name}: float32 I/O, runs")
            if kind == "pixel_values":
                out = s.run(None, {"pixel_values": formula_images(3, size, size)})[0]
                refe = np.array(ref["image"][1]["embeds"])
            else:
                out = s.run(None, feed)[0]
                refe = np.array([x["embeds"] for x in ref["text"]])
            cos = float((l2n(out) * l2n(refe)).sum(-1).min())
            check(cos > 0.99, f"{name} {v.name}: min cosine to fp32 reference {cos:.5f}")

    ref = json.loads((root / "reference" / "oracle-clip.json").read_text(encoding="utf-8"))
    for name in ("oracle-clip", "oracle-slow"):
        vs = ort_session(root / name / "onnx" / "vision_model.onnx")
        ts = ort_session(root / name / "onnx" / "text_model.onnx")
        red = np.broadcast_to(((np.array([1.0, 0, 0]) - CLIP_MEAN) / CLIP_STD).astype(np.float32)[None, :, None, None],
                              (1, 3, ORACLE_SIZE, ORACLE_SIZE)).copy()
        t0 = time.perf_counter()
        ie = vs.run(None, {"pixel_values": red})[0]
        dt = (time.perf_counter() - t0) * 1000
        prompts = ["red", "green", "a red screen", "blue"]
        ids, mask = pad_batch([tk.encode(p).ids for p in prompts])
        te = ts.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        cos = (l2n(ie) @ l2n(te).T)[0]
        check(int(np.argmax(cos)) in (0, 2) and cos[0] > 0.999 and cos[1] < 0.01,
              f"{name}: red frame cosines {dict(zip(prompts, np.round(cos, 4).tolist()))} ({dt:.0f} ms)")
    if not ok:
        die("check-fixtures: failures above")
    log("check-fixtures: all ok")


# ----------------------------------------------------------------------------------------------
# photo-refs (ref venv)
# ----------------------------------------------------------------------------------------------

def cmd_photo_refs(args):
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor
    photos_dir = Path(args.photos).resolve()
    out_root = Path(args.out).resolve()
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        die(f"no photos in {photos_dir} (run tools/setup.sh)")
    decoded_dir = out_root / "decoded"
    decoded_dir.mkdir(parents=True, exist_ok=True)
    decoded_index = []
    for p in photos:
        im = Image.open(p)
        mode = im.mode
        from transformers.image_transforms import convert_to_rgb
        rgb = np.asarray(convert_to_rgb(im), dtype=np.uint8)
        np.save(decoded_dir / f"{p.stem}.npy", np.ascontiguousarray(rgb))
        decoded_index.append({"photo": p.name, "npy": f"{p.stem}.npy", "shape": list(rgb.shape), "mode": mode})
    write_json(decoded_dir / "index.json", {
        "description": "each photo decoded by PIL and converted to RGB as CLIPImageProcessor does "
                       "(uint8 [H,W,3], .npy v1 little-endian C order)",
        "photos_dir": str(photos_dir), "photos": decoded_index})
    for model in args.models:
        folder = Path(args.fixtures).resolve() / model
        proc = CLIPImageProcessor.from_pretrained(str(folder))
        if type(proc).__name__ != "CLIPImageProcessor":
            die(f"expected the slow CLIPImageProcessor, got {type(proc).__name__}")
        out = out_root / model
        out.mkdir(parents=True, exist_ok=True)
        index = []
        for p in photos:
            arr = proc(images=Image.open(p), return_tensors="np")["pixel_values"][0]
            arr = np.ascontiguousarray(arr.astype("<f4"))
            np.save(out / f"{p.stem}.npy", arr)
            index.append({"photo": p.name, "npy": f"{p.stem}.npy", "shape": list(arr.shape)})
        write_json(out / "index.json", {
            "model": model,
            "processor": "transformers " + __import__("transformers").__version__ + " CLIPImageProcessor (slow, PIL)",
            "preprocessor_config": json.loads((folder / "preprocessor_config.json").read_text()),
            "photos_dir": str(photos_dir),
            "format": ".npy v1, little-endian float32, C order, shape [3,H,W]",
            "photos": index,
        })
        log(f"photo-refs: {model}: {len(index)} photos -> {out}")


# ----------------------------------------------------------------------------------------------
# export (users) and export-random-b32
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# bench-baselines
# ----------------------------------------------------------------------------------------------

def vision_flops(model_dir: Path):
    """Multiply-add FLOPs of one image through a ViT image tower (matrix products only), and the
    shape of its largest product (tokens, width, MLP width), from config.json."""
    v = json.loads((model_dir / "config.json").read_text()).get("vision_config", {})
    d, m, layers = v.get("hidden_size", 768), v.get("intermediate_size", 3072), v.get("num_hidden_layers", 12)
    size, patch = v.get("image_size", 224), v.get("patch_size", 32)
    grid = (size // patch) ** 2
    t = grid + 1
    per_layer = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * m + 2 * 2 * t * t * d
    flops = layers * per_layer + 2 * grid * 3 * patch * patch * d + 2 * d * v.get("projection_dim", 512)
    return flops, t, d, m


def matmul_ceiling(model_dir: Path, args, emit):
    """ONNX Runtime's MatMul throughput on this machine, on the tower's largest product at this
    batch, turned into an upper bound of images/s: what no fp32 session of this model can beat."""
    import numpy as np
    import onnxruntime as ort
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # onnx is not in the light venv
        emit({"baseline": "matmul-ceiling", "batch": args.batch, "threads": args.threads,
              "images_per_s": None, "skipped": f"onnx not available ({type(e).__name__})"})
        return
    flops, t, d, m = vision_flops(model_dir)
    rows = args.batch * t
    w = numpy_helper.from_array(np.random.default_rng(0).random((d, m), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, m])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((rows, d), dtype=np.float32)
    for _ in range(10):
        sess.run(None, {"x": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(args.seconds, 5.0):
        sess.run(None, {"x": x})
        n += 1
    gflops = 2 * rows * d * m * n / (time.perf_counter() - t0) / 1e9
    emit({"baseline": "matmul-ceiling", "batch": args.batch, "threads": args.threads,
          "images_per_s": round(gflops * 1e9 / flops, 3), "matmul_gflops": round(gflops, 1),
          "matmul_shape": [rows, d, m], "gflop_per_image": round(flops / 1e9, 3),
          "onnxruntime": ort.__version__})


def cmd_bench_baselines(args):
    import numpy as np
    model_dir = Path(args.model).resolve()
    onnx_file = model_dir / "onnx" / {"fp32": "vision_model.onnx", "quantized": "vision_model_quantized.onnx",
                                      "fp16": "vision_model_fp16.onnx"}[args.variant]
    if not onnx_file.exists():
        die(f"{onnx_file} not found")
    results = []

    def emit(rec):
        results.append(rec)
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            ips = rec.get("images_per_s")
            print(f"{rec['baseline']:22} batch {rec['batch']:3} threads {rec['threads']:2} "
                  f"{'skipped: ' + rec['skipped'] if ips is None else f'{ips:8.2f} images/s'}", flush=True)

    import onnxruntime as ort
    if "matmul-ceiling" in args.only:
        matmul_ceiling(model_dir, args, emit)
        if args.only == ["matmul-ceiling"]:
            return
    # The input the image processor produces (what the tower was exported for).
    pp = json.loads((model_dir / "preprocessor_config.json").read_text())
    c = pp.get("crop_size", 224)
    size = c if isinstance(c, int) else c["height"]
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)

    def run_timed(step):
        for _ in range(args.warmup):
            step()
        n, t0 = 0, time.perf_counter()
        while True:
            step()
            n += 1
            el = time.perf_counter() - t0
            if el >= args.seconds:
                return n, el

    if "onnxruntime-python" in args.only:
        sess = ort_session(onnx_file, args.threads)
        n, el = run_timed(lambda: sess.run(None, {"pixel_values": x}))
        emit({"baseline": "onnxruntime-python", "batch": args.batch, "threads": args.threads,
              "images_per_s": round(n * args.batch / el, 3), "runs": n, "seconds": round(el, 3),
              "variant": args.variant, "onnxruntime": ort.__version__})
        del sess
    if "transformers-pytorch" in args.only:
        try:
            import torch
            from transformers import CLIPConfig, CLIPModel
        except Exception as e:  # torch is not in the light venv
            emit({"baseline": "transformers-pytorch", "batch": args.batch, "threads": args.threads,
                  "images_per_s": None, "skipped": f"torch not available ({type(e).__name__})"})
            return
        cfgp = model_dir / "config.json"
        try:
            cfg = CLIPConfig.from_pretrained(str(model_dir))
        except Exception as e:
            emit({"baseline": "transformers-pytorch", "batch": args.batch, "threads": args.threads,
                  "images_per_s": None, "skipped": f"no usable transformers config.json in {cfgp} ({e})"})
            return
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        model = CLIPModel(cfg).eval()  # random weights: same FLOPs as the checkpoint
        xt = torch.from_numpy(x)

        def step():
            with torch.inference_mode():
                model.get_image_features(pixel_values=xt)
        n, el = run_timed(step)
        emit({"baseline": "transformers-pytorch", "batch": args.batch, "threads": args.threads,
              "images_per_s": round(n * args.batch / el, 3), "runs": n, "seconds": round(el, 3),
              "torch": torch.__version__.split("+")[0]})


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="tools/clip-tools", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("make-fixtures", help="write tests/fixtures/ deterministically (needs the tools venv)",
                       description="Write tests/fixtures/: tiny-clip, tiny-clip-odd, oracle-clip, oracle-slow and "
                                   "reference/*.json, plus MANIFEST.sha256. Deterministic (fixed seeds).")
    p.add_argument("--out", default=str(FIXTURES), help="output folder (default: tests/fixtures)")
    p.add_argument("--update-timing", action="store_true",
                   help="replace the oracle-slow/README.md timing with this machine's measurement "
                        "(default: keep the committed one so regeneration is bit-identical)")
    p.set_defaults(fn=cmd_make_fixtures)

    p = sub.add_parser("check-fixtures", help="run each fixture model with onnxruntime against the references",
                       description="Load every ONNX file in tests/fixtures with onnxruntime, compare with "
                                   "reference/*.json (1e-4), check the oracle (red frame -> 'red').")
    p.add_argument("--fixtures", default=str(FIXTURES))
    p.set_defaults(fn=cmd_check_fixtures)

    p = sub.add_parser("photo-refs", help="CLIPImageProcessor pixel references for .local/media/photos",
                       description="For each photo and model, save transformers' slow (PIL) CLIPImageProcessor "
                                   "output [3,H,W] float32 as .npy v1 + index.json; also each decoded RGB photo.")
    p.add_argument("--photos", default=str(MEDIA_PHOTOS))
    p.add_argument("--out", default=str(PHOTO_REFS))
    p.add_argument("--fixtures", default=str(FIXTURES))
    p.add_argument("--models", nargs="+", default=["tiny-clip", "tiny-clip-odd"])
    p.set_defaults(fn=cmd_photo_refs)

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

    p = sub.add_parser("bench-baselines", help="images/s of Python onnxruntime and transformers/PyTorch",
                       description="Image-tower throughput baselines for the Rust benchmark. With --json, stdout "
                                   "has only JSON lines: {\"baseline\":\"onnxruntime-python\"|\"transformers-"
                                   "pytorch\",\"batch\":N,\"threads\":T,\"images_per_s\":X|null,...}.")
    p.add_argument("--model", default=str(LOCAL / "models" / "clip-vit-base-patch32-random"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per baseline (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--variant", choices=["fp32", "quantized", "fp16"], default="fp32",
                   help="which vision_model*.onnx the onnxruntime baseline runs")
    p.add_argument("--only", nargs="+", default=["onnxruntime-python", "transformers-pytorch"],
                   choices=["onnxruntime-python", "transformers-pytorch", "matmul-ceiling"],
                   help="which baselines (matmul-ceiling: ONNX Runtime's MatMul peak on the tower's largest "
                        "product, as an upper bound of fp32 images/s)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (logs go to stderr)")
    p.set_defaults(fn=cmd_bench_baselines)

    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
