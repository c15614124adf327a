"""Class folds: the validation that predicts what fine-tuning does to classes it never saw.

One held-out set of 3–5 classes is too small to say how other unseen classes will fare
(on Caltech an internal check passed while new classes lost 0.08 MAP@R). So the classes
are dealt into k folds; each fold trains on the other folds' classes (minus some held-out
images of each, to measure the trained classes too) and validates on its own classes,
which it never saw. Averaged over the folds this estimates both numbers a user cares
about: retrieval on their own classes, and on classes it never saw.

Classes are dealt by the same process-independent hash as `data.split`, so folds are
stable across runs and machines and do not depend on file order."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from ..data.scan import ImageRecord
from ..data.split import Split, rank_key, split_records

MIN_FOLD_TRAIN_CLASSES = 2  # a triplet needs two classes
# A held-out group of one class measures nothing: every neighbour of its images is of the
# right class, so MAP@R is 1 whatever the model does (Fashion-MNIST's 5-class open split
# had such a fold, and it let a gate through that cost the real new classes).
MIN_HELD_OUT_CLASSES = 2


def eligible_classes(records: Sequence[ImageRecord]) -> list[str]:
    """Classes with at least two images (the only ones that can anchor a triplet)."""
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.class_name] += 1
    return sorted(name for name, n in counts.items() if n >= 2)


def fold_count(n_classes: int, wanted: int) -> int:
    """How many class folds `n_classes` allow: one group of at least two classes per fold,
    and every fold must leave two classes to train on; 0 when that is impossible."""
    if n_classes < MIN_FOLD_TRAIN_CLASSES + MIN_HELD_OUT_CLASSES:
        return 0
    return max(0, min(wanted, n_classes // MIN_HELD_OUT_CLASSES))


def class_folds(records: Sequence[ImageRecord], n_folds: int, *, val_fraction: float = 0.2, seed: int = 0) -> list[Split]:
    """Up to `n_folds` splits (fewer when there are few classes; none below three): the
    classes are dealt into that many groups; in fold i group i is `val_unseen`, and every
    other class gives `val_fraction` of its images to `val_seen` and the rest to `train`."""
    classes = eligible_classes(records)
    groups = fold_count(len(classes), n_folds)
    ranked = sorted(classes, key=lambda name: (rank_key(seed, "fold-class", name), name))
    folds = []
    for fold in range(groups):
        held_out = set(ranked[fold::groups])
        if len(classes) - len(held_out) < MIN_FOLD_TRAIN_CLASSES:
            continue
        unseen = [r for r in records if r.class_name in held_out]
        rest = split_records([r for r in records if r.class_name not in held_out], val_fraction=val_fraction, unseen_class_fraction=0.0, seed=seed)
        folds.append(Split(rest.train, rest.val_seen, sorted(unseen, key=lambda r: r.id)))
    return folds
