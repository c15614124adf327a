"""A folder embedded by one model, ready to answer "what looks like this?".

The object the CLI and the UI use: it owns the records, their embeddings and the
nearest-neighbour index. Each UI session holds its own; nothing here is global."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.scan import ImageRecord, ScanResult
from ..errors import RetrievalAppError
from .cache import cached_embeddings
from .embed import ProgressFn, embed_images
from .search import NearestNeighbourIndex, build_index, search_distance


@dataclass(frozen=True)
class Neighbour:
    index: int
    id: str
    path: Path
    label: str  # class name
    distance: float
    same_class: bool | None  # vs the query's class, when the query has one


@dataclass
class Gallery:
    root: Path
    records: list[ImageRecord]
    classes: list[str]
    embeddings: np.ndarray
    labels: np.ndarray
    distance: str
    net: object
    index: NearestNeighbourIndex
    failures: list[tuple[str, str]]
    n_cached: int = 0
    n_computed: int = 0

    @classmethod
    def build(cls, scan: ScanResult, net, *, distance: str = "euclidean", cache_dir: Path | None = None, progress: ProgressFn | None = None, cancel: threading.Event | None = None, backend: str = "auto", device=None, batch_size: int = 32, num_workers: int | None = None) -> "Gallery":
        result = cached_embeddings(net, scan, cache_dir=cache_dir, device=device, progress=progress, cancel=cancel, batch_size=batch_size, num_workers=num_workers)
        ok = np.flatnonzero(result.ok)
        if len(ok) == 0:
            raise RetrievalAppError("none of the images in the folder could be embedded")
        records = [scan.records[i] for i in ok]
        embeddings = result.embeddings[ok]
        metric = search_distance(distance)
        return cls(
            root=scan.root, records=records, classes=list(scan.classes), embeddings=embeddings,
            labels=np.asarray([r.label for r in records], dtype=np.int64), distance=metric, net=net,
            index=build_index(embeddings, metric, backend), failures=result.failures,
            n_cached=result.n_cached, n_computed=result.n_computed,
        )

    def __len__(self) -> int:
        return len(self.records)

    def index_of_id(self, image_id: str) -> int:
        for i, record in enumerate(self.records):
            if record.id == image_id:
                return i
        raise RetrievalAppError(f"no image with id '{image_id}' in this gallery")

    def _check(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(self.records):
            raise RetrievalAppError(f"point index {i!r} is out of range (the gallery has {len(self.records)} images)")
        return int(i)

    def neighbours_of_index(self, i: int, k: int = 10) -> list[Neighbour]:
        """Nearest gallery images to gallery image `i`, itself excluded."""
        i = self._check(i)
        indices, distances = self.index.search(self.embeddings[i : i + 1], k, exclude=np.asarray([i]))
        return self._neighbours(indices[0], distances[0], int(self.labels[i]))

    def neighbours_of_vectors(self, vectors: np.ndarray, k: int = 10, query_labels: Sequence[int | None] | None = None) -> list[list[Neighbour]]:
        indices, distances = self.index.search(np.asarray(vectors, dtype=np.float32), k)
        labels = query_labels if query_labels is not None else [None] * len(indices)
        return [self._neighbours(ix, ds, lab) for ix, ds, lab in zip(indices, distances, labels)]

    def embed_images(self, images: Sequence) -> np.ndarray:
        return embed_images(self.net, list(images))

    def neighbours_of_images(self, images: Sequence, k: int = 10) -> list[list[Neighbour]]:
        """Query by image: paths, bytes, file objects or PIL images."""
        return self.neighbours_of_vectors(self.embed_images(images), k)

    def _neighbours(self, indices: np.ndarray, distances: np.ndarray, query_label: int | None) -> list[Neighbour]:
        out = []
        for j, d in zip(indices.tolist(), distances.tolist()):
            record = self.records[j]
            same = None if query_label is None else record.label == query_label
            out.append(Neighbour(j, record.id, record.path, record.class_name, float(d), same))
        return out
