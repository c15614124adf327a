"""Eval and train transforms matched to each backbone's input (size, channels, norm).

They take a PIL image of any mode (RGB expected; greyscale, palette, RGBA are converted
first) and return a float tensor (channels, input_size, input_size)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

# Inputs up to this side are small greyscale-like images (MNIST): resized whole, not
# centre-cropped, since their object fills the frame.
SMALL_INPUT_MAX = 64
# ImageNet convention: resize the short side to input / 0.875, then crop the centre.
CENTER_CROP_FRACTION = 0.875


class ConvertMode:
    """PIL image → the mode the network reads ("RGB" or "L"). A class, not a lambda, so
    the transform pickles into DataLoader worker processes."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode!r})"


def _mode(spec) -> ConvertMode:
    return ConvertMode("L" if spec.channels == 1 else "RGB")


def _to_normalised_tensor(spec) -> list:
    return [T.ToTensor(), T.Normalize(spec.mean, spec.std)]


def eval_transform(spec) -> Callable:
    """Deterministic: resize and centre-crop to the backbone's input, then normalise."""
    size = spec.input_size
    if size <= SMALL_INPUT_MAX:
        resize = [T.Resize((size, size))]
    else:
        resize = [T.Resize(round(size / CENTER_CROP_FRACTION)), T.CenterCrop(size)]
    return T.Compose([_mode(spec), *resize, *_to_normalised_tensor(spec)])


def has_small_input(spec) -> bool:
    """Whether the network reads small whole images (see `SMALL_INPUT_MAX`)."""
    return spec.input_size <= SMALL_INPUT_MAX


class SmallEvalPixels:
    """The eval transform of a small-input network up to its pixels: PIL image → uint8
    tensor (C, S, S), mode converted and resized exactly as `eval_transform` does.
    `normalise_pixels` then turns a whole batch of them into what `eval_transform` gives
    image by image (the same float values), at a fraction of the per-image cost: for a
    28×28 PNG, ToTensor and Normalize one image at a time cost as much as decoding it."""

    def __init__(self, spec) -> None:
        if not has_small_input(spec):
            raise ValueError(f"{spec.name} reads {spec.input_size}-pixel inputs, not small ones (≤ {SMALL_INPUT_MAX})")
        self.mode = _mode(spec)
        self.size, self.channels = spec.input_size, spec.channels

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self.mode(image)
        if image.size != (self.size, self.size):  # as T.Resize((size, size)) on a PIL image
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8).reshape(self.size, self.size, self.channels)  # a writable copy
        return torch.from_numpy(array).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode.mode!r}, size={self.size})"


class PixelNormaliser:
    """uint8 pixels (B, C, S, S) → float32 normalised as `T.ToTensor` + `T.Normalize` do
    (divide by 255, subtract the mean, divide by the std: the same operations, so the
    same values). A class, so it pickles into DataLoader worker processes."""

    def __init__(self, spec) -> None:
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(torch.float32).div(255).sub_(self.mean).div_(self.std)


def train_transform(spec) -> Callable:
    """Light augmentation that keeps the object recognisable: crops covering most of the
    image, horizontal flips and mild colour jitter for photos; for small greyscale images
    (digits, clothing) only a mild crop, since flips can change a digit's meaning."""
    size = spec.input_size
    if size <= SMALL_INPUT_MAX:
        augment = [T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1))]
    else:
        augment = [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2)]
    return T.Compose([_mode(spec), *augment, *_to_normalised_tensor(spec)])
