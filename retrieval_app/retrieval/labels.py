"""Suspicious labels: images whose nearest neighbours mostly belong to one other class.

An image filed under the wrong class sits among the images of its true class; its k
nearest neighbours then mostly share one class that is not its label. For every image
the most frequent other class among its neighbours ("looks like") and that class's
share are counted. Listed are the images where that share reaches `min_share`, or where
not one neighbour is of the image's own class; most suspicious first by the *gap*: how
much farther the image is from the nearest image of its own class than from the nearest
of the class it looks like (a mislabelled image is far from everything of its folder's
class; an image of two look-alike classes is not), then by the share.

On caltech101_dev (48 classes, 1,893 photos, EfficientNet-Lite0 features) with 10
images moved into other class folders, the 10 ranked 1 to 10 of 96 listed. The list
is a prompt to look, not a verdict: classes that really look alike show up too."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from .export import _utf8 as utf8_text
from .gallery import Gallery

DEFAULT_K = 10
DEFAULT_MIN_SHARE = 0.5
CSV_COLUMNS = ("rank", "id", "class", "looks_like", "share", "own_share", "nearest_id", "nearest_distance", "own_class_distance")


@dataclass(frozen=True)
class SuspiciousLabel:
    index: int  # gallery position of the image
    id: str
    label: str  # its class (the folder it is in)
    looks_like: str  # the class most of its neighbours belong to
    share: float  # of its k neighbours, the share of `looks_like`
    own_share: float  # ... and of its own class
    nearest: int  # gallery position of its nearest neighbour of class `looks_like`
    nearest_id: str
    nearest_distance: float
    own_distance: float  # to its nearest image of its own class (inf: none)

    @property
    def gap(self) -> float:
        return self.own_distance - self.nearest_distance


def suspicious_labels(gallery: Gallery, *, k: int = DEFAULT_K, min_share: float = DEFAULT_MIN_SHARE) -> list[SuspiciousLabel]:
    """The gallery's images whose k nearest neighbours are at least `min_share` of one
    other class, ranked (see the module docstring). Needs every image labelled: a
    folder without labels (or only partly labelled by a CSV) has none to suspect."""
    if not gallery.labelled or (gallery.labels < 0).any():
        return []
    n = len(gallery)
    k = max(1, min(int(k), n - 1))
    own = np.arange(n)
    found, distances = gallery.index.search(gallery.embeddings, k, exclude=own)
    neighbour_labels = gallery.labels[found]  # (N, k)
    n_classes = len(gallery.classes)
    counts = np.zeros((n, n_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(own, found.shape[1]), neighbour_labels.ravel()), 1)
    own_counts = counts[own, gallery.labels]
    counts[own, gallery.labels] = -1  # the most frequent *other* class
    looks_like = counts.argmax(1)
    other_counts = counts[own, looks_like]
    width = found.shape[1]
    flagged = np.flatnonzero((other_counts >= min_share * width) | (own_counts == 0))
    hits = []
    for i in flagged:
        position = int(np.argmax(neighbour_labels[i] == looks_like[i]))  # its nearest neighbour of that class
        hits.append(SuspiciousLabel(
            index=int(i), id=gallery.records[i].id, label=gallery.classes[gallery.labels[i]], looks_like=gallery.classes[looks_like[i]],
            share=float(other_counts[i] / width), own_share=float(own_counts[i] / width), nearest=int(found[i, position]),
            nearest_id=gallery.records[found[i, position]].id, nearest_distance=float(distances[i, position]),
            own_distance=_nearest_of_own_class(gallery, int(i)),
        ))
    return sorted(hits, key=lambda h: (-h.gap, -h.share, h.index))


def _nearest_of_own_class(gallery: Gallery, i: int) -> float:
    distances = gallery.distances_from(i)
    same = gallery.labels == gallery.labels[i]
    same[i] = False
    if not same.any():
        return float("inf")
    return gallery.distance_between(i, int(np.flatnonzero(same)[int(np.argmin(distances[same]))]))


def suspicious_labels_csv(hits: list[SuspiciousLabel]) -> str:
    """The list as CSV text (header `CSV_COLUMNS`, one row per image, ranked; names that
    are not valid UTF-8 with their bytes escaped, as the other exports write them)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rank, hit in enumerate(hits, 1):
        row = asdict(hit)
        writer.writerow([rank, utf8_text(row["id"]), utf8_text(row["label"]), utf8_text(row["looks_like"]), f"{row['share']:.3f}",
                         f"{row['own_share']:.3f}", utf8_text(row["nearest_id"]), f"{row['nearest_distance']:.4f}", f"{row['own_distance']:.4f}"])
    return out.getvalue()


def write_suspicious_labels_csv(hits: list[SuspiciousLabel], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, suspicious_labels_csv(hits))
    return path
