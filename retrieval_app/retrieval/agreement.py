"""Neighbour agreement: for each image, the share of its k nearest neighbours (itself
excluded) that belong to its own class.

1.0 is an image deep inside its class's cluster, 0.0 one surrounded by other classes.
Coloured on the map it shows where the space mixes classes (the same k-NN view as
retrieval's precision at k, per image) before a single click."""

from __future__ import annotations

import numpy as np

from .gallery import Gallery

DEFAULT_K = 10


def neighbour_agreement(gallery: Gallery, k: int = DEFAULT_K) -> np.ndarray:
    """(N,) float32: per gallery image, the share of its k nearest neighbours (by the
    gallery's search distance, itself excluded) of the same class. k is capped at N - 1."""
    n = len(gallery)
    if n < 2:
        return np.zeros(n, dtype=np.float32)
    k = max(1, min(int(k), n - 1))
    own = np.arange(n)
    found, _ = gallery.index.search(gallery.embeddings, k, exclude=own)
    same = gallery.labels[found] == gallery.labels[:, None]
    return same.mean(axis=1).astype(np.float32)
