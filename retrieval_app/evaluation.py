"""Retrieval quality of a model over a whole folder (leave-one-out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data import scan_folder
from .device import select_device
from .metrics import retrieval_metrics


def evaluate_folder(folder: str | Path, model: str | Path, *, batch_size: int = 32, device: str = "auto", cache_dir=None) -> dict[str, Any]:
    from .retrieval.cache import cached_embeddings
    from .training.checkpoint import checkpoint_distance, load_embedder

    scan = scan_folder(folder)
    torch_device = select_device(device)
    net = load_embedder(model, device=torch_device)
    result = cached_embeddings(net, scan.records, batch_size=batch_size, device=torch_device, cache_dir=cache_dir)
    ok = np.asarray(result.ok, dtype=bool)
    labels = scan.labels()[ok]
    distance = checkpoint_distance(model)
    metrics = retrieval_metrics(result.embeddings[ok], labels, distance=distance if distance in ("euclidean", "cosine") else "euclidean")
    return {
        **metrics,
        "n_images": int(ok.sum()),
        "n_classes": int(len(np.unique(labels))),
        "n_skipped": int(len(scan.skipped) + (~ok).sum()),
        "model": str(model),
        "distance": distance,
    }
