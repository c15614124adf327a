"""The index backends users choose from (names in `choices.SEARCH_BACKENDS`), how `auto`
chooses, and building or restoring one.

| name | what | when `auto` picks it |
|---|---|---|
| `exact` | brute force (float16 scan + float32 re-rank, exact results) | below `EXACT_MAX_VECTORS` |
| `ivf_flat` | FAISS inverted lists of full vectors, nlist = 4·√N, nprobe tuned | from `EXACT_MAX_VECTORS`, unless slower than exact search (below) |
| `hnsw` | FAISS HNSW graph, efSearch tuned | never (slow to build at 1M; on request) |
| `ivf_pq` | FAISS inverted lists of 8-bit PQ codes (16× smaller) | when the float32 vectors would take more than `PQ_MEMORY_FRACTION` of RAM |

Why these thresholds (bench/bench_index.py): exact search is one pass over the vectors,
and at 50,000 × 128 float16 values (12.8 MB) that pass takes about a millisecond at the
memory bandwidth of a small machine; above, IVF-Flat answered 1M clustered vectors in
0.16 ms (p50) at recall@10 0.98 and needs no graph, where HNSW took 16 minutes to build
at 1M (issue 14). Without FAISS every choice but `exact` fails with the install hint,
and `auto` searches exactly (with a logged note).

But on data whose clusters overlap, the inverted lists do not narrow the search: at 1M
overlapping vectors IVF-Flat needed 1,493 of 4,000 lists for the recall target, 28 ms a
query against 17 ms for exact float16 search. So `auto` times its tuned IVF-Flat against
exact search on the tuning's own queries (`tuning.time_per_query`) and keeps exact search
when IVF is slower, saying why in the index's description."""

from __future__ import annotations

import logging
import os
from typing import Callable, NamedTuple

import numpy as np

from ..choices import SEARCH_BACKENDS
from ..errors import RetrievalAppError
from .search import FAISS_INSTALL_HINT, ExactIndex, NearestNeighbourIndex, faiss_available
from .tuning import time_per_query

log = logging.getLogger(__name__)

EXACT_MAX_VECTORS = 50_000  # `auto`: exact search below this many vectors
PQ_MEMORY_FRACTION = 0.5  # `auto`: IVF-PQ once float32 vectors would fill half the RAM


class Backend(NamedTuple):
    name: str
    title: str
    needs_faiss: bool
    build: Callable[..., NearestNeighbourIndex]  # (vectors, distance, labels) -> index
    restore: Callable[[dict, str], NearestNeighbourIndex]  # (state, distance) -> index


def _ann():
    from . import ann  # noqa: PLC0415 - imports faiss

    return ann


INDEX_BACKENDS: dict[str, Backend] = {
    "exact": Backend("exact", "exact search", False, lambda v, d, l: ExactIndex(v, d, l), ExactIndex.from_state),
    "ivf_flat": Backend("ivf_flat", "IVF-Flat", True, lambda v, d, l: _ann().IvfIndex.build(v, d, l), lambda s, d: _ann().IvfIndex.from_state(s, d)),
    "hnsw": Backend("hnsw", "HNSW", True, lambda v, d, l: _ann().HnswIndex.build(v, d, l), lambda s, d: _ann().HnswIndex.from_state(s, d)),
    "ivf_pq": Backend("ivf_pq", "IVF-PQ", True, lambda v, d, l: _ann().IvfIndex.build(v, d, l, pq=True), lambda s, d: _ann().IvfIndex.from_state(s, d)),
}
assert set(INDEX_BACKENDS) | {"auto"} == set(SEARCH_BACKENDS), "choices.SEARCH_BACKENDS and INDEX_BACKENDS disagree"


def memory_bytes() -> int | None:
    """Physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def resolve_backend(backend: str, n: int, dim: int) -> str:
    """The concrete backend for `n` vectors of `dim` dimensions (`auto` decides here)."""
    if backend not in SEARCH_BACKENDS:
        raise RetrievalAppError(f"search backend must be one of {', '.join(SEARCH_BACKENDS)}, not {backend!r}")
    if backend != "auto":
        if INDEX_BACKENDS[backend].needs_faiss and not faiss_available():
            raise RetrievalAppError(FAISS_INSTALL_HINT)
        return backend
    if n < EXACT_MAX_VECTORS:
        return "exact"
    if not faiss_available():
        log.info("faiss is not installed; exact search over %d vectors (pip install 'retrieval-app[faiss]' for faster queries)", n)
        return "exact"
    memory = memory_bytes()
    if memory is not None and n * dim * 4 > PQ_MEMORY_FRACTION * memory:
        return "ivf_pq"
    return "ivf_flat"


def build_index(vectors: np.ndarray, distance: str = "euclidean", backend: str = "auto", labels: np.ndarray | None = None) -> NearestNeighbourIndex:
    """A fresh index over `vectors`, labelled `labels` (default: their positions)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise RetrievalAppError(f"an index needs a non-empty (N, D) array of vectors, got shape {vectors.shape}")
    name = resolve_backend(backend, len(vectors), vectors.shape[1])
    index = INDEX_BACKENDS[name].build(vectors, distance, labels)
    if backend == "auto" and name == "ivf_flat":
        return faster_than_exact(index, vectors, distance, labels)
    return index


def faster_than_exact(index, vectors: np.ndarray, distance: str, labels: np.ndarray | None) -> NearestNeighbourIndex:
    """`index` (a tuned IVF), or exact search over the same vectors when a query through
    the index takes longer than one through exact search, timed on the queries it was
    tuned on; the exact index's `note` then says why."""
    exact = ExactIndex(vectors, distance, labels)
    index_s, exact_s = time_per_query([index, exact], index.sample)
    if index_s <= exact_s:
        return index
    title = INDEX_BACKENDS[index.backend].title
    exact.note = (f"auto chose it over {title}, which needed {index.nprobe:,} of {index.nlist:,} lists probed for recall@10 "
                  f"{index.recall:.3f} and then took {index_s * 1e3:.2f} ms a query against {exact_s * 1e3:.2f} ms for exact search "
                  f"(build-time sample, one query at a time)")
    log.info("search: %s", exact.note)
    return exact


def restore_index(name: str, state: dict, distance: str) -> NearestNeighbourIndex:
    """An index from the arrays its `state()` gave."""
    return INDEX_BACKENDS[name].restore(state, distance)
