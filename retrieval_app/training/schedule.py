"""The learning rate over a full-mode run with a known end.

A run bounded by a time budget or a number of epochs knows how far along it is
(`ProgressClock.fraction`): the learning rate follows a half cosine from each parameter
group's own rate down to `FLOOR` of it at the end. Late, small steps settle the network
where a constant rate keeps it moving; the epoch kept is still chosen by validation. A
run without a known end (early stopping alone) keeps its rates.

A run resumed from `last.pt` goes on along the same curve: its epochs already done are
that share of an epoch-bounded run (`resumed_start`), and the resumed run covers the
rest (`along`). A run bounded by time alone starts the curve again: how much of it the
first run used is not known."""

from __future__ import annotations

import math

import torch

FLOOR = 0.05  # the last steps still move a little: a rate of zero would waste them


def cosine_factor(fraction: float, floor: float = FLOOR) -> float:
    """1 at the start, `floor` at the end (fraction clamped to [0, 1])."""
    fraction = min(max(fraction, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def remember_base_rates(optimizer: torch.optim.Optimizer) -> None:
    """Each group's rate as it was built: what `follow` scales. A resumed optimizer
    keeps the base rates its state dict carries."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])


def follow(optimizer: torch.optim.Optimizer, fraction: float) -> None:
    factor = cosine_factor(fraction)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def resumed_start(epochs_done: int, total_epochs: int | None) -> float:
    """The share of the curve behind a run resumed after `epochs_done` of `total_epochs`
    (None: no epoch bound, the curve starts again)."""
    if not total_epochs or epochs_done <= 0:
        return 0.0
    return min(epochs_done / total_epochs, 1.0)


def along(start: float, fraction: float) -> float:
    """Where on the whole curve a run that starts at `start` is, `fraction` of the way
    through its own steps."""
    return start + (1.0 - start) * fraction
