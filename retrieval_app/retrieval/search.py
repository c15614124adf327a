"""k-nearest-neighbour indexes over an (N, D) gallery.

`ExactIndex` (chunked matrix products) is the default and exact. `FaissIndex` (optional
extra `retrieval-app[faiss]`) is chosen automatically for large galleries: an HNSW graph
whose search settings are high enough that its top-10 agrees with exact search."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import RetrievalAppError

log = logging.getLogger(__name__)
FAISS_THRESHOLD = 50_000  # "auto" switches to FAISS from this many vectors
QUERY_CHUNK = 2048
SEARCH_DISTANCES = ("euclidean", "cosine")


def search_distance(train_distance: str) -> str:
    """Neighbours are ranked by the distance the model was trained with; squared
    Euclidean ranks like Euclidean, and custom distances fall back to Euclidean."""
    return "cosine" if train_distance == "cosine" else "euclidean"


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class NearestNeighbourIndex:
    distance: str
    size: int

    def search(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances), each (M, k), nearest first. `exclude[i]` is a gallery
        index that query i must not return (itself), or -1."""
        raise NotImplementedError


class ExactIndex(NearestNeighbourIndex):
    def __init__(self, vectors: np.ndarray, distance: str = "euclidean") -> None:
        if distance not in SEARCH_DISTANCES:
            raise RetrievalAppError(f"search distance must be one of {SEARCH_DISTANCES}")
        self.distance = distance
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if distance == "cosine":
            self.vectors = _normalise(self.vectors)
        self.squared_norms = (self.vectors ** 2).sum(1)
        self.size = len(self.vectors)

    def search(self, queries, k, *, exclude=None):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.distance == "cosine":
            queries = _normalise(queries)
        k = min(k, self.size - (1 if exclude is not None else 0))
        indices = np.zeros((len(queries), max(k, 0)), dtype=np.int64)
        distances = np.zeros((len(queries), max(k, 0)), dtype=np.float32)
        if k <= 0:
            return indices, distances
        for start in range(0, len(queries), QUERY_CHUNK):
            rows = slice(start, start + QUERY_CHUNK)
            d = self._distances(queries[rows])
            if exclude is not None:
                own = exclude[rows]
                valid = own >= 0
                d[np.flatnonzero(valid), own[valid]] = np.inf
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
            part_d = np.take_along_axis(d, part, axis=1)
            order = np.argsort(part_d, axis=1, kind="stable")
            indices[rows] = np.take_along_axis(part, order, axis=1)
            distances[rows] = np.take_along_axis(part_d, order, axis=1)
        return indices, distances

    def _distances(self, queries: np.ndarray) -> np.ndarray:
        dots = queries @ self.vectors.T
        if self.distance == "cosine":
            return np.clip(1.0 - dots, 0.0, None)
        sq = (queries ** 2).sum(1, keepdims=True) - 2.0 * dots + self.squared_norms[None, :]
        return np.sqrt(np.clip(sq, 0.0, None))


class FaissIndex(NearestNeighbourIndex):
    """HNSW (M=32) over L2 or inner product; efSearch scales with k."""

    def __init__(self, vectors: np.ndarray, distance: str = "euclidean", *, m: int = 32, ef_construction: int = 200, ef_search: int = 256) -> None:
        import faiss  # optional extra

        self.faiss = faiss
        self.distance = distance
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if distance == "cosine":
            vectors = np.ascontiguousarray(_normalise(vectors))
        metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], m, metric)
        self.index.hnsw.efConstruction = ef_construction
        self.ef_search = ef_search
        self.index.add(vectors)
        self.size = len(vectors)

    def search(self, queries, k, *, exclude=None):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.distance == "cosine":
            queries = np.ascontiguousarray(_normalise(queries))
        extra = 1 if exclude is not None else 0
        k = min(k, self.size - extra)
        self.index.hnsw.efSearch = max(self.ef_search, 2 * (k + extra))
        raw_d, raw_i = self.index.search(queries, k + extra)
        if self.distance == "cosine":
            raw_d = np.clip(1.0 - raw_d, 0.0, None)
        else:
            raw_d = np.sqrt(np.clip(raw_d, 0.0, None))
        indices = np.zeros((len(queries), k), dtype=np.int64)
        distances = np.zeros((len(queries), k), dtype=np.float32)
        for row in range(len(queries)):
            keep = raw_i[row] >= 0
            if exclude is not None:
                keep &= raw_i[row] != exclude[row]
            found_i, found_d = raw_i[row][keep][:k], raw_d[row][keep][:k]
            indices[row, : len(found_i)], distances[row, : len(found_d)] = found_i, found_d
        return indices, distances


def build_index(vectors: np.ndarray, distance: str = "euclidean", backend: str = "auto") -> NearestNeighbourIndex:
    """`exact`, `faiss`, or `auto` (FAISS from FAISS_THRESHOLD vectors when installed)."""
    if backend not in ("auto", "exact", "faiss"):
        raise RetrievalAppError("search backend must be auto, exact or faiss")
    want_faiss = backend == "faiss" or (backend == "auto" and len(vectors) >= FAISS_THRESHOLD)
    if want_faiss:
        try:
            return FaissIndex(vectors, distance)
        except ImportError:
            if backend == "faiss":
                raise RetrievalAppError("FAISS is not installed: pip install 'retrieval-app[faiss]'") from None
            log.info("faiss not installed; using exact search for %d vectors", len(vectors))
    return ExactIndex(vectors, distance)
