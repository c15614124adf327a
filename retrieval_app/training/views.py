"""Backbone features of augmented views, for training without labels in quick mode.

Without labels the positives of a triplet are two augmentations of the same image. Quick
mode trains a head on cached features, and an augmentation applied *to features* (noise,
dropout) is not one an image can undergo; so the backbone runs on real augmented views
(the network's own training transform: random resized crop, horizontal flip, colour
jitter for photos) a few times per image, once per run, and the head trains on those.
Each image is decoded once and its views drawn from it; a view's randomness is seeded
by (seed, image, view), so a run is repeatable and independent of batch order."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.decode import load_image
from ..data.scan import ImageRecord
from ..errors import ImageDecodeError, TrainingCancelled
from ..threads import network_workload, workload_threads

BATCH_IMAGES = 16  # images per forward pass; each brings its `n_views` views


class _Views(Dataset):
    """Item: (n_views, C, H, W) augmented views of one image, or None when it cannot be read."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable, n_views: int, seed: int, max_side: int | None) -> None:
        self.records, self.transform, self.n_views, self.seed, self.max_side = list(records), transform, n_views, seed, max_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.records[index].path, max_side=self.max_side)
        except ImageDecodeError:
            return index, None
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left alone
            torch.manual_seed(self.seed * 1_000_003 + index)
            return index, torch.stack([self.transform(image) for _ in range(self.n_views)])


def _collate(items):
    return items


@torch.inference_mode()
def augmented_view_features(net, records: Sequence[ImageRecord], n_views: int, *, device, seed: int = 0,
                            cancel: threading.Event | None = None, progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, n_views, feature_dim) float32 on the CPU, ok (N,) bool): the pooled
    backbone features of `n_views` augmented views of every record; rows of images that
    could not be read are zeros with `ok` False. A set `cancel` raises `TrainingCancelled`
    at the next batch."""
    spec = net.spec
    dataset = _Views(records, net.train_transform(), n_views, seed, spec.decode_max_side)
    loader = DataLoader(dataset, batch_size=BATCH_IMAGES, shuffle=False, num_workers=0, collate_fn=_collate)
    out = torch.zeros(len(records), n_views, spec.feature_dim)
    ok = torch.zeros(len(records), dtype=torch.bool)
    was_training = net.training
    net.eval()
    done = 0
    try:
        with workload_threads(network_workload(spec.input_size)):
            for items in loader:
                if cancel is not None and cancel.is_set():
                    raise TrainingCancelled("training was cancelled")
                good = [(i, views) for i, views in items if views is not None]
                if good:
                    batch = torch.cat([views for _, views in good]).to(device)
                    features = net.features(batch).float().cpu().reshape(len(good), n_views, -1)
                    rows = torch.as_tensor([i for i, _ in good])
                    out[rows], ok[rows] = features, True
                done += len(items)
                if progress is not None:
                    progress(done, len(records))
    finally:
        net.train(was_training)
    return out, ok
