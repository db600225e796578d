"""Shared by every command: repository paths, CLIP constants, logging (log, die), exact float32 JSON
(f32, write_json), hashing, the formula reference images, onnxruntime sessions and small numpy
helpers (pad_batch, softmax, l2n). Standard library only at import time; the bottom of the import
graph (imports no other module of the package)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "None of PyTorch ... found" in the ref venv

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
LOCAL = REPO / ".local"
MEDIA_PHOTOS = LOCAL / "media" / "photos"
PHOTO_REFS = LOCAL / "fixtures" / "photos"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SOT, EOT, VOCAB_SIZE, CONTEXT_LENGTH = 49406, 49407, 49408, 77
OPSET = 17

# The reference images: no pixels are stored, both sides (here and the Rust tests) compute them.
FORMULA = ("pixel[b][c][y][x] = float32(1.5 * sin(0.1*x + 0.173*y + 1.7*c + 0.917*b + 0.05*x*y/W)), "
           "computed in float64 and then cast to float32; b = image index in the batch, c = channel 0..2, "
           "y = row, x = column, W = image width (= height)")


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


def write_manifest(out_root: Path):
    """MANIFEST.sha256: `sha256  relative/path` of every file under out_root (sorted), itself excluded."""
    lines = []
    for p in sorted(out_root.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.sha256":
            lines.append(f"{sha256_file(p)}  {p.relative_to(out_root).as_posix()}")
    (out_root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n", encoding="utf-8")


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


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
