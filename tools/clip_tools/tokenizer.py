"""The reference tokenizers and prompt templates: OpenAI's CLIP BPE vocabulary rebuilt from the
open-clip-torch wheel, the shipped tokenizer.json (transformers' fast CLIPTokenizer), the
`Tokenizers` class that runs all four tokenizers side by side, the tokenizer test cases
(reference/tokenizer_cases.json) and OpenAI's ImageNet template lists (reference/templates.json)."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

from .common import CONTEXT_LENGTH, EOT, SOT, VOCAB_SIZE

SINGLE_TEMPLATES = ["a photo of a {}."]


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
