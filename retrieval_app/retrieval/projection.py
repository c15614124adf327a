"""2-D maps of an embedding space: UMAP (default), PCA, t-SNE.

Maps are cached per (embedding fingerprint, method, parameters) under
`<cache_dir>/maps/`. umap-learn is imported only when a UMAP map is asked for: its numba
compilation (~20 s in a fresh process here) then never delays PCA, search or anything
else, and `NUMBA_CACHE_DIR` points into our cache so compiled code is reused.

New points (a dropped query) are placed from their nearest gallery neighbours' map
positions (fast, works for every method); PCA also has an exact `transform`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_numpy_save
from ..errors import RetrievalAppError
from ..paths import cache_dir as default_cache_dir

log = logging.getLogger(__name__)
METHODS = ("umap", "pca", "tsne")
PRE_REDUCE_DIM = 50  # PCA first for UMAP/t-SNE on high-dimensional embeddings
MIN_POINTS = {"umap": 10, "tsne": 5, "pca": 2}
PLACEMENT_NEIGHBOURS = 5


@dataclass
class Projection:
    method: str
    coords: np.ndarray  # (N, 2) float32
    params: dict[str, Any]
    reference: np.ndarray  # the embeddings the map was made from (for placement)
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None  # (2, D) for exact PCA transform
    note: str = ""
    from_cache: bool = False
    _index: Any = field(default=None, repr=False)

    def transform(self, new_embeddings: np.ndarray, *, method: str = "auto") -> np.ndarray:
        """Map positions for new embeddings: exact for PCA, else (or with
        method="neighbours") the distance-weighted mean of the nearest points' positions."""
        new_embeddings = np.atleast_2d(np.asarray(new_embeddings, dtype=np.float32))
        if self.pca_components is not None and method == "auto":
            return ((new_embeddings - self.pca_mean) @ self.pca_components.T).astype(np.float32)
        return self.place_by_neighbours(new_embeddings)

    def place_by_neighbours(self, new_embeddings: np.ndarray, k: int = PLACEMENT_NEIGHBOURS) -> np.ndarray:
        from .search import ExactIndex

        if self._index is None:
            self._index = ExactIndex(self.reference, "euclidean")
        indices, distances = self._index.search(new_embeddings, min(k, len(self.reference)))
        weights = 1.0 / (distances + 1e-6)
        weights /= weights.sum(1, keepdims=True)
        return (weights[..., None] * self.coords[indices]).sum(1).astype(np.float32)


def embedding_fingerprint(embeddings: np.ndarray) -> str:
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    return hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()[:24]


def compute_projection(embeddings: np.ndarray, method: str = "umap", *, seed: int = 0, cache_dir: Path | None = None, use_cache: bool = True, **params) -> Projection:
    if method not in METHODS:
        raise RetrievalAppError(f"map method must be one of {', '.join(METHODS)}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(embeddings)
    note = ""
    if n < MIN_POINTS[method]:
        if n < MIN_POINTS["pca"]:
            raise RetrievalAppError(f"a map needs at least {MIN_POINTS['pca']} images")
        note = f"{method.upper()} needs at least {MIN_POINTS[method]} points; showing PCA instead"
        method = "pca"
    key_params = {"seed": seed, **params}
    path = _cache_path(embeddings, method, key_params, cache_dir)
    if use_cache:
        cached = _load(path, embeddings, method, key_params)
        if cached is not None:
            cached.note = note
            return cached
    projection = _FITTERS[method](embeddings, seed, params)
    projection.note = note
    if use_cache:
        _save(path, projection)
    return projection


def _pca_fit(embeddings: np.ndarray, seed: int, params: dict) -> Projection:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed).fit(embeddings)
    coords = pca.transform(embeddings).astype(np.float32)
    return Projection("pca", coords, {"seed": seed, **params}, embeddings, pca.mean_.astype(np.float32), pca.components_.astype(np.float32))


def _pre_reduce(embeddings: np.ndarray, seed: int) -> np.ndarray:
    if embeddings.shape[1] <= PRE_REDUCE_DIM or len(embeddings) <= PRE_REDUCE_DIM:
        return embeddings
    from sklearn.decomposition import PCA

    return PCA(n_components=PRE_REDUCE_DIM, random_state=seed).fit_transform(embeddings).astype(np.float32)


def ensure_numba_cache(cache_dir: Path | None = None) -> None:
    if "NUMBA_CACHE_DIR" not in os.environ:
        folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / "numba"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(folder)


def _umap_fit(embeddings: np.ndarray, seed: int, params: dict) -> Projection:
    ensure_numba_cache()
    import umap  # lazy: numba start-up is paid only by callers who want UMAP

    n_neighbors = min(int(params.get("n_neighbors", 15)), len(embeddings) - 1)
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=float(params.get("min_dist", 0.1)), random_state=seed, init="spectral" if len(embeddings) > n_neighbors + 2 else "random")
    coords = reducer.fit_transform(_pre_reduce(embeddings, seed)).astype(np.float32)
    return Projection("umap", coords, {"seed": seed, **params}, embeddings)


def _tsne_fit(embeddings: np.ndarray, seed: int, params: dict) -> Projection:
    from sklearn.manifold import TSNE

    perplexity = min(float(params.get("perplexity", 30.0)), max((len(embeddings) - 1) / 3.0, 1.0))
    coords = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(_pre_reduce(embeddings, seed))
    return Projection("tsne", coords.astype(np.float32), {"seed": seed, **params}, embeddings)


_FITTERS = {"pca": _pca_fit, "umap": _umap_fit, "tsne": _tsne_fit}


def _cache_path(embeddings: np.ndarray, method: str, params: dict, cache_dir: Path | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(json.dumps({"method": method, "params": params}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return base / "maps" / f"{embedding_fingerprint(embeddings)}-{method}-{key}.npz"


def _load(path: Path, embeddings: np.ndarray, method: str, params: dict) -> Projection | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            coords = data["coords"]
            if coords.shape != (len(embeddings), 2):
                raise ValueError("shape mismatch")
            mean = data["pca_mean"] if "pca_mean" in data else None
            components = data["pca_components"] if "pca_components" in data else None
        return Projection(method, coords, params, embeddings, mean, components, from_cache=True)
    except Exception as exc:
        log.warning("ignoring unreadable map cache %s (%s)", path, exc)
        return None


def _save(path: Path, projection: Projection) -> None:
    arrays = {"coords": projection.coords}
    if projection.pca_components is not None:
        arrays.update(pca_mean=projection.pca_mean, pca_components=projection.pca_components)
    try:
        atomic_numpy_save(path, **arrays)
    except OSError as exc:  # a read-only cache must not break the map
        log.warning("could not cache map at %s: %s", path, exc)


def warm_up_umap_in_background() -> threading.Thread:
    """Pay UMAP's numba compilation in a daemon thread, so a later map is quick."""

    def work() -> None:
        try:
            compute_projection(np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32), "umap", use_cache=False)
        except Exception as exc:  # warming up is best effort
            log.info("UMAP warm-up failed: %s", exc)

    thread = threading.Thread(target=work, name="umap-warm-up", daemon=True)
    thread.start()
    return thread
