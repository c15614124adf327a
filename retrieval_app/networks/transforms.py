"""Eval and train transforms matched to each backbone's input (size, channels, norm).

They take a PIL image of any mode (RGB expected; greyscale, palette, RGBA are converted
first) and return a float tensor (channels, input_size, input_size)."""

from __future__ import annotations

from typing import Callable

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
