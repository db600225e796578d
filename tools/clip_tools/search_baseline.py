"""The bench-search command: a numpy brute-force nearest-neighbour search over the same vectors the
Rust history benchmark stored, as its baseline (`clipfilterd bench --sections history`)."""

from __future__ import annotations

import json
import time


def cmd_bench_search(args):
    import numpy as np

    vectors = np.load(args.vectors, mmap_mode="r")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # in memory, as the timed part assumes
    query = np.load(args.query).astype(np.float32)
    times = []
    best = None
    for _ in range(args.rounds):
        t = time.perf_counter()
        scores = vectors @ query
        top = np.argpartition(-scores, args.top)[: args.top]
        best = top[np.argsort(-scores[top])]
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"baseline": "numpy-brute-force", "rows": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
                      "rounds": args.rounds, "best_ms": times[0] * 1e3, "median_ms": times[len(times) // 2] * 1e3,
                      "top": [int(i) for i in best]}))


def register(sub):
    """Add bench-search to the subcommand parsers `sub`."""
    p = sub.add_parser("bench-search", help="numpy brute-force search baseline for the history benchmark",
                       description="Cosine top-k over an (N, D) float32 .npy of unit vectors against a (D,) "
                                   ".npy query, timed (matrix product + partial sort, loading excluded). "
                                   "Prints one JSON line: {\"baseline\":\"numpy-brute-force\",\"rows\":N,"
                                   "\"best_ms\":X,\"median_ms\":Y,\"top\":[row indexes]}.")
    p.add_argument("--vectors", required=True, help="(N, D) float32 .npy")
    p.add_argument("--query", required=True, help="(D,) float32 .npy")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(fn=cmd_bench_search)
