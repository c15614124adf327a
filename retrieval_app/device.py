"""Device choice: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from .errors import RetrievalAppError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def select_device(preference: str = "auto") -> torch.device:
    """`auto` picks the best available; `cpu`, `cuda`, `cuda:N`, `mps` are honoured or refused."""
    if preference in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):  # torch's message lists dozens of device types
        raise RetrievalAppError(f"unknown device '{preference}' (use {DEVICE_CHOICES})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise RetrievalAppError(f"device '{preference}' is not supported here (use {DEVICE_CHOICES})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RetrievalAppError(f"device '{preference}' was asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RetrievalAppError(f"device '{preference}' was asked for, but there are only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RetrievalAppError(f"device '{preference}' was asked for, but Apple MPS is not available here")
    return device
