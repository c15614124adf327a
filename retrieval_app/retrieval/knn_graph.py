"""The k-nearest-neighbour graph of a point set, in the form UMAP takes as
`precomputed_knn`: (indices, distances), each (N, k), Euclidean, each point itself first.

Below `APPROXIMATE_FROM` points the graph is exact (our chunked exact search). From there
it comes from a FAISS IVF-Flat index built for the purpose: an all-points graph at 100k
is 10^10 distance pairs exactly (minutes on a few cores), while an inverted file
with ~4·√N lists, of which `nprobe` are scanned, visits a few percent of them. A map needs
neighbourhoods, not exact ranks; `graph_recall` measures how many exact neighbours it
kept (bench/bench_map_scale.py prints it; tested on clustered points).

FAISS is optional: without it the exact graph is used at every size (slower, same result)."""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

APPROXIMATE_FROM = 20_000  # points; below this the exact graph takes seconds
IVF_LISTS_PER_SQRT_N = 4  # lists = 4·√N (FAISS's rule of thumb is 4–16·√N)
IVF_NPROBE = 16  # lists scanned per point: recall@15 ≥ 0.95 on clustered data (tested)
TRAIN_POINTS_PER_LIST = 64  # k-means training sample: enough per centroid, bounded cost
ROWS_PER_SEARCH = 8192  # bounds the (rows, k) result arrays of one FAISS call


def knn_graph(x: np.ndarray, k: int, *, approximate: bool | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64, distances float32), each (N, k), nearest first, column 0 the point
    itself at distance 0. `approximate`: None = from `APPROXIMATE_FROM` points when FAISS
    is installed; True / False force it."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = int(min(k, len(x)))
    if approximate is None:
        approximate = len(x) >= APPROXIMATE_FROM and _faiss_available()
    return _ivf_graph(x, k, seed) if approximate else _exact_graph(x, k)


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        log.info("faiss is not installed: the map's neighbour graph is computed exactly")
        return False
    return True


def _exact_graph(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from .search import ExactIndex

    index = ExactIndex(x, "euclidean")
    indices, distances = _self_first(len(x), k)
    block = 4096  # bounded memory for the neighbour arrays of large sets
    for start in range(0, len(x), block):
        rows = np.arange(start, min(start + block, len(x)))
        found, dist = index.search(x[rows], k - 1, exclude=rows)
        indices[rows, 1:1 + found.shape[1]], distances[rows, 1:1 + found.shape[1]] = found, dist
    return indices, distances


def _self_first(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.empty((n, k), np.int64)
    indices[:, 0] = np.arange(n)
    return indices, np.zeros((n, k), np.float32)


def ivf_lists(n: int) -> int:
    return max(1, min(n // 39, int(IVF_LISTS_PER_SQRT_N * math.sqrt(n))))  # FAISS wants ≥ 39 points a list


def _ivf_graph(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    n, dim = x.shape
    lists = ivf_lists(n)
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_L2)
    sample = min(n, lists * TRAIN_POINTS_PER_LIST)
    rng = np.random.default_rng(seed)
    index.cp.seed = seed  # k-means start: the same points give the same graph
    index.train(x[np.sort(rng.choice(n, sample, replace=False))] if sample < n else x)
    index.add(x)
    index.nprobe = min(IVF_NPROBE, lists)
    indices, distances = _self_first(n, k)
    for start in range(0, n, ROWS_PER_SEARCH):
        stop = min(start + ROWS_PER_SEARCH, n)
        squared, found = index.search(x[start:stop], k)  # k + self: the point itself is among them
        _drop_self(np.arange(start, stop), found, np.sqrt(np.maximum(squared, 0)), indices[start:stop], distances[start:stop])
    return indices, distances


def _drop_self(rows: np.ndarray, found: np.ndarray, dist: np.ndarray, out_idx: np.ndarray, out_dist: np.ndarray) -> None:
    """Fill columns 1.. of each row with its found neighbours other than itself, in order
    (where FAISS found too few, -1, the row's farthest real neighbour is repeated: UMAP
    needs k columns)."""
    keep = (found != rows[:, None]) & (found >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :out_idx.shape[1] - 1]  # kept ones first, in rank order
    idx, d, ok = (np.take_along_axis(a, order, axis=1) for a in (found, dist, keep))
    n_ok = ok.sum(1)
    short = np.flatnonzero(n_ok < ok.shape[1])
    for r in short:  # rare: a point in a sparse region of the probed lists
        last = n_ok[r] - 1
        idx[r, n_ok[r]:] = idx[r, last] if last >= 0 else rows[r]
        d[r, n_ok[r]:] = d[r, last] if last >= 0 else 0
    out_idx[:, 1:], out_dist[:, 1:] = idx, d


def graph_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Fraction of exact neighbours (column 1 on) the approximate graph found, per row."""
    hits = [len(set(a[1:].tolist()) & set(e[1:].tolist())) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / max(1, exact[:, 1:].size))
