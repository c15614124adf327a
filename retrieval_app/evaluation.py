"""Retrieval quality of a model over a whole folder (leave-one-out)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data.scan import UNLABELLED
from .metrics import retrieval_metrics

NO_LABELS_NOTE = "the folder has no labels: retrieval metrics need them (give a labels CSV, --labels FILE)"


def evaluate_gallery(gallery) -> dict[str, Any]:
    """Leave-one-out retrieval metrics of a `retrieval.Gallery` (every embedded image
    queries all the others), ranked by the gallery's distance, with `n_images`,
    `n_classes` and `distance`. Only labelled images take part (a labels CSV may label
    some); with none, no metric is computed: `labelled` False and a `note` saying why."""
    labelled = np.flatnonzero(gallery.labels != UNLABELLED)
    base = {"n_images": len(gallery), "distance": gallery.distance, "labelled": bool(len(labelled))}
    if not len(labelled):
        return {**base, "n_classes": 0, "n_labelled": 0, "note": NO_LABELS_NOTE}
    metrics = retrieval_metrics(gallery.embeddings[labelled], gallery.labels[labelled], distance=gallery.distance)
    return {
        **metrics,
        **base,
        "n_labelled": int(len(labelled)),
        "n_classes": int(len(np.unique(gallery.labels[labelled]))),
    }
