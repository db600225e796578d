"""The photo-refs command: transformers' CLIPImageProcessor pixel references (.npy) and PIL-decoded
RGB arrays for the photos in .local/media/photos/ (ref venv)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import FIXTURES, MEDIA_PHOTOS, PHOTO_REFS, die, log, write_json


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


def register(sub):
    """Add photo-refs to the subcommand parsers `sub`."""
    p = sub.add_parser("photo-refs", help="CLIPImageProcessor pixel references for .local/media/photos",
                       description="For each photo and model, save transformers' slow (PIL) CLIPImageProcessor "
                                   "output [3,H,W] float32 as .npy v1 + index.json; also each decoded RGB photo.")
    p.add_argument("--photos", default=str(MEDIA_PHOTOS))
    p.add_argument("--out", default=str(PHOTO_REFS))
    p.add_argument("--fixtures", default=str(FIXTURES))
    p.add_argument("--models", nargs="+", default=["tiny-clip", "tiny-clip-odd"])
    p.set_defaults(fn=cmd_photo_refs)
