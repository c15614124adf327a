"""Query latency of exact and FAISS (HNSW) search at 10k and 100k gallery vectors.

128-d unit vectors, two kinds: random on the sphere (no structure: the hardest case for
an approximate index) and clustered (200 clusters, like real embeddings of a labelled
folder). Top-10, one query at a time and 100 at once; FAISS build time and its
recall@10 against exact search.

    python bench/bench_search.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from retrieval_app.retrieval.ann import HnswIndex
from retrieval_app.retrieval.search import ExactIndex


def unit_vectors(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        x = rng.normal(size=(n, 128))
    else:
        centres = rng.normal(size=(200, 128))
        x = centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, 128))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ms_per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| gallery | vectors | exact, 1 query | exact, 100 queries | FAISS HNSW, 1 query | FAISS, 100 queries | FAISS build | FAISS recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for kind in ("random", "clustered"):
            vectors = unit_vectors(n, kind, rng)
            queries = vectors[rng.choice(n, 100, replace=False)] + 0.05 * unit_vectors(100, "random", rng)
            exact = ExactIndex(vectors)
            start = time.perf_counter()
            approx = HnswIndex.build(vectors)
            build = time.perf_counter() - start
            times = [ms_per_call(lambda index=index, q=q: index.search(q, 10), r) for index in (exact, approx) for q, r in ((queries[:1], 50), (queries, 5))]
            exact_i, _ = exact.search(queries, 10)
            approx_i, _ = approx.search(queries, 10)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_i, approx_i)])
            print(f"| {n:,} | {kind} | {times[0]:.2f} ms | {times[1]:.1f} ms | {times[2]:.2f} ms | {times[3]:.1f} ms | {build:.1f} s | {recall:.3f} |", flush=True)


if __name__ == "__main__":
    main()
