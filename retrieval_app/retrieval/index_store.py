"""A gallery's index saved beside its embedding cache and updated in place.

File: `<embedding cache folder of the model and folder>/index/<backend>-<distance>.npz`
(plain NumPy, no pickles, written atomically as one file): the index's own arrays
(`index_*`; FAISS indexes as their serialised bytes), and per indexed vector its image
id (the cache's record id), its label (the int64 the index knows it by) and a
fingerprint of its float32 bytes, plus the next free label.

On load, the gallery's current ids and vectors are matched against the file:
- an id whose vector fingerprint is unchanged keeps its entry (nothing is done);
- an id that is gone, or whose vector changed (the file changed, or the model), has its
  label removed (IVF and exact: true removal; HNSW: a tombstone, see `ann.py`);
- a new or changed id is added under a fresh label.
With nothing to do, the file's index is used as it is: no build, no write. After
changes the search knob is re-tuned (the recall is measured again) and the file is
rewritten; only when the backend says the updates have degraded it (`needs_rebuild`)
is it built afresh. `IndexReport.action` says which happened: `built`, `loaded`,
`updated` or `rebuilt`.

Where `auto` kept exact search in place of the backend it resolved to (IVF-Flat slower
than exact search, `indexes.faster_than_exact`), the file keeps that backend's name and
its `meta` says `"in_place_of"`: the next `auto` load uses the exact index without timing
again; an explicit request for that backend does not accept it and builds its own.

The gallery searches through `GalleryIndex`, which maps its positions (record order) to
labels and back, so the labels never need to follow the records' order."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_numpy_save, remove_stale_temp_files
from ..errors import RetrievalAppError
from .indexes import build_index, resolve_backend, restore_index
from .search import NearestNeighbourIndex, check_distance

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
_FINGERPRINT_SEED = 0x5EED_1DE7


@dataclass
class IndexReport:
    """What opening the index did: `action` (`built`, `loaded`, `updated`, `rebuilt`),
    how many vectors were `added` and `removed` by an update, the `seconds` it took and
    the file (None when not saved)."""

    action: str
    added: int = 0
    removed: int = 0
    seconds: float = 0.0
    path: Path | None = None

    def describe(self) -> str:
        if self.action == "updated":
            return f"index updated from its saved copy (+{self.added} / −{self.removed} vectors)"
        if self.action == "loaded":
            return "index loaded from its saved copy"
        return f"index {self.action} in {self.seconds:.1f} s"


def row_fingerprints(vectors: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each row's float32 bytes: Σ word_j · c_j (mod 2⁶⁴) with odd
    random constants c_j, then mixed. Any change of one value changes it (c_j is odd, so
    invertible mod 2⁶⁴); other changes collide with chance ~2⁻⁶⁴. Vectorised: ~1 s at
    1M × 128, where hashing rows one by one would take many."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    words = vectors.view(np.uint32)
    constants = np.random.default_rng(_FINGERPRINT_SEED).integers(1, 2**63, size=vectors.shape[1], dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(vectors), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(vectors), 65536):
            block = words[start:start + 65536].astype(np.uint64)
            h = (block * constants).sum(axis=1, dtype=np.uint64)
            h ^= h >> np.uint64(31)
            h *= np.uint64(0x9E3779B97F4A7C15)
            out[start:start + 65536] = h ^ (h >> np.uint64(29))
    return out


class GalleryIndex(NearestNeighbourIndex):
    """An index searched by gallery position: `label_of[position]` is the label the inner
    index holds that position's vector under."""

    def __init__(self, inner: NearestNeighbourIndex, label_of: np.ndarray) -> None:
        self.inner, self.label_of = inner, np.asarray(label_of, dtype=np.int64)
        self.backend, self.distance, self.dim = inner.backend, inner.distance, inner.dim
        self.position_of = np.full(int(self.label_of.max()) + 1 if len(self.label_of) else 0, -1, dtype=np.int64)
        self.position_of[self.label_of] = np.arange(len(self.label_of))

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def recall(self) -> float:
        return self.inner.recall

    @property
    def params(self) -> dict:
        return self.inner.params

    def describe(self) -> str:
        return self.inner.describe()

    def search(self, queries, k, *, exclude=None):
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
            exclude = np.where(exclude >= 0, self.label_of[np.clip(exclude, 0, None)], -1)
        labels, distances = self.inner.search(queries, k, exclude=exclude)
        positions = self.position_of[labels]
        order = np.lexsort((positions, distances), axis=1)  # ties by position, whatever the labels
        return np.take_along_axis(positions, order, axis=1), np.take_along_axis(distances, order, axis=1)


def index_file(folder: Path, backend: str, distance: str) -> Path:
    return Path(folder) / f"{backend}-{distance}.npz"


def open_index(folder: str | Path | None, ids: Sequence[str], vectors: np.ndarray, distance: str = "euclidean", backend: str = "auto") -> tuple[GalleryIndex, IndexReport]:
    """The index over `vectors` (row i is the image `ids[i]`): loaded from `folder` and
    updated where the images changed, or built (and saved there when `folder` is given)."""
    start = time.perf_counter()
    distance = check_distance(distance)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = [str(i) for i in ids]
    if len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise RetrievalAppError(f"an index needs one distinct id per vector ({len(ids)} ids, {len(vectors)} vectors)")
    name = resolve_backend(backend, len(vectors), vectors.shape[1] if vectors.ndim == 2 else 0)
    # Built with `backend` itself, so that `auto` may keep exact search (see the docstring).
    if folder is None:
        return GalleryIndex(build_index(vectors, distance, backend), np.arange(len(vectors))), IndexReport("built", seconds=time.perf_counter() - start)
    path = index_file(Path(folder), name, distance)
    remove_stale_temp_files(path.parent)
    fingerprints = row_fingerprints(vectors)
    saved = _read(path, name, distance, vectors.shape[1], substitutes=backend == "auto")
    if saved is None:
        index, label_of, report = _fresh(vectors, distance, backend, "built")
    else:
        index, label_of, report = _update(saved, ids, vectors, fingerprints, distance, backend)
    if report.action != "loaded":
        # Labels are never reused (an HNSW tombstone keeps its label in the graph).
        next_label = max(int(label_of.max()) + 1 if len(label_of) else 0, int(saved["next_label"]) if saved and report.action == "updated" else 0)
        _write(path, index, ids, label_of, fingerprints, name, distance, next_label)
    report.seconds, report.path = time.perf_counter() - start, path
    return GalleryIndex(index, label_of), report


def _fresh(vectors, distance, backend, action, added=0, removed=0):
    labels = np.arange(len(vectors), dtype=np.int64)
    return build_index(vectors, distance, backend, labels), labels, IndexReport(action, added=added, removed=removed)


def _update(saved: dict, ids: list[str], vectors, fingerprints, distance, backend):
    """Apply the differences between the saved entries and the current rows."""
    index = saved["index"]
    entry = {key: (int(label), int(fp)) for key, label, fp in zip(saved["ids"].tolist(), saved["labels"], saved["fingerprints"])}
    label_of = np.full(len(ids), -1, dtype=np.int64)
    for row, key in enumerate(ids):
        old = entry.get(key)
        if old is not None and old[1] == int(fingerprints[row]):
            label_of[row] = old[0]
    kept = set(label_of[label_of >= 0].tolist())
    removed = np.asarray([label for label, _ in entry.values() if label not in kept], dtype=np.int64)
    new_rows = np.flatnonzero(label_of < 0)
    if len(removed) == 0 and len(new_rows) == 0:
        return index, label_of, IndexReport("loaded")
    next_label = int(saved["next_label"])
    label_of[new_rows] = np.arange(next_label, next_label + len(new_rows))
    index.remove(removed)
    index.add(vectors[new_rows], label_of[new_rows])
    if index.needs_rebuild():
        return _fresh(vectors, distance, backend, "rebuilt", len(new_rows), len(removed))
    index.calibrate(vectors, label_of)
    return index, label_of, IndexReport("updated", added=len(new_rows), removed=len(removed))


def _meta(name: str, distance: str, dim: int, built: str) -> dict:
    """The file's `meta`: what it was asked to hold, and what `auto` built in its place."""
    meta = {"format": INDEX_FORMAT, "backend": name, "distance": distance, "dim": dim}
    return meta if built == name else {**meta, "backend": built, "in_place_of": name}


def _read(path: Path, name: str, distance: str, dim: int, substitutes: bool = False) -> dict | None:
    """The saved index and its entries, or None (absent, unreadable, or another kind).
    `substitutes`: accept exact search that `auto` kept in place of `name`."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays["meta"]))
        accepted = [_meta(name, distance, dim, name)] + ([_meta(name, distance, dim, "exact")] if substitutes else [])
        if meta not in accepted:
            return None
        state = {key[len("index_"):]: value for key, value in arrays.items() if key.startswith("index_")}
        index = restore_index(meta["backend"], state, distance)
        if index.size != len(arrays["ids"]):
            raise ValueError(f"{index.size} vectors for {len(arrays['ids'])} ids")
        return {"index": index, "ids": arrays["ids"].astype(str), "labels": arrays["labels"].astype(np.int64), "fingerprints": arrays["fingerprints"].astype(np.uint64), "next_label": arrays["next_label"]}
    except Exception as exc:  # torn, foreign or from another version: rebuild rather than fail
        log.warning("ignoring unreadable saved index %s (%s); it will be rebuilt", path, exc)
        return None


def _write(path: Path, index: NearestNeighbourIndex, ids: list[str], label_of: np.ndarray, fingerprints: np.ndarray, name: str, distance: str, next_label: int) -> None:
    meta = _meta(name, distance, index.dim, index.backend)
    state = {f"index_{key}": value for key, value in index.state().items()}
    try:
        atomic_numpy_save(
            path, meta=np.str_(json.dumps(meta, sort_keys=True)), ids=np.asarray(ids, dtype=str), labels=label_of,
            fingerprints=fingerprints, next_label=np.int64(next_label), **state,
        )
    except OSError as exc:  # a full or read-only cache costs the next load a build, never the result
        log.warning("could not save the index %s: %s", path, exc)
