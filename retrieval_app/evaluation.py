"""Retrieval quality of a model over a whole folder (leave-one-out)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import retrieval_metrics


def evaluate_gallery(gallery) -> dict[str, Any]:
    """Leave-one-out retrieval metrics of a `retrieval.Gallery` (every embedded image
    queries all the others), ranked by the gallery's distance, with `n_images`,
    `n_classes` and `distance`."""
    metrics = retrieval_metrics(gallery.embeddings, gallery.labels, distance=gallery.distance)
    return {
        **metrics,
        "n_images": len(gallery),
        "n_classes": int(len(np.unique(gallery.labels))),
        "distance": gallery.distance,
    }
