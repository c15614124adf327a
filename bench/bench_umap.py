"""UMAP time at 1k and 10k points (128-d clustered data), first call in a fresh process
(numba compilation included) and a second call; PCA and query placement for scale.

    python bench/bench_umap.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval_app.retrieval.projection import compute_projection


def data(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    centres = rng.normal(size=(20, 128)) * 3
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, 128))).astype(np.float32)


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        for n in (1_000, 10_000):
            x = data(n)
            for attempt in ("first", "second"):
                start = time.perf_counter()
                projection = compute_projection(x, "umap", seed=attempt == "second", cache_dir=Path(cache))
                print(f"UMAP {n:>6} points, {attempt} call: {time.perf_counter() - start:6.1f} s")
            start = time.perf_counter()
            compute_projection(x, "pca", cache_dir=Path(cache))
            print(f"PCA  {n:>6} points: {time.perf_counter() - start:6.2f} s")
            start = time.perf_counter()
            projection.transform(x[:1])
            print(f"placing one query on the {n}-point UMAP map: {(time.perf_counter() - start) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
