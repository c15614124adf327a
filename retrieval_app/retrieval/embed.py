"""Batched embedding extraction over image records, and embedding of query images.

Decoding happens in DataLoader worker processes (JPEGs DCT-downscaled while decoding),
the forward pass in `inference_mode`, channels-last on CPU, mixed precision on CUDA.
Memory stays bounded: batches stream through; only the (N, D) result is kept."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import ImageDataset, collate_skip_bad, load_image
from ..data.scan import ImageRecord
from ..device import select_device
from ..errors import TrainingCancelled

OUTPUTS = ("embeddings", "features")
ProgressFn = Callable[[int, int], None]


@dataclass
class EmbeddingResult:
    embeddings: np.ndarray  # (N, D) float32; rows of failed files are zero
    ok: np.ndarray  # (N,) bool
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    n_cached: int = 0
    n_computed: int = 0
    n_removed: int = 0


def default_workers() -> int:
    """Decoding workers. On 2 cores the forward pass already uses both, and decoding in
    the main thread between batches measured faster (93 % of model-only on
    caltech101_dev) than 1–2 worker processes (90 %), which add IPC for no extra CPU."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


def output_dim(net, output: str) -> int:
    return net.spec.feature_dim if output == "features" else net.embedding_dim


def _forward(net, output: str):
    return net.features if output == "features" else net


def embed_records(net, records: Sequence[ImageRecord], *, batch_size: int = 32, num_workers: int | None = None, device=None, progress: ProgressFn | None = None, cancel: threading.Event | None = None, output: str = "embeddings") -> EmbeddingResult:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}")
    device = select_device("auto") if device is None else torch.device(device)
    n = len(records)
    result = EmbeddingResult(np.zeros((n, output_dim(net, output)), dtype=np.float32), np.zeros(n, dtype=bool), n_computed=n)
    if n == 0:
        return result
    workers = default_workers() if num_workers is None else num_workers
    dataset = ImageDataset(records, net.eval_transform(), max_side=net.spec.decode_max_side)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skip_bad, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    forward = _forward(net, output)
    was_training = net.training
    net.eval().to(device)
    done = 0
    try:
        with torch.inference_mode():
            for batch in loader:
                if cancel is not None and cancel.is_set():
                    raise TrainingCancelled("embedding was cancelled")
                result.failures.extend((path, reason) for _i, path, reason in batch.failures)
                if len(batch.indices):
                    vectors = _run(forward, batch.images, device)
                    rows = batch.indices.numpy()
                    result.embeddings[rows] = vectors
                    result.ok[rows] = True
                done += len(batch.indices) + len(batch.failures)
                if progress is not None:
                    progress(done, n)
    finally:
        net.train(was_training)
    return result


def _run(forward, images: torch.Tensor, device: torch.device) -> np.ndarray:
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            return forward(images).float().cpu().numpy()
    if images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return forward(images).float().cpu().numpy()


def embed_images(net, images: Sequence, *, device=None, output: str = "embeddings", batch_size: int = 32) -> np.ndarray:
    """Embed query images given as paths, bytes, file objects or PIL images."""
    device = select_device("auto") if device is None else torch.device(device)
    transform = net.eval_transform()
    forward = _forward(net, output)
    out = []
    was_training = net.training
    net.eval().to(device)
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = [transform(load_image(image, max_side=net.spec.decode_max_side)) for image in images[start:start + batch_size]]
                out.append(_run(forward, torch.stack(chunk), device))
    finally:
        net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, output_dim(net, output)), dtype=np.float32)
