"""Small images decoded once, kept in memory, augmented as whole batches.

A network on 28×28 inputs (the small CNN) runs thousands of images a second; decoding a
PNG and augmenting it with PIL, one image at a time, every epoch, ran at a third of
that (Fashion-MNIST: 772 images/s in full mode against 2,400 for the same network fed
from memory). When the inputs are small enough to hold (a 28×28 greyscale image is
784 bytes), each image is decoded once to the network's input size, stored as uint8,
and the training augmentation - a random resized crop, as the PIL transform does - is
applied to the batch as one affine resampling."""

from __future__ import annotations

import math
import threading
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.decode import load_image
from ..data.scan import ImageRecord
from ..errors import ImageDecodeError, TrainingCancelled
from ..networks.transforms import SMALL_INPUT_MAX

MAX_BYTES = 256 * 2**20  # decoded images held in memory at most
CROP_SCALE = (0.8, 1.0)  # area kept by the random crop (as transforms.train_transform)
CROP_RATIO = (0.9, 1.1)  # its aspect ratio


def fits_in_memory(spec, n_images: int) -> bool:
    return spec.input_size <= SMALL_INPUT_MAX and n_images * spec.channels * spec.input_size**2 <= MAX_BYTES


class DecodedImages:
    """`records` decoded to (N, C, S, S) uint8 at the network's input size; unreadable
    ones are listed in `failures` and flagged False in `ok`."""

    def __init__(self, records: Sequence[ImageRecord], spec, *, cancel: threading.Event | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.spec = spec
        size, mode = spec.input_size, "L" if spec.channels == 1 else "RGB"
        self.pixels = torch.zeros(len(records), spec.channels, size, size, dtype=torch.uint8)
        self.ok = np.ones(len(records), dtype=bool)
        self.failures: list[tuple[str, str]] = []
        for i, record in enumerate(records):
            if cancel is not None and cancel.is_set():
                raise TrainingCancelled("training was cancelled")
            try:
                image = load_image(record.path, max_side=spec.decode_max_side).convert(mode).resize((size, size), Image.BILINEAR)  # as torchvision's Resize
            except (ImageDecodeError, OSError, ValueError) as exc:
                self.ok[i] = False
                self.failures.append((str(record.path), str(exc)))
                continue
            array = np.array(image, dtype=np.uint8)  # a writable copy for torch
            self.pixels[i] = torch.from_numpy(array.reshape(size, size, spec.channels)).permute(2, 0, 1)
            if on_progress is not None and (i + 1) % 1000 == 0:
                on_progress(i + 1, len(records))
        self.mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std).view(1, -1, 1, 1)

    def batch(self, index: torch.Tensor, *, augment: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised float images (B, C, S, S); `augment`: a random resized crop each."""
        images = self.pixels[index].float().div_(255.0)
        if augment:
            images = random_resized_crop(images, generator)
        return (images - self.mean) / self.std


def random_resized_crop(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image: a crop of CROP_SCALE of its area at an aspect ratio in CROP_RATIO,
    at a random position, resized back to the full size (bilinear)."""
    n = len(images)
    area = torch.empty(n).uniform_(*CROP_SCALE, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=generator)
    ratio = log_ratio.exp()
    width = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the full side
    height = (area / ratio).sqrt().clamp(max=1.0)
    shift_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    shift_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = height, shift_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
