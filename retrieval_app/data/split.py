"""Held-out data for validation: images of trained classes, and whole unseen classes.

Users query with classes the model never trained on, so validation measures both: a
head that forgets unseen classes must not look like an improvement.

Choices are made by hashing (seed, class name) and (seed, image id) rather than by one
random stream, so they are the same in every process and stable when images are added:
an image's side of the split depends on itself, not on how many files came before it."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from .scan import ImageRecord

MIN_CLASSES_FOR_UNSEEN = 5  # classes with >= 2 images needed before any is held out whole
MIN_TRAIN_CLASSES = 2  # classes with >= 2 images always left for training
MIN_IMAGES_FOR_VAL = 4  # smaller classes give nothing to validation
MIN_TRAIN_IMAGES = 2  # an anchor needs a positive


@dataclass
class Split:
    """Disjoint parts of a record list: `train`, `val_seen` (held-out images of trained
    classes) and `val_unseen` (every image of the held-out classes); each sorted by id."""

    train: list[ImageRecord]
    val_seen: list[ImageRecord]
    val_unseen: list[ImageRecord]

    @property
    def unseen_classes(self) -> list[str]:
        return sorted({r.class_name for r in self.val_unseen})

    @property
    def train_classes(self) -> list[str]:
        return sorted({r.class_name for r in self.train})

    def summary(self) -> str:
        """Sizes of the three parts and the held-out classes, in a few lines."""
        lines = [
            f"train: {len(self.train)} images of {len(self.train_classes)} classes",
            f"validation, trained classes: {len(self.val_seen)} held-out images of {len({r.class_name for r in self.val_seen})} classes",
        ]
        unseen = self.unseen_classes
        if unseen:
            lines.append(f"validation, unseen classes: {len(self.val_unseen)} images of {len(unseen)} classes ({', '.join(unseen)})")
        else:
            lines.append("validation, unseen classes: none")
        return "\n".join(lines)


def split_records(records: Sequence[ImageRecord], *, val_fraction: float = 0.2, unseen_class_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split records for training and validation; deterministic for a seed.

    `val_unseen`: round(`unseen_class_fraction` × eligible classes), at least one, of the
    classes with >= 2 images, held out whole; only when there are at least 5 such classes,
    and always leaving 2 of them for training (fraction 0 disables it). `val_seen`: of
    each other class with >= 4 images, round(`val_fraction` × n) images, leaving at least 2
    for training. The parts are disjoint and together hold every record."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("unseen_class_fraction", unseen_class_fraction)
    by_class: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_class[record.class_name].append(record)
    unseen = _held_out_classes(by_class, unseen_class_fraction, seed)
    train, val_seen, val_unseen = [], [], []
    for name, members in by_class.items():
        if name in unseen:
            val_unseen.extend(members)
            continue
        ranked = sorted(members, key=lambda r: (rank_key(seed, "image", r.id), r.id))
        n_val = _n_validation(len(members), val_fraction)
        val_seen.extend(ranked[:n_val])
        train.extend(ranked[n_val:])
    by_id = lambda r: r.id  # noqa: E731 - one stable output order
    return Split(sorted(train, key=by_id), sorted(val_seen, key=by_id), sorted(val_unseen, key=by_id))


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), not {value}")


def _held_out_classes(by_class: dict[str, list[ImageRecord]], fraction: float, seed: int) -> set[str]:
    eligible = [name for name, members in by_class.items() if len(members) >= 2]
    if fraction <= 0 or len(eligible) < MIN_CLASSES_FOR_UNSEEN:
        return set()
    n = min(max(1, round(fraction * len(eligible))), len(eligible) - MIN_TRAIN_CLASSES)
    ranked = sorted(eligible, key=lambda name: (rank_key(seed, "class", name), name))
    return set(ranked[:n])


def _n_validation(n: int, fraction: float) -> int:
    if n < MIN_IMAGES_FOR_VAL:
        return 0
    return max(0, min(round(fraction * n), n - MIN_TRAIN_IMAGES))


def rank_key(seed: int, kind: str, key: str) -> bytes:
    """A pseudo-random, process-independent sort key (Python's `hash` is salted per process)."""
    # surrogateescape: a file name that is not valid UTF-8 hashes by its original bytes.
    return hashlib.blake2b(f"{seed}\0{kind}\0{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
