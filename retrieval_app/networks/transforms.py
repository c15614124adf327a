"""Eval and train transforms matched to each backbone's input (size, channels, norm)."""

from __future__ import annotations

from torchvision import transforms as T


def _normalise(spec) -> list:
    grey = [T.Grayscale(num_output_channels=1)] if spec.channels == 1 else []
    return grey, [T.ToTensor(), T.Normalize(spec.mean, spec.std)]


def eval_transform(spec):
    grey, tail = _normalise(spec)
    if spec.input_size <= 64:  # tiny inputs (MNIST-like): resize straight to the square
        return T.Compose([*grey, T.Resize((spec.input_size, spec.input_size)), *tail])
    # Resize the short side to input/0.875 then crop the centre, as ImageNet models expect.
    return T.Compose([*grey, T.Resize(round(spec.input_size / 0.875)), T.CenterCrop(spec.input_size), *tail])


def train_transform(spec):
    """Light augmentation: crops that keep most of the object, flips, mild colour."""
    grey, tail = _normalise(spec)
    if spec.input_size <= 64:
        return T.Compose([*grey, T.RandomResizedCrop(spec.input_size, scale=(0.8, 1.0), ratio=(0.9, 1.1)), *tail])
    return T.Compose([
        T.RandomResizedCrop(spec.input_size, scale=(0.6, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.2, 0.2, 0.2),
        *grey, *tail,
    ])
