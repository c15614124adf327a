"""A folder embedded by one model, ready to answer "what looks like this?".

The object the CLI and the UI use: it owns the records, their embeddings and the
nearest-neighbour index. Each UI session holds its own; nothing here is global."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.scan import UNLABELLED, ImageRecord, ScanResult
from ..errors import RetrievalAppError
from .cache import cached_embeddings, store_dir
from .embed import ProgressFn, embed_images, embeddings_from_features
from .index_store import IndexReport, open_index
from .search import NearestNeighbourIndex, normalise_rows, search_distance


@dataclass(frozen=True)
class Neighbour:
    """One search hit: gallery position `index`, the image's `id` and `path`, its class
    name `label` ("" without a label), its `distance` to the query, and `same_class`
    (vs the query's class when the query is a gallery image or its class is given, and
    both have a label; else None)."""

    index: int
    id: str
    path: Path
    label: str
    distance: float
    same_class: bool | None


@dataclass
class Gallery:
    """Records that could be embedded, their (N, D) float32 `embeddings` and int64
    `labels` (indices into `classes`), the search `distance` and `index`, the `net`
    that embeds queries, and the files that could not be read (`failures`)."""

    root: Path
    records: list[ImageRecord]
    classes: list[str]
    embeddings: np.ndarray
    labels: np.ndarray
    distance: str
    net: object
    index: NearestNeighbourIndex
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_cached: int = 0
    n_computed: int = 0
    n_removed: int = 0
    device: object = None
    index_report: IndexReport | None = None
    _position: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _groups: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _scan_rows: tuple | None = field(default=None, init=False, repr=False, compare=False)  # see distances_from

    def __post_init__(self) -> None:
        self._position = {record.id: i for i, record in enumerate(self.records)}

    @classmethod
    def build(
        cls,
        scan: ScanResult,
        net,
        *,
        distance: str = "euclidean",
        cache_dir: str | Path | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        backend: str = "auto",
        device=None,
        batch_size: int = 32,
        num_workers: int | None = None,
        from_features: bool = False,
    ) -> "Gallery":
        """Embed `scan`'s images with `net` (through the cache) and index them. `distance`
        is the one the model was trained with (`checkpoint_distance`); images that
        cannot be read are left out and listed in `failures`. The index (`backend`, see
        `indexes.py`) is saved beside the embedding cache and updated there when images
        are added, changed or removed (`index_store.py`; `index_report` says what happened).

        `from_features`: for a head on a frozen pretrained backbone (quick mode). The
        backbone's pooled features come from the feature cache that training filled
        (only new or changed files go through the backbone) and the head is applied to
        them: a switch to a new head costs a matrix product, not a pass over the images."""
        output = "features" if from_features else "embeddings"
        result = cached_embeddings(net, scan, output=output, cache_dir=cache_dir, device=device, progress=progress, cancel=cancel, batch_size=batch_size, num_workers=num_workers)
        ok = np.flatnonzero(result.ok)
        if len(ok) == 0:
            raise RetrievalAppError(f"none of the {len(scan.records)} images in {scan.root} could be embedded")
        vectors = embeddings_from_features(net, result.embeddings[ok], device=device) if from_features else result.embeddings[ok]
        # Keyed by the whole network (head included), beside the embedding cache.
        index_dir = store_dir(net, scan.root, "embeddings", cache_dir) / "index"
        gallery = cls.from_embeddings(scan.root, [scan.records[i] for i in ok], scan.classes, vectors, distance=distance, net=net, backend=backend, device=device, index_dir=index_dir)
        gallery.failures = result.failures
        gallery.n_cached, gallery.n_computed, gallery.n_removed = result.n_cached, result.n_computed, result.n_removed
        return gallery

    @classmethod
    def from_embeddings(cls, root: str | Path, records: Sequence[ImageRecord], classes: Sequence[str], embeddings: np.ndarray, *, distance: str = "euclidean", net=None, backend: str = "auto", device=None, index_dir: str | Path | None = None) -> "Gallery":
        """A gallery over vectors computed elsewhere (`net` is needed only to embed
        query images). With `index_dir`, the index is kept there (see `build`)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if len(records) != len(embeddings):
            raise RetrievalAppError(f"{len(records)} records but {len(embeddings)} embeddings")
        metric = search_distance(distance)
        index, report = open_index(index_dir, [r.id for r in records], embeddings, metric, backend)
        return cls(
            root=Path(root), records=list(records), classes=list(classes), embeddings=embeddings,
            labels=np.asarray([r.label for r in records], dtype=np.int64), distance=metric, net=net,
            index=index, device=device, index_report=report,
        )

    def index_summary(self) -> str:
        """One line for people: how neighbours are searched, the measured recall, and
        whether the index was built, loaded or updated."""
        line = f"search: {self.index.describe()}"
        return f"{line}; {self.index_report.describe()}" if self.index_report is not None else line

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labelled(self) -> bool:
        """Whether any image has a label (class folders or a labels CSV)."""
        return bool(self.classes) and bool((self.labels != UNLABELLED).any())

    def colour_groups(self) -> tuple[np.ndarray, list[str], str]:
        """(group per image, group names, "class" or "cluster"): what maps colour by.
        Clusters (for a folder without labels) are computed once per gallery."""
        if self._groups is None:
            from .clusters import colour_groups

            self._groups = colour_groups(self.labels, self.classes, self.embeddings)
        return self._groups

    # ------------------------------------------------------------------ lookups
    def index_of_id(self, image_id: str) -> int:
        """Gallery position of the image with this id (its path relative to the root)."""
        try:
            return self._position[image_id]
        except KeyError:
            raise RetrievalAppError(f"no image with id '{image_id}' in this gallery") from None

    def check_index(self, i) -> int:
        """`i` as an int if it is a valid gallery position, else a clear error."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(self.records):
            raise RetrievalAppError(f"point index {i!r} is out of range (the gallery has {len(self.records)} images, 0 to {len(self.records) - 1})")
        return int(i)

    # ------------------------------------------------------------------ queries
    def neighbours_of_index(self, i: int, k: int = 10) -> list[Neighbour]:
        """The k nearest gallery images to gallery image `i`, itself excluded."""
        return self.neighbours_of_indices([i], k)[0]

    def neighbours_of_indices(self, indices: Sequence[int], k: int = 10) -> list[list[Neighbour]]:
        """Many gallery queries in one search, each excluding itself."""
        rows = np.asarray([self.check_index(i) for i in indices], dtype=np.int64)
        found, distances = self.index.search(self.embeddings[rows], k, exclude=rows)
        return [self._neighbours(ix, ds, int(self.labels[row])) for ix, ds, row in zip(found, distances, rows)]

    def neighbours_of_vectors(self, vectors: np.ndarray, k: int = 10, query_labels: Sequence[int | None] | None = None) -> list[list[Neighbour]]:
        """Nearest gallery images to embeddings computed by the same network."""
        found, distances = self.index.search(np.atleast_2d(np.asarray(vectors, dtype=np.float32)), k)
        labels = list(query_labels) if query_labels is not None else [None] * len(found)
        return [self._neighbours(ix, ds, label) for ix, ds, label in zip(found, distances, labels)]

    def distances_from(self, i: int) -> np.ndarray:
        """Distances (N,) from gallery image `i` to every gallery image (itself 0), by the
        gallery's search distance, in one matrix-vector pass over the vectors: for
        Euclidean |x − q|² = |x|² + |q|² − 2x·q with the squared norms computed once per
        gallery (no (N, D) difference array: at 100,000 × 256 that was 100 MB written and
        read twice a click). Float32 rounding can move a distance by ~1e-7 of |x|²;
        `distance_between` gives a pair's exact value."""
        i = self.check_index(i)
        rows, squared_norms = self._rows_for_scans()
        products = rows @ rows[i]
        if self.distance == "cosine":
            distances = np.clip(1.0 - products, 0.0, 2.0).astype(np.float32)
        else:
            distances = np.sqrt(np.maximum(squared_norms + squared_norms[i] - 2.0 * products, 0.0)).astype(np.float32)
        distances[i] = 0.0
        return distances

    def distance_between(self, i: int, j: int) -> float:
        """The exact distance between gallery images `i` and `j`."""
        a, b = self.embeddings[self.check_index(i)].astype(np.float64), self.embeddings[self.check_index(j)].astype(np.float64)
        if self.distance == "cosine":
            return float(np.clip(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0), 0.0, 2.0))
        return float(np.linalg.norm(a - b))

    def _rows_for_scans(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(rows, squared norms): unit rows for cosine, the vectors and their squared norms
        otherwise; computed once per gallery."""
        if self._scan_rows is None:
            if self.distance == "cosine":
                self._scan_rows = (normalise_rows(self.embeddings), None)
            else:
                self._scan_rows = (self.embeddings, np.einsum("ij,ij->i", self.embeddings, self.embeddings))
        return self._scan_rows

    def hardest_pair_of_index(self, i: int) -> tuple[Neighbour | None, Neighbour | None]:
        """(hardest positive, nearest negative) of gallery image `i`: the image of its own
        class farthest from it, and the image of another class closest to it (None when
        its class has no other image, or there is no other class). The gap between the
        two distances is what a triplet loss with `i` as the anchor works on."""
        i = self.check_index(i)
        if self.labels[i] == UNLABELLED:  # no class: no positive or negative to speak of
            return None, None
        distances = self.distances_from(i)
        same = self.labels == self.labels[i]
        same[i] = False
        other = (self.labels != self.labels[i]) & (self.labels != UNLABELLED)
        positive = np.flatnonzero(same)[int(np.argmax(distances[same]))] if same.any() else None
        negative = np.flatnonzero(other)[int(np.argmin(distances[other]))] if other.any() else None
        return self._exact_neighbour(i, positive), self._exact_neighbour(i, negative)

    def _exact_neighbour(self, i: int, j) -> Neighbour | None:
        if j is None:
            return None
        return self._neighbours(np.array([j]), np.array([self.distance_between(i, int(j))]), int(self.labels[i]))[0]

    def embed_images(self, images) -> np.ndarray:
        """Query images (paths, bytes, file objects or PIL images) → (M, D) embeddings."""
        if self.net is None:
            raise RetrievalAppError("this gallery has no network to embed query images with")
        return embed_images(self.net, images, device=self.device)

    def neighbours_of_images(self, images, k: int = 10) -> list[list[Neighbour]]:
        """Query by image, one result list per image."""
        return self.neighbours_of_vectors(self.embed_images(images), k)

    def _neighbours(self, indices: np.ndarray, distances: np.ndarray, query_label: int | None) -> list[Neighbour]:
        out = []
        for j, d in zip(indices.tolist(), distances.tolist()):
            record = self.records[j]
            unknown = query_label is None or query_label == UNLABELLED or record.label == UNLABELLED
            same = None if unknown else record.label == query_label
            out.append(Neighbour(j, record.id, record.path, record.class_name, float(d), same))
        return out
