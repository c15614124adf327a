"""Approximate nearest-neighbour indexes on FAISS (the optional extra
`retrieval-app[faiss]`, imported only when one is built): IVF-Flat, IVF-PQ and HNSW.

Each is built with parameters set from the data size, then its search-time knob is tuned
on sampled queries until recall@10 against exact search reaches 0.95 (`tuning.py`); the
recall reached is kept and shown. Each can be updated in place:
- IVF (Flat and PQ): vectors are added to the lists of their nearest centroid under
  their labels, and removed by label (`remove_ids`: a true removal). The centroids are
  trained on the data of the first build; once the index holds 4× more or fewer vectors
  than that, `needs_rebuild` says so and the caller builds afresh.
- HNSW: a graph cannot drop a node, so removals are tombstones (the search skips them
  through an ID selector) and the graph is rebuilt once they are a fifth of its nodes."""

from __future__ import annotations

import math

import numpy as np

from .search import NearestNeighbourIndex, check_distance, check_labels, check_vectors, drop_excluded, import_faiss, normalise_rows, single_query_threads, sort_by_distance
from .tuning import RecallProbe, knob_steps, tune

IVF_LISTS_PER_SQRT_N = 4  # nlist = 4·√N: lists of ~√N/4 vectors, a probe costs little
IVF_MIN_PER_LIST = 39  # FAISS's k-means wants ≥ 39 training points per centroid
IVF_TRAIN_PER_LIST = 40  # training sample: 40 points per list (k-means cost ∝ sample × nlist)
IVF_DRIFT = 4.0  # rebuild once the size is 4× above or below the trained size
PQ_DIMS_PER_CODE = 4  # IVF-PQ: one byte per 4 dimensions (128-d → 32 bytes, 16× smaller)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_CAP = 2048
HNSW_TOMBSTONE_LIMIT = 0.2


def _metric(faiss, distance: str):
    return faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2


def _to_distances(raw: np.ndarray, distance: str) -> np.ndarray:
    """FAISS's scores (inner products, or squared L2) as our distances."""
    out = np.clip(1.0 - raw, 0.0, 2.0) if distance == "cosine" else np.sqrt(np.clip(raw, 0.0, None))
    return out.astype(np.float32)


def _prepare(vectors: np.ndarray, distance: str, dim: int | None = None) -> np.ndarray:
    vectors = check_vectors(vectors, dim)
    return np.ascontiguousarray(normalise_rows(vectors)) if distance == "cosine" else vectors


def ivf_lists(n: int) -> int:
    """nlist from the data size: 4·√N, but no more lists than N / 39 allows training."""
    return max(1, min(int(round(IVF_LISTS_PER_SQRT_N * math.sqrt(n))), n // IVF_MIN_PER_LIST))


class IvfIndex(NearestNeighbourIndex):
    """FAISS IndexIVFFlat (`pq=False`) or IndexIVFPQ (`pq=True`: vectors stored as 8-bit
    product-quantizer codes, for collections that outgrow memory; its recall is limited
    by the codes, and the tuning stops at nprobe = nlist if 0.95 is out of reach)."""

    def __init__(self, index, distance: str, *, pq: bool, trained_size: int, nprobe: int = 1, recall: float = 1.0) -> None:
        self.index, self.distance, self.pq = index, distance, pq
        self.backend = "ivf_pq" if pq else "ivf_flat"
        self.dim, self.trained_size, self.nprobe, self.recall = index.d, trained_size, nprobe, recall
        self.sample: RecallProbe | None = None  # the last tuning's queries (`indexes` times them)

    @classmethod
    def build(cls, vectors: np.ndarray, distance: str = "euclidean", labels: np.ndarray | None = None, *, pq: bool = False, nlist: int | None = None, seed: int = 0) -> "IvfIndex":
        faiss = import_faiss()
        distance = check_distance(distance)
        vectors = _prepare(vectors, distance)
        labels = check_labels(labels, len(vectors))
        n, dim = vectors.shape
        nlist = nlist or ivf_lists(n)
        quantizer = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
        if pq:
            codes = max(1, dim // PQ_DIMS_PER_CODE)
            while dim % codes:
                codes -= 1
            # 8-bit codebooks want ~39·256 training points; smaller sets get fewer bits.
            bits = int(min(8, max(1, math.floor(math.log2(max(n // IVF_MIN_PER_LIST, 2))))))
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, codes, bits, _metric(faiss, distance))
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, _metric(faiss, distance))
        index.cp.seed = seed
        sample = max(IVF_TRAIN_PER_LIST * nlist, 256 * IVF_MIN_PER_LIST if pq else 0)
        rows = np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)
        index.train(vectors[np.sort(rows)])
        index.add_with_ids(vectors, labels)
        self = cls(index, distance, pq=pq, trained_size=n)
        self.calibrate(vectors, labels)
        return self

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "trained_size": self.trained_size}

    def describe(self) -> str:
        title = "IVF-PQ" if self.pq else "IVF-Flat"
        return f"{title} ({self.nlist:,} lists, {self.nprobe} probed), recall@10 {self.recall:.3f} against exact search"

    def calibrate(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        probe = RecallProbe(vectors, labels, self.distance)
        self.nprobe, self.recall = tune(self, probe, knob_steps(1, self.nlist), self._set_nprobe)
        self.sample = probe

    def _set_nprobe(self, value: int) -> None:
        self.nprobe = value

    def search(self, queries, k, *, exclude=None):
        queries, k, exclude = self._check_queries(queries, k, exclude)
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        labels, distances, short = self._search(queries, k, exclude, self.nprobe)
        if short.any():  # the probed lists held fewer than k vectors: probe them all
            own = None if exclude is None else exclude[short]
            labels[short], distances[short], _ = self._search(queries[short], k, own, self.nlist)
        return sort_by_distance(labels, distances)

    def _search(self, queries, k, exclude, nprobe):
        faiss = import_faiss()
        wanted = min(k + (0 if exclude is None else 1), self.size)
        params = faiss.SearchParametersIVF()
        params.nprobe = min(nprobe, self.nlist)
        with single_query_threads(faiss, len(queries)):
            raw_d, raw_i = _search_with_params(self.index, queries, wanted, params)
        return drop_excluded(raw_i, _to_distances(raw_d, self.distance), exclude, k)

    def add(self, vectors, labels):
        vectors = _prepare(vectors, self.distance, self.dim)
        if len(vectors):
            self.index.add_with_ids(vectors, check_labels(labels, len(vectors)))

    def remove(self, labels):
        faiss = import_faiss()
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if len(labels):
            self.index.remove_ids(faiss.IDSelectorBatch(len(labels), faiss.swig_ptr(labels)))

    def needs_rebuild(self) -> bool:
        ratio = max(self.size, 1) / max(self.trained_size, 1)
        return ratio > IVF_DRIFT or ratio < 1 / IVF_DRIFT

    def state(self):
        faiss = import_faiss()
        return {"faiss": faiss.serialize_index(self.index), "pq": np.int64(self.pq), "trained_size": np.int64(self.trained_size), "nprobe": np.int64(self.nprobe), "recall": np.float64(self.recall)}

    @classmethod
    def from_state(cls, state: dict, distance: str) -> "IvfIndex":
        faiss = import_faiss()
        index = faiss.deserialize_index(np.asarray(state["faiss"], dtype=np.uint8))
        return cls(index, distance, pq=bool(state["pq"]), trained_size=int(state["trained_size"]), nprobe=int(state["nprobe"]), recall=float(state["recall"]))


class HnswIndex(NearestNeighbourIndex):
    """FAISS HNSW graph (M=32, efConstruction 80), efSearch tuned to the recall target
    (at least 4·k at search time). Labels and tombstones are kept here: FAISS numbers the
    graph's nodes in insertion order."""

    backend = "hnsw"

    def __init__(self, index, distance: str, labels: np.ndarray, dead: np.ndarray, *, ef_search: int = 64, recall: float = 1.0) -> None:
        self.index, self.distance = index, distance
        self.labels, self.dead = labels, dead
        self.dim, self.ef_search, self.recall = index.d, ef_search, recall
        self._node_of = None
        self._selector = None

    @classmethod
    def build(cls, vectors: np.ndarray, distance: str = "euclidean", labels: np.ndarray | None = None, *, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION) -> "HnswIndex":
        faiss = import_faiss()
        distance = check_distance(distance)
        vectors = _prepare(vectors, distance)
        labels = check_labels(labels, len(vectors))
        index = faiss.IndexHNSWFlat(vectors.shape[1], m, _metric(faiss, distance))
        index.hnsw.efConstruction = ef_construction
        index.add(vectors)
        self = cls(index, distance, labels.copy(), np.zeros(len(labels), dtype=bool))
        self.calibrate(vectors, labels)
        return self

    @property
    def size(self) -> int:
        return int(len(self.labels) - self.dead.sum())

    @property
    def params(self) -> dict:
        return {"M": HNSW_M, "efSearch": self.ef_search, "tombstones": int(self.dead.sum())}

    def describe(self) -> str:
        return f"HNSW (M {HNSW_M}, efSearch {self.ef_search}), recall@10 {self.recall:.3f} against exact search"

    def calibrate(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        probe = RecallProbe(vectors, labels, self.distance)
        self.ef_search, self.recall = tune(self, probe, knob_steps(16, HNSW_EF_CAP), self._set_ef)

    def _set_ef(self, value: int) -> None:
        self.ef_search = value

    def search(self, queries, k, *, exclude=None):
        queries, k, exclude = self._check_queries(queries, k, exclude)
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        faiss = import_faiss()
        wanted = min(k + (0 if exclude is None else 1), self.size)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, 4 * wanted)
        if self.dead.any():
            params.sel = self._tombstone_selector()
        with single_query_threads(faiss, len(queries)):
            raw_d, nodes = _search_with_params(self.index, queries, wanted, params)
        raw_labels = np.where(nodes >= 0, self.labels[np.maximum(nodes, 0)], -1)
        labels, distances, short = drop_excluded(raw_labels, _to_distances(raw_d, self.distance), exclude, k)
        if short.any():  # rare: the graph search returned too few; answer those exactly
            own = None if exclude is None else exclude[short]
            labels[short], distances[short] = self._exact_fallback().search(queries[short], k, exclude=own)
        return sort_by_distance(labels, distances)

    def _tombstone_selector(self):
        """An ID selector that skips the dead nodes (kept alive with this object)."""
        if self._selector is None:
            faiss = import_faiss()
            dead = np.ascontiguousarray(np.flatnonzero(self.dead), dtype=np.int64)
            batch = faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead))
            self._selector = (faiss.IDSelectorNot(batch), batch, dead)
        return self._selector[0]

    def _exact_fallback(self):
        from .search import ExactIndex

        live = np.flatnonzero(~self.dead)
        vectors = self.index.reconstruct_n(0, self.index.ntotal)[live]
        return ExactIndex(vectors, self.distance, self.labels[live], precision="float32")

    def add(self, vectors, labels):
        vectors = _prepare(vectors, self.distance, self.dim)
        if len(vectors):
            self.index.add(vectors)
            self.labels = np.concatenate([self.labels, check_labels(labels, len(vectors))])
            self.dead = np.concatenate([self.dead, np.zeros(len(vectors), dtype=bool)])

    def remove(self, labels):
        self.dead |= np.isin(self.labels, np.asarray(labels, dtype=np.int64))
        self._selector = None

    def needs_rebuild(self) -> bool:
        return self.dead.sum() > HNSW_TOMBSTONE_LIMIT * len(self.dead)

    def state(self):
        faiss = import_faiss()
        return {"faiss": faiss.serialize_index(self.index), "labels": self.labels, "dead": self.dead, "ef_search": np.int64(self.ef_search), "recall": np.float64(self.recall)}

    @classmethod
    def from_state(cls, state: dict, distance: str) -> "HnswIndex":
        faiss = import_faiss()
        index = faiss.deserialize_index(np.asarray(state["faiss"], dtype=np.uint8))
        return cls(index, distance, np.asarray(state["labels"], np.int64), np.asarray(state["dead"], bool), ef_search=int(state["ef_search"]), recall=float(state["recall"]))


def _search_with_params(index, queries, k, params):
    """`index.search` with per-call parameters. `faiss.contrib.torch_utils` (which
    pytorch-metric-learning imports) replaces every index's `search` with one that takes no
    `params`; it keeps FAISS's own NumPy method as `search_numpy`."""
    search = getattr(index, "search_numpy", None) or index.search
    return search(queries, k, params=params)
