"""Query latency of exact and FAISS search at 10k and 100k gallery vectors (random,
normalised, 128-d), one query at a time and 100 at once.

    python bench/bench_search.py
"""

from __future__ import annotations

import time

import numpy as np

from retrieval_app.retrieval.search import ExactIndex, FaissIndex


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    rng = np.random.default_rng(0)
    for n in (10_000, 100_000):
        vectors = rng.normal(size=(n, 128)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        queries = vectors[rng.choice(n, 100, replace=False)] + 0.01 * rng.normal(size=(100, 128)).astype(np.float32)
        start = time.perf_counter()
        faiss_index = FaissIndex(vectors)
        build = time.perf_counter() - start
        exact = ExactIndex(vectors)
        for name, index in (("exact", exact), ("faiss-hnsw", faiss_index)):
            one = timed(lambda: index.search(queries[:1], 10), 20)
            batch = timed(lambda: index.search(queries, 10), 3)
            print(f"{n:>7} vectors  {name:<11} 1 query {one:7.2f} ms   100 queries {batch:8.1f} ms")
        exact_i, _ = exact.search(queries, 10)
        faiss_i, _ = faiss_index.search(queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_i, faiss_i)])
        print(f"{n:>7} vectors  FAISS build {build:.1f} s, recall@10 vs exact {recall:.3f}")


if __name__ == "__main__":
    main()
