"""Reducing per-triplet losses to one number."""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def reduce(per_triplet: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_triplet.mean() if per_triplet.numel() else per_triplet.sum()
    if reduction == "sum":
        return per_triplet.sum()
    if reduction == "none":
        return per_triplet
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, not '{reduction}'")
