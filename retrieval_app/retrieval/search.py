"""k-nearest-neighbour indexes over an (N, D) gallery of embeddings.

`ExactIndex` (chunked matrix products, then exact distances for the k kept) is the
default and is exact. `FaissIndex` (optional extra `retrieval-app[faiss]`, imported only
when used) is chosen automatically from `FAISS_THRESHOLD` vectors, where an exact query
starts to cost milliseconds. Both rank by the distance the model was trained with:
Euclidean, or cosine (1 − cos; computed as an inner product of normalised vectors)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np

from ..choices import SEARCH_BACKENDS
from ..errors import RetrievalAppError

log = logging.getLogger(__name__)

BACKENDS = SEARCH_BACKENDS
SEARCH_DISTANCES = ("euclidean", "cosine")
FAISS_THRESHOLD = 50_000  # "auto" switches to FAISS from this many vectors
# Distance matrix entries computed at once by the exact search (64 MB of float32): keeps
# memory flat whatever the number of queries and the gallery size.
EXACT_BLOCK_ENTRIES = 16 * 1024 * 1024
FAISS_INSTALL_HINT = "FAISS is not installed: pip install 'retrieval-app[faiss]' (or use the exact backend)"


def search_distance(train_distance: str) -> str:
    """The distance neighbours are ranked by, given the one the model was trained with.

    Squared Euclidean ranks exactly like Euclidean; other training distances (L∞, a
    custom callable) have no index support, and Euclidean is the closest stand-in."""
    return "cosine" if train_distance == "cosine" else "euclidean"


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class NearestNeighbourIndex(ABC):
    """A searchable gallery: `size` vectors of `dim` dimensions, ranked by `distance`."""

    distance: str
    size: int
    dim: int

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(indices, distances)`, each (M, k') with k' = min(k, what is available),
        nearest first. `exclude[i]` is a gallery index query i must not return (the
        query itself when it is a gallery item), or -1 for none."""

    def _check_queries(self, queries: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray | None]:
        """Queries as contiguous float32 (M, dim), the k that can be served, exclude as int64."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise RetrievalAppError(f"k must be a positive whole number, not {k!r}")
        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise RetrievalAppError(f"query vectors have shape {queries.shape}; this index holds {self.dim}-dimensional vectors")
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
            if len(exclude) != len(queries):
                raise RetrievalAppError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        available = self.size - (1 if exclude is not None and (exclude >= 0).any() else 0)
        k = min(int(k), max(available, 0))
        if self.distance == "cosine":
            queries = np.ascontiguousarray(normalise_rows(queries))
        return queries, k, exclude


def _check_distance(distance: str) -> str:
    if distance not in SEARCH_DISTANCES:
        raise RetrievalAppError(f"search distance must be one of {', '.join(SEARCH_DISTANCES)}, not {distance!r}")
    return distance


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or len(vectors) == 0:
        raise RetrievalAppError(f"an index needs a non-empty (N, D) array of vectors, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise RetrievalAppError("the gallery embeddings contain NaN or infinite values")
    return vectors


class ExactIndex(NearestNeighbourIndex):
    """Brute force: a matrix product per block of queries, a partial sort for the top k,
    then the exact distances of those k (the expanded form |q|² − 2q·x + |x|² loses
    precision near 0, so a gallery image queried by itself would not come out at 0)."""

    def __init__(self, vectors: np.ndarray, distance: str = "euclidean") -> None:
        self.distance = _check_distance(distance)
        vectors = _check_vectors(vectors)
        self.vectors = np.ascontiguousarray(normalise_rows(vectors)) if distance == "cosine" else vectors
        self.squared_norms = np.einsum("ij,ij->i", self.vectors, self.vectors)
        self.size, self.dim = self.vectors.shape

    def search(self, queries, k, *, exclude=None):
        queries, k, exclude = self._check_queries(queries, k, exclude)
        indices = np.zeros((len(queries), k), dtype=np.int64)
        distances = np.zeros((len(queries), k), dtype=np.float32)
        if k == 0:
            return indices, distances
        block = max(1, EXACT_BLOCK_ENTRIES // self.size)
        for start in range(0, len(queries), block):
            rows = slice(start, start + block)
            own = None if exclude is None else exclude[rows]
            indices[rows], distances[rows] = self._search_block(queries[rows], k, own)
        return indices, distances

    def _search_block(self, queries: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        scores = self._ranking_scores(queries)
        if exclude is not None:
            valid = exclude >= 0
            scores[np.flatnonzero(valid), exclude[valid]] = np.inf
        candidates = np.argpartition(scores, k - 1, axis=1)[:, :k] if k < self.size else np.tile(np.arange(self.size), (len(queries), 1))
        exact = self._exact_distances(queries, candidates)
        order = np.lexsort((candidates, exact), axis=1)  # by distance, ties by index
        return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(exact, order, axis=1)

    def _ranking_scores(self, queries: np.ndarray) -> np.ndarray:
        """Monotone in the distance: −q·x for cosine, |x|² − 2q·x for Euclidean."""
        dots = queries @ self.vectors.T
        if self.distance == "cosine":
            return np.negative(dots, out=dots)
        dots *= -2.0
        dots += self.squared_norms[None, :]
        return dots

    def _exact_distances(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        chosen = self.vectors[candidates]  # (M, k, D)
        if self.distance == "cosine":
            return np.clip(1.0 - np.einsum("md,mkd->mk", queries, chosen), 0.0, 2.0).astype(np.float32)
        return np.linalg.norm(chosen - queries[:, None, :], axis=2).astype(np.float32)


class FaissIndex(NearestNeighbourIndex):
    """FAISS HNSW graph (M=32) over L2, or inner product on normalised vectors for cosine.

    Why HNSW: it needs no training and is robust on small and odd sets, where IVF lists
    lose recall (measured: IVF-Flat, nlist 4·√N, nprobe 64 reached 0.78 top-10 recall on
    3,000 random vectors, HNSW 1.00). With efConstruction 80 and efSearch 256 (at least
    4·k), on 100k clustered 128-d vectors: build 5 s, 0.2 ms per query, recall@10 1.00;
    on 100k random unit vectors (the worst case, no structure) 0.86."""

    def __init__(self, vectors: np.ndarray, distance: str = "euclidean", *, m: int = 32, ef_construction: int = 80, ef_search: int = 256) -> None:
        faiss = import_faiss()
        self.distance = _check_distance(distance)
        vectors = _check_vectors(vectors)
        if distance == "cosine":
            vectors = np.ascontiguousarray(normalise_rows(vectors))
        self.size, self.dim = vectors.shape
        metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
        self.index = faiss.IndexHNSWFlat(self.dim, m, metric)
        self.index.hnsw.efConstruction = ef_construction
        self.ef_search = ef_search
        self.index.add(vectors)

    def search(self, queries, k, *, exclude=None):
        queries, k, exclude = self._check_queries(queries, k, exclude)
        if k == 0:
            return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        extra = 0 if exclude is None else 1
        wanted = min(k + extra, self.size)
        self.index.hnsw.efSearch = max(self.ef_search, 4 * wanted)
        raw_d, raw_i = self.index.search(queries, wanted)
        raw_d = np.clip(1.0 - raw_d, 0.0, 2.0) if self.distance == "cosine" else np.sqrt(np.clip(raw_d, 0.0, None))
        indices, distances, short = _drop_excluded(raw_i, raw_d.astype(np.float32), exclude, k)
        if short.any():  # rare: the graph search returned too few; answer those exactly
            own = None if exclude is None else exclude[short]
            indices[short], distances[short] = self._exact_fallback().search(queries[short], k, exclude=own)
        return indices, distances

    def _exact_fallback(self) -> ExactIndex:
        if getattr(self, "_exact", None) is None:
            self._exact = ExactIndex(self.index.reconstruct_n(0, self.size), self.distance)
        return self._exact


def _drop_excluded(raw_i: np.ndarray, raw_d: np.ndarray, exclude: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's first k results that are real (FAISS pads with -1) and not excluded,
    and a mask of the rows that have fewer than k such results."""
    keep = raw_i >= 0
    if exclude is not None:
        keep &= raw_i != exclude[:, None]
    indices = np.zeros((len(raw_i), k), dtype=np.int64)
    distances = np.zeros((len(raw_i), k), dtype=np.float32)
    short = keep.sum(1) < k
    for row in np.flatnonzero(~short):
        indices[row] = raw_i[row][keep[row]][:k]
        distances[row] = raw_d[row][keep[row]][:k]
    return indices, distances, short


def import_faiss():
    """The faiss module, or ImportError when the optional extra is not installed."""
    import faiss  # noqa: PLC0415 - optional dependency, imported only when used

    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def build_index(vectors: np.ndarray, distance: str = "euclidean", backend: str = "auto") -> NearestNeighbourIndex:
    """`exact`, `faiss`, or `auto`: FAISS from `FAISS_THRESHOLD` vectors when it is
    installed, exact search otherwise (with a logged note when FAISS would have helped)."""
    if backend not in BACKENDS:
        raise RetrievalAppError(f"search backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    want_faiss = backend == "faiss" or (backend == "auto" and len(vectors) >= FAISS_THRESHOLD)
    if want_faiss:
        try:
            return FaissIndex(vectors, distance)
        except ImportError:
            if backend == "faiss":
                raise RetrievalAppError(FAISS_INSTALL_HINT) from None
            log.info("faiss is not installed; exact search over %d vectors (pip install 'retrieval-app[faiss]' for faster queries)", len(vectors))
    return ExactIndex(vectors, distance)
