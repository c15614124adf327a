"""UMAP map time at 1k and 10k points (128-d clustered data): the first call in a fresh
process (umap import and numba compilation included; with an empty numba cache, as on
first use, and with the cache our previous process filled, as on every later app
start) and a second call in the same process. Default settings (kNN graph from our
index) and, for comparison, umap-learn's own NN-descent graph. PCA and placing a query
for scale.

    python bench/bench_umap.py [--sizes 1000 10000] [--no-plain]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def data(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    centres = rng.normal(size=(20, 128)) * 3
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, 128))).astype(np.float32)


def measure(n: int, precomputed: bool) -> dict:
    """Runs in a fresh process: times of the first and a second UMAP call, PCA, placement."""
    from retrieval_app.retrieval.projection import compute_projection

    x = data(n)
    timings = {}
    for attempt, seed in (("first", 0), ("second", 1)):
        start = time.perf_counter()
        projection = compute_projection(x, "umap", seed=seed, use_cache=False, precomputed_knn=precomputed)
        timings[attempt] = time.perf_counter() - start
    start = time.perf_counter()
    compute_projection(x, "pca", use_cache=False)
    timings["pca"] = time.perf_counter() - start
    start = time.perf_counter()
    projection.transform(x[:1] + 0.01)
    timings["place_ms"] = (time.perf_counter() - start) * 1000
    return timings


def run_fresh(n: int, precomputed: bool, numba_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=numba_dir)
    out = subprocess.run([sys.executable, __file__, "--worker", str(n), str(int(precomputed))], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000])
    parser.add_argument("--no-plain", action="store_true", help="skip the umap-learn NN-descent comparison")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], bool(args.worker[1]))))
        return
    print("| points | kNN graph | fresh process, empty numba cache | fresh process, numba cache filled | second call | PCA | placing a query |")
    print("|---|---|---|---|---|---|---|")
    for precomputed in (True,) if args.no_plain else (True, False):
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as numba_dir:
                cold = run_fresh(n, precomputed, numba_dir)
                warm = run_fresh(n, precomputed, numba_dir)
            graph = "ours (exact)" if precomputed else "umap-learn NN-descent"
            print(f"| {n:,} | {graph} | {cold['first']:.1f} s | {warm['first']:.1f} s | {warm['second']:.1f} s | {warm['pca']:.2f} s | {warm['place_ms']:.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
