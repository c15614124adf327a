"""The index backends users choose from (names in `choices.SEARCH_BACKENDS`), how `auto`
chooses, and building or restoring one.

| name | what | when `auto` picks it |
|---|---|---|
| `exact` | brute force (float16 scan + float32 re-rank, exact results) | below `EXACT_MAX_VECTORS` |
| `ivf_flat` | FAISS inverted lists of full vectors, nlist = 4·√N, nprobe tuned | from `EXACT_MAX_VECTORS` |
| `hnsw` | FAISS HNSW graph, efSearch tuned | never (slow to build at 1M; on request) |
| `ivf_pq` | FAISS inverted lists of 8-bit PQ codes (16× smaller) | when the float32 vectors would take more than `PQ_MEMORY_FRACTION` of RAM |

Why these thresholds (bench/bench_index.py): exact search is one pass over the vectors,
and at 50,000 × 128 float16 values (12.8 MB) that pass takes about a millisecond at the
memory bandwidth of a small machine; above, IVF-Flat answered 1M clustered vectors in
0.16 ms (p50) at recall@10 0.98 and needs no graph, where HNSW took 16 minutes to build
at 1M (issue 14). Without FAISS every choice but `exact` fails with the install hint,
and `auto` searches exactly (with a logged note)."""

from __future__ import annotations

import logging
import os
from typing import Callable, NamedTuple

import numpy as np

from ..choices import SEARCH_BACKENDS
from ..errors import RetrievalAppError
from .search import FAISS_INSTALL_HINT, ExactIndex, NearestNeighbourIndex, faiss_available

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
    return INDEX_BACKENDS[name].build(vectors, distance, labels)


def restore_index(name: str, state: dict, distance: str) -> NearestNeighbourIndex:
    """An index from the arrays its `state()` gave."""
    return INDEX_BACKENDS[name].restore(state, distance)
