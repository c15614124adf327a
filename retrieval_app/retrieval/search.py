"""k-nearest-neighbour search over an (N, D) gallery of embeddings: the interface every
index backend implements, and exact search.

Every index holds `size` vectors, each under an int64 *label* it was given (a fresh
build labels the vectors 0..N-1, so labels are positions; a saved index keeps the labels
of its vectors across incremental updates, see `index_store.py`). `search` returns labels
and distances, nearest first, ties by label.

`ExactIndex` is exact. For one query at a time a search is a pass over all the vectors,
so its speed is the machine's memory bandwidth: with FAISS installed it scans a float16
copy (half the bytes) and re-ranks the best candidates with the float32 vectors, and a
bound on the float16 rounding error proves that the re-ranked top k is the exact top k
(a query without that proof is answered from float32, so results never differ). Many
queries at once go through float32 matrix products instead (compute-bound there: the
pass over memory is shared by the block of queries).

Both distances: Euclidean, or cosine (1 − cos; an inner product of normalised vectors).
The approximate backends live in `ann.py`, the registry that chooses among them in
`indexes.py`."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from contextlib import contextmanager

import numpy as np

from ..choices import SEARCH_BACKENDS
from ..errors import RetrievalAppError

log = logging.getLogger(__name__)

BACKENDS = SEARCH_BACKENDS
SEARCH_DISTANCES = ("euclidean", "cosine")
# Distance matrix entries computed at once by the exact search (64 MB of float32): keeps
# memory flat whatever the number of queries and the gallery size.
EXACT_BLOCK_ENTRIES = 16 * 1024 * 1024
# Up to this many queries in one call, exact search scans float16 (bandwidth-bound);
# from there on a block of queries shares each pass, and float32 BLAS is faster.
FP16_MAX_QUERIES = 8
# Candidates re-ranked in float32 per wanted neighbour: the float16 pass keeps the best
# RERANK_FACTOR · k, enough for the error bound to prove the top k almost always.
RERANK_FACTOR = 4
FP16_MAX_ABS = 60000.0  # float16 overflows at 65504: larger values search in float32
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
    """A searchable set of `size` labelled vectors of `dim` dimensions, ranked by `distance`.

    `backend` names the registry entry; `recall` is the recall@10 against exact search
    measured when the index was built or last updated (1.0 for exact search); `params`
    the parameters it was built and is searched with."""

    backend: str = ""
    distance: str
    dim: int
    recall: float = 1.0
    params: dict

    @property
    @abstractmethod
    def size(self) -> int:
        """Vectors that a search can return."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(labels, distances)`, each (M, k') with k' = min(k, what is available),
        nearest first. `exclude[i]` is a label query i must not return (the query
        itself when it is in the index), or -1 for none."""

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Insert vectors under new labels."""
        raise RetrievalAppError(f"the {self.backend} index cannot be updated")

    def remove(self, labels: np.ndarray) -> None:
        """Drop the vectors with these labels."""
        raise RetrievalAppError(f"the {self.backend} index cannot be updated")

    def needs_rebuild(self) -> bool:
        """True when updates have degraded the index enough that a fresh build pays."""
        return False

    def calibrate(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Re-tune the search-time parameter on the indexed `vectors` (exact: nothing to tune)."""

    def describe(self) -> str:
        """One line for people: the backend, its parameters and measured recall."""
        return self.backend

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that `indexes.restore_index` turns back into this index."""
        raise NotImplementedError

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


def check_distance(distance: str) -> str:
    if distance not in SEARCH_DISTANCES:
        raise RetrievalAppError(f"search distance must be one of {', '.join(SEARCH_DISTANCES)}, not {distance!r}")
    return distance


def check_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Contiguous float32 (N, D), finite; N may be 0 only when `dim` is given (an update)."""
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or (len(vectors) == 0 and dim is None):
        raise RetrievalAppError(f"an index needs a non-empty (N, D) array of vectors, got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise RetrievalAppError(f"vectors have {vectors.shape[1]} dimensions; this index holds {dim}-dimensional ones")
    if not np.isfinite(vectors).all():
        raise RetrievalAppError("the gallery embeddings contain NaN or infinite values")
    return vectors


def check_labels(labels: np.ndarray | None, n: int) -> np.ndarray:
    if labels is None:
        return np.arange(n, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != n:
        raise RetrievalAppError(f"{len(labels)} labels for {n} vectors")
    return labels


def sort_by_distance(labels: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row nearest first, ties by label (so equal inputs give equal outputs)."""
    order = np.lexsort((labels, distances), axis=1)
    return np.take_along_axis(labels, order, axis=1), np.take_along_axis(distances, order, axis=1)


class ExactIndex(NearestNeighbourIndex):
    """Brute force. Candidates come from a matrix product per block of queries (or, for a
    few queries, from the float16 scan), then the exact distances of the candidates are
    computed from the float32 vectors (the expanded form |q|² − 2q·x + |x|² loses
    precision near 0, so a gallery image queried by itself would not come out at 0).

    `precision`: "float16" scans a float16 copy for up to `FP16_MAX_QUERIES` queries
    (needs FAISS, whose scan converts float16 in SIMD registers; NumPy has no float16
    matrix product), "float32" never does, "auto" = float16 when FAISS is there and the
    values fit."""

    backend = "exact"

    def __init__(self, vectors: np.ndarray, distance: str = "euclidean", labels: np.ndarray | None = None, *, precision: str = "auto") -> None:
        self.distance = check_distance(distance)
        vectors = check_vectors(vectors)
        self.vectors = np.ascontiguousarray(normalise_rows(vectors)) if distance == "cosine" else vectors
        self.labels = check_labels(labels, len(vectors))
        self.dim = self.vectors.shape[1]
        if precision not in ("auto", "float16", "float32"):
            raise RetrievalAppError(f"precision must be auto, float16 or float32, not {precision!r}")
        self.requested_precision = precision
        # Why `auto` chose exact search, when it measured that (shown by `describe`, saved).
        self.note = ""
        self._derive()

    def _derive(self) -> None:
        """What follows from the vectors: norms, the label lookup, the float16 scan (lazily)."""
        self.squared_norms = np.einsum("ij,ij->i", self.vectors, self.vectors)
        self._rows_of = None
        self._scan = None
        self.precision = self._choose_precision()

    def _choose_precision(self) -> str:
        if self.requested_precision == "float32":
            return "float32"
        fits = len(self.vectors) == 0 or float(np.abs(self.vectors).max()) < FP16_MAX_ABS
        if self.requested_precision == "float16" and not fits:
            raise RetrievalAppError(f"these vectors hold values beyond float16's range (±{FP16_MAX_ABS:g}); use precision='float32'")
        if not fits or not faiss_available():
            if self.requested_precision == "float16":
                raise RetrievalAppError(FAISS_INSTALL_HINT)
            return "float32"
        return "float16"

    @property
    def size(self) -> int:
        return len(self.vectors)

    @property
    def params(self) -> dict:
        return {"precision": self.precision}

    def describe(self) -> str:
        scan = "float16 scan + float32 re-rank" if self.precision == "float16" else "float32"
        return f"exact search ({scan})" + (f"; {self.note}" if self.note else "")

    # ------------------------------------------------------------------ updates
    def add(self, vectors, labels):
        vectors = check_vectors(vectors, self.dim)
        if self.distance == "cosine":
            vectors = normalise_rows(vectors)
        self.vectors = np.ascontiguousarray(np.concatenate([self.vectors, vectors]))
        self.labels = np.concatenate([self.labels, check_labels(labels, len(vectors))])
        self._derive()

    def remove(self, labels):
        keep = ~np.isin(self.labels, np.asarray(labels, dtype=np.int64))
        self.vectors, self.labels = np.ascontiguousarray(self.vectors[keep]), self.labels[keep]
        self._derive()

    def state(self):
        return {"vectors": self.vectors, "labels": self.labels, "precision": np.str_(self.requested_precision), "note": np.str_(self.note)}

    @classmethod
    def from_state(cls, state: dict, distance: str) -> "ExactIndex":
        index = cls(state["vectors"], distance, state["labels"], precision=str(state["precision"]))
        index.note = str(state["note"]) if "note" in state else ""  # files saved before notes have none
        return index

    # ------------------------------------------------------------------ search
    def search(self, queries, k, *, exclude=None):
        queries, k, exclude = self._check_queries(queries, k, exclude)
        rows_out = np.zeros((len(queries), k), dtype=np.int64)
        distances = np.zeros((len(queries), k), dtype=np.float32)
        if k == 0:
            return rows_out, distances
        own = None if exclude is None else self._rows_of_labels(exclude)
        todo = np.arange(len(queries))
        if self.precision == "float16" and len(queries) <= FP16_MAX_QUERIES:
            proven, rows, dist = self._search_fp16(queries, k, own)
            rows_out[proven], distances[proven] = rows, dist
            todo = np.flatnonzero(~proven)
        block = max(1, EXACT_BLOCK_ENTRIES // max(self.size, 1))
        for start in range(0, len(todo), block):
            part = todo[start:start + block]
            rows_out[part], distances[part] = self._search_block(queries[part], k, None if own is None else own[part])
        return sort_by_distance(self.labels[rows_out], distances)

    def _rows_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """Row of each label (−1: not in the index, or −1 given)."""
        if self._rows_of is None:  # labels are small non-negative ints: an array lookup
            self._rows_of = np.full(int(self.labels.max()) + 2 if len(self.labels) else 1, -1, dtype=np.int64)
            self._rows_of[self.labels] = np.arange(len(self.labels))
        labels = np.asarray(labels, dtype=np.int64)
        inside = (labels >= 0) & (labels < len(self._rows_of) - 1)
        return np.where(inside, self._rows_of[np.where(inside, labels, len(self._rows_of) - 1)], -1)

    def _search_block(self, queries: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        scores = self._ranking_scores(queries)
        if exclude is not None:
            valid = exclude >= 0
            scores[np.flatnonzero(valid), exclude[valid]] = np.inf
        candidates = np.argpartition(scores, k - 1, axis=1)[:, :k] if k < self.size else np.tile(np.arange(self.size), (len(queries), 1))
        exact = self._exact_distances(queries, candidates)
        if exclude is not None:  # k == size - 1: the excluded row is among the candidates
            exact[candidates == exclude[:, None]] = np.inf
        return self._best(candidates, exact, k)

    def _best(self, rows: np.ndarray, exact: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest of each row's candidates, ties by label."""
        order = np.lexsort((self.labels[rows], exact), axis=1)[:, :k]
        return np.take_along_axis(rows, order, axis=1), np.take_along_axis(exact, order, axis=1)

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

    # ------------------------------------------------------------------ float16
    def _search_fp16(self, queries: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(proven mask, rows, distances): the float16 pass keeps R candidates, the float32
        re-rank orders them, and the top k is proven exact when its k-th distance is below
        what any vector outside the candidates can reach.

        The bound: x̃ = float16(x) differs from x by at most e = max‖x − x̃‖ (measured when
        the copy is made), so by the triangle inequality (and |q·e| ≤ ‖q‖e = e for a unit
        query in the cosine case) the true distance of any vector is at least its float16
        distance minus e. Every vector outside the candidates has a float16 distance ≥ the
        R-th candidate's, d̃_R; if the k-th re-ranked distance is < d̃_R − e (minus a
        float32 rounding allowance) none of them can enter the top k."""
        scan, max_error = self._fp16_scan()
        r = min(self.size, RERANK_FACTOR * k + 1)
        with single_query_threads(import_faiss(), len(queries)):
            raw, rows = scan.search(queries, r)
        approx = np.clip(1.0 - raw, 0.0, 2.0) if self.distance == "cosine" else np.sqrt(np.maximum(raw, 0.0))
        rows = np.where(rows < 0, 0, rows)  # never happens with r ≤ size; keeps indexing safe
        exact = self._exact_distances(queries, rows)
        if exclude is not None:
            exact[rows == exclude[:, None]] = np.inf
        best_rows, best = self._best(rows, exact, k)
        kth = best[:, -1]
        threshold = approx[:, -1] - max_error - 1e-5 * (1.0 + approx[:, -1])
        proven = (kth < threshold) | (r == self.size)
        return proven, best_rows[proven], best[proven]

    def _fp16_scan(self):
        """The float16 copy (a FAISS scalar-quantizer index, made on first use) and its
        largest rounding error ‖x − x̃‖ over the rows."""
        if self._scan is None:
            faiss = import_faiss()
            metric = faiss.METRIC_INNER_PRODUCT if self.distance == "cosine" else faiss.METRIC_L2
            scan = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, metric)
            scan.add(self.vectors)
            max_error = 0.0
            for start in range(0, self.size, 65536):  # bounded temporary memory
                stop = min(start + 65536, self.size)
                error = scan.reconstruct_n(start, stop - start) - self.vectors[start:stop]
                max_error = max(max_error, float(np.sqrt(np.einsum("ij,ij->i", error, error).max())))
            self._scan = (scan, max_error * 1.0001)
        return self._scan


def drop_excluded(raw_i: np.ndarray, raw_d: np.ndarray, exclude: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


@contextmanager
def single_query_threads(faiss, n_queries: int):
    """FAISS calls for a few queries run on one OpenMP thread: FAISS splits the work by
    query, so more threads only wait at the region's barrier, and on a busy machine that
    wait measured 2–3× the search (OpenMP's thread count is a per-calling-thread setting,
    so other threads' searches are unaffected)."""
    if n_queries > FP16_MAX_QUERIES:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


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
    """An index over `vectors` labelled by position (see `indexes.build_index`)."""
    from .indexes import build_index as build  # noqa: PLC0415 - the registry imports this module

    return build(vectors, distance, backend)
