"""The learning rate over a full-mode run with a known end.

A run bounded by a time budget or a number of epochs knows how far along it is
(`ProgressClock.fraction`): the learning rate follows a half cosine from each parameter
group's own rate down to `FLOOR` of it at the end. Late, small steps settle the network
where a constant rate keeps it moving; the epoch kept is still chosen by validation. A
run without a known end (early stopping alone) keeps its rates."""

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
