"""Device choice: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from .errors import RetrievalAppError


def select_device(preference: str = "auto") -> torch.device:
    """`auto` picks the best available; `cpu`, `cuda`, `cuda:N`, `mps` are honoured or refused."""
    if preference in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RetrievalAppError(f"device '{preference}' was asked for, but CUDA is not available here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RetrievalAppError(f"device '{preference}' was asked for, but Apple MPS is not available here")
    return device
