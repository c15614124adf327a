"""Held-out data for validation: images of trained classes, and whole unseen classes.

Users query with classes the model never trained on, so validation measures both: a
head that forgets unseen classes must not look like an improvement."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from .scan import ImageRecord

MIN_CLASSES_FOR_UNSEEN = 5  # fewer classes: every class is needed for training
MIN_IMAGES_FOR_VAL = 4  # tiny classes give nothing to validation
MIN_TRAIN_IMAGES = 2  # an anchor needs a positive


@dataclass
class Split:
    train: list[ImageRecord]
    val_seen: list[ImageRecord]
    val_unseen: list[ImageRecord]

    def summary(self) -> str:
        unseen = sorted({r.class_name for r in self.val_unseen})
        text = f"train {len(self.train)} images, validation {len(self.val_seen)} held-out images of trained classes"
        if unseen:
            text += f" + {len(self.val_unseen)} images of {len(unseen)} held-out classes ({', '.join(unseen)})"
        return text


def split_records(records: list[ImageRecord], *, val_fraction: float = 0.2, unseen_class_fraction: float = 0.2, seed: int = 0) -> Split:
    """Deterministic for a seed; the three parts are disjoint and cover `records`."""
    rng = random.Random(seed)
    by_class: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_class[record.label].append(record)
    unseen_labels = _pick_unseen_classes(by_class, unseen_class_fraction, rng)
    train, val_seen, val_unseen = [], [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda r: r.id)
        if label in unseen_labels:
            val_unseen.extend(members)
            continue
        rng.shuffle(members)
        n_val = _n_validation(len(members), val_fraction)
        val_seen.extend(members[:n_val])
        train.extend(members[n_val:])
    key = lambda r: r.id  # noqa: E731 - stable output order
    return Split(sorted(train, key=key), sorted(val_seen, key=key), sorted(val_unseen, key=key))


def _pick_unseen_classes(by_class: dict, fraction: float, rng: random.Random) -> set[int]:
    eligible = sorted(label for label, members in by_class.items() if len(members) >= 2)
    if fraction <= 0 or len(eligible) < MIN_CLASSES_FOR_UNSEEN:
        return set()
    n = min(max(1, round(fraction * len(eligible))), len(eligible) - 2)
    return set(rng.sample(eligible, n))


def _n_validation(n: int, fraction: float) -> int:
    if n < MIN_IMAGES_FOR_VAL or fraction <= 0:
        return 0
    return min(max(1, round(fraction * n)), n - MIN_TRAIN_IMAGES)
