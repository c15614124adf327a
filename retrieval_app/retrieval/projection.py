"""2-D maps of an embedding space: UMAP (default), PCA, t-SNE.

- Seedable (`seed`), so the same embeddings give the same map.
- UMAP and t-SNE first reduce high-dimensional embeddings to `PRE_REDUCE_DIM` with PCA
  (cheaper, and the small variance directions they drop are mostly noise).
- UMAP gets its k-nearest-neighbour graph from us (`knn_graph.py`: exact below 20k
  points, a FAISS IVF-Flat index above): that skips umap-learn's NN-descent and its numba compilation, measured
  at 13 s instead of 39 s for a first 10k-point map in a fresh process. Pass
  `precomputed_knn=False` to let UMAP build its own graph and keep its `transform`.
- Maps are cached per (embedding fingerprint = hash of the array's bytes, method,
  parameters) under `<cache_dir>/maps/` (plain .npz, written atomically).
- umap-learn is imported only inside the UMAP fit, so its import and numba start-up
  (several seconds) never delay a caller that wants PCA or search; `NUMBA_CACHE_DIR`
  is pointed into our cache (when not set) so compiled code is reused across processes.
- Tiny sets: UMAP needs `MIN_POINTS["umap"]`, t-SNE `MIN_POINTS["tsne"]` points, else
  the map falls back to PCA with a `note`; fewer than 2 points is an error.
  `n_neighbors` and the perplexity are capped below N.

New points (a dropped query image) are placed by `Projection.transform`: exactly for
PCA; for UMAP and t-SNE at the distance-weighted mean of the map positions of their
`PLACEMENT_NEIGHBOURS` nearest gallery embeddings (milliseconds; a gallery image lands
on its own point). UMAP's own (slow, first call ~minutes) transform is available with
`method="model"` when the fitted model is at hand."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_numpy_save
from ..choices import PROJECTION_METHODS
from ..errors import RetrievalAppError
from ..paths import cache_dir as default_cache_dir

log = logging.getLogger(__name__)

METHODS = PROJECTION_METHODS
PRE_REDUCE_DIM = 50
MIN_POINTS = {"umap": 10, "tsne": 5, "pca": 2}
PLACEMENT_NEIGHBOURS = 5
DEFAULTS: dict[str, dict[str, Any]] = {
    "umap": {"n_neighbors": 15, "min_dist": 0.1, "precomputed_knn": True, "pre_reduce": True},
    "tsne": {"perplexity": 30.0, "pre_reduce": True},
    "pca": {},
}
MAP_CACHE_FORMAT = 1


@dataclass
class Projection:
    """A 2-D map: `coords` (N, 2) float32 for the `reference` embeddings it was made
    from, by `method` with the effective `params`. `note` says when a fallback was
    used; `from_cache` whether it was read from disk."""

    method: str
    coords: np.ndarray
    params: dict[str, Any]
    reference: np.ndarray
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None  # (2, D): exact transform for PCA maps
    note: str = ""
    from_cache: bool = False
    model: Any = field(default=None, repr=False)  # the fitted UMAP, when at hand
    pre_reduction: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _index: Any = field(default=None, repr=False)

    def transform(self, new_embeddings: np.ndarray, *, method: str = "auto") -> np.ndarray:
        """Map positions (M, 2) for new embeddings. `auto`: exact for PCA, neighbour
        placement otherwise; `neighbours`: always neighbour placement; `model`: the
        fitted UMAP's own transform (RetrievalAppError when it is not available)."""
        new_embeddings = np.atleast_2d(np.asarray(new_embeddings, dtype=np.float32))
        if new_embeddings.shape[1] != self.reference.shape[1]:
            raise RetrievalAppError(f"these embeddings have {new_embeddings.shape[1]} dimensions; the map was made from {self.reference.shape[1]}-dimensional ones")
        if method == "auto":
            method = "pca" if self.pca_components is not None else "neighbours"
        if method == "pca" and self.pca_components is not None:
            return ((new_embeddings - self.pca_mean) @ self.pca_components.T).astype(np.float32)
        if method == "neighbours":
            return self.place_by_neighbours(new_embeddings)
        if method == "model":
            return self._model_transform(new_embeddings)
        raise RetrievalAppError(f"transform method must be auto, neighbours or model (model: UMAP fitted here only), not {method!r}")

    def place_by_neighbours(self, new_embeddings: np.ndarray, k: int = PLACEMENT_NEIGHBOURS) -> np.ndarray:
        """The inverse-distance-weighted mean of the map positions of each point's k
        nearest reference embeddings (a reference point itself lands on its own spot)."""
        from .search import ExactIndex

        if self._index is None:
            self._index = ExactIndex(self.reference, "euclidean")
        indices, distances = self._index.search(np.atleast_2d(new_embeddings), min(k, len(self.reference)))
        weights = 1.0 / (distances.astype(np.float64) + 1e-9)
        weights /= weights.sum(1, keepdims=True)
        return (weights[..., None] * self.coords[indices]).sum(1).astype(np.float32)

    def _model_transform(self, new_embeddings: np.ndarray) -> np.ndarray:
        if self.model is None or not hasattr(self.model, "transform"):
            raise RetrievalAppError("this map has no fitted model to transform with (PCA, t-SNE, a cached map, or UMAP on a precomputed neighbour graph); use neighbour placement")
        reduced = _apply_reduction(new_embeddings, self.pre_reduction)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(self.model.transform(reduced), dtype=np.float32)


def embedding_fingerprint(embeddings: np.ndarray) -> str:
    """Hash of the array's shape and bytes (as float32)."""
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()[:24]


def compute_projection(embeddings: np.ndarray, method: str = "umap", *, seed: int = 0, cache_dir: str | Path | None = None, use_cache: bool = True, **params) -> Projection:
    """A 2-D map of `embeddings` (N, D) by `method` ("umap", "pca" or "tsne").

    Parameters: UMAP `n_neighbors` (15), `min_dist` (0.1), `precomputed_knn` (True),
    `pre_reduce` (True); t-SNE `perplexity` (30), `pre_reduce` (True). Cached on disk
    unless `use_cache=False`."""
    if method not in METHODS:
        raise RetrievalAppError(f"map method must be one of {', '.join(METHODS)}, not {method!r}")
    embeddings = _check_embeddings(embeddings)
    unknown = set(params) - set(DEFAULTS[method])
    if unknown:
        raise RetrievalAppError(f"unknown {method} parameter(s): {', '.join(sorted(unknown))} (known: {', '.join(DEFAULTS[method]) or 'none'})")
    note = ""
    if len(embeddings) < MIN_POINTS[method]:
        note = f"{method.upper() if method != 'tsne' else 't-SNE'} needs at least {MIN_POINTS[method]} points; showing PCA instead"
        method, params = "pca", {}
    settings = {"seed": int(seed), **DEFAULTS[method], **params}
    path = _cache_path(embeddings, method, settings, cache_dir)
    projection = _load(path, embeddings, method, settings) if use_cache else None
    if projection is None:
        projection = _FITTERS[method](embeddings, settings)
        if use_cache:
            _save(path, projection)
    projection.note = note
    return projection


def cached_projection(embeddings: np.ndarray, method: str = "umap", *, seed: int = 0, cache_dir: str | Path | None = None, **params) -> Projection | None:
    """The map `compute_projection` would return, when it is on disk already (else None):
    lets a caller show a cached UMAP at once instead of a quick map first."""
    if method not in METHODS or set(params) - set(DEFAULTS[method]):
        return None
    embeddings = _check_embeddings(embeddings)
    if len(embeddings) < MIN_POINTS[method]:
        return None
    settings = {"seed": int(seed), **DEFAULTS[method], **params}
    return _load(_cache_path(embeddings, method, settings, cache_dir), embeddings, method, settings)


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if embeddings.ndim != 2:
        raise RetrievalAppError(f"a map needs an (N, D) array of embeddings, got shape {embeddings.shape}")
    if len(embeddings) < MIN_POINTS["pca"]:
        raise RetrievalAppError(f"a map needs at least {MIN_POINTS['pca']} images, got {len(embeddings)}")
    if not np.isfinite(embeddings).all():
        raise RetrievalAppError("the embeddings contain NaN or infinite values")
    return embeddings


# ----------------------------------------------------------------------------- fitters
def _pca_fit(embeddings: np.ndarray, settings: dict) -> Projection:
    from sklearn.decomposition import PCA

    components = min(2, embeddings.shape[1], len(embeddings))
    pca = PCA(n_components=components, random_state=settings["seed"]).fit(embeddings)
    mean, rows = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
    if components < 2:  # 1-D embeddings (or 1 usable direction): the second axis stays 0
        rows = np.vstack([rows, np.zeros((2 - components, embeddings.shape[1]), np.float32)])
    coords = ((embeddings - mean) @ rows.T).astype(np.float32)
    return Projection("pca", coords, dict(settings), embeddings, mean, rows)


def pre_reduce(embeddings: np.ndarray, seed: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """PCA to `PRE_REDUCE_DIM` dimensions when there are more (and enough points);
    returns the reduced array and (mean, components) to reduce new points alike."""
    if embeddings.shape[1] <= PRE_REDUCE_DIM or len(embeddings) <= PRE_REDUCE_DIM:
        return embeddings, None
    from sklearn.decomposition import PCA

    pca = PCA(n_components=PRE_REDUCE_DIM, random_state=seed).fit(embeddings)
    reduction = (pca.mean_.astype(np.float32), pca.components_.astype(np.float32))
    return _apply_reduction(embeddings, reduction), reduction


def _apply_reduction(x: np.ndarray, reduction: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if reduction is None:
        return x
    mean, components = reduction
    return np.ascontiguousarray((x - mean) @ components.T, dtype=np.float32)


def ensure_numba_cache(cache_dir: str | Path | None = None) -> None:
    """Point numba's on-disk cache into ours unless the user chose one (must run before
    numba is first imported to take effect)."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / "numba"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # numba then uses its default (next to the package, or none)
        os.environ["NUMBA_CACHE_DIR"] = str(folder)


def knn_graph(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) (N, k) Euclidean, each point itself first: UMAP's format
    (exact below `knn_graph.APPROXIMATE_FROM` points, FAISS IVF-Flat above)."""
    from .knn_graph import knn_graph as graph

    return graph(x, k)


def _umap_fit(embeddings: np.ndarray, settings: dict) -> Projection:
    ensure_numba_cache()
    import umap  # lazy: its import and numba start-up are paid only for UMAP maps

    n = len(embeddings)
    effective = dict(settings, n_neighbors=int(max(2, min(int(settings["n_neighbors"]), n - 1))))
    reduced, reduction = pre_reduce(embeddings, effective["seed"]) if effective["pre_reduce"] else (embeddings, None)
    options: dict[str, Any] = {}
    if effective["precomputed_knn"]:
        options["precomputed_knn"] = knn_graph(reduced, effective["n_neighbors"])
    reducer = umap.UMAP(
        n_components=2, n_neighbors=effective["n_neighbors"], min_dist=float(effective["min_dist"]),
        random_state=effective["seed"], n_jobs=1,  # a seed makes umap single-threaded anyway
        init="spectral" if n > 2 * effective["n_neighbors"] else "pca", **options,
    )
    with warnings.catch_warnings():  # "no search index: transform unavailable" is expected
        warnings.simplefilter("ignore")
        coords = reducer.fit_transform(reduced).astype(np.float32)
    model = None if effective["precomputed_knn"] else reducer
    return Projection("umap", coords, effective, embeddings, model=model, pre_reduction=reduction)


def _tsne_fit(embeddings: np.ndarray, settings: dict) -> Projection:
    from sklearn.manifold import TSNE

    n = len(embeddings)
    perplexity = float(min(float(settings["perplexity"]), max((n - 1) / 3.0, 1.0)))
    effective = dict(settings, perplexity=perplexity)
    reduced, _ = pre_reduce(embeddings, effective["seed"]) if effective["pre_reduce"] else (embeddings, None)
    coords = TSNE(n_components=2, perplexity=perplexity, random_state=effective["seed"], init="pca").fit_transform(reduced)
    return Projection("tsne", coords.astype(np.float32), effective, embeddings)


_FITTERS = {"pca": _pca_fit, "umap": _umap_fit, "tsne": _tsne_fit}


# ----------------------------------------------------------------------------- map cache
def _cache_path(embeddings: np.ndarray, method: str, settings: dict, cache_dir: str | Path | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    described = json.dumps({"method": method, "params": settings, "format": MAP_CACHE_FORMAT}, sort_keys=True, default=str)
    key = hashlib.sha256(described.encode()).hexdigest()[:12]
    return base / "maps" / f"{embedding_fingerprint(embeddings)}-{method}-{key}.npz"


def _load(path: Path, embeddings: np.ndarray, method: str, settings: dict) -> Projection | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            coords = data["coords"].astype(np.float32)
            if coords.shape != (len(embeddings), 2) or not np.isfinite(coords).all():
                raise ValueError(f"coordinates of shape {coords.shape}")
            params = json.loads(str(data["params"])) if "params" in data else dict(settings)
            mean = data["pca_mean"] if "pca_mean" in data else None
            components = data["pca_components"] if "pca_components" in data else None
    except Exception as exc:  # unreadable: recompute rather than fail
        log.warning("ignoring unreadable map cache %s (%s)", path, exc)
        return None
    return Projection(method, coords, params, embeddings, mean, components, from_cache=True)


def _save(path: Path, projection: Projection) -> None:
    arrays: dict[str, Any] = {"coords": projection.coords, "params": np.str_(json.dumps(projection.params, sort_keys=True, default=str))}
    if projection.pca_components is not None:
        arrays.update(pca_mean=projection.pca_mean, pca_components=projection.pca_components)
    try:
        atomic_numpy_save(path, **arrays)
    except OSError as exc:  # a read-only or full cache must not break the map
        log.warning("could not cache map at %s: %s", path, exc)


def warm_up_umap_in_background(cache_dir: str | Path | None = None) -> threading.Thread:
    """Import umap-learn and compile its numba code in a daemon thread, so that the first
    real UMAP map does not pay for it. Best effort: failures are logged."""

    def work() -> None:
        try:
            points = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
            compute_projection(points, "umap", use_cache=False, cache_dir=cache_dir)
        except Exception as exc:
            log.info("UMAP warm-up failed: %s", exc)

    thread = threading.Thread(target=work, name="umap-warm-up", daemon=True)
    thread.start()
    return thread
