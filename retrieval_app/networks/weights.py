"""Reading weight files and obtaining ImageNet weights, with errors a user can act on."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import WeightsUnavailableError

# Seconds to wait for the weights server before calling it unreachable: a machine that is
# offline behind a silent firewall would otherwise hang on the first download.
DOWNLOAD_PROBE_TIMEOUT_S = 10.0


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a `.pth`/`.pt` file, read with `weights_only=True` (no code runs).
    A checkpoint that wraps it as `{"state_dict": ...}` is unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, a pickle that weights_only refuses, ...
        raise WeightsUnavailableError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"weights file {path} does not hold a state_dict of tensors")
    return state


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`module.load_state_dict(state)` that reports missing, unexpected or misshapen
    tensors as one line naming `what` the weights were meant for."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first_problem = str(exc).strip().splitlines()
        detail = first_problem[1].strip() if len(first_problem) > 1 else first_problem[0]
        raise WeightsUnavailableError(f"weights do not fit {what}: {detail[:300]}") from exc


def download_state_dict(weights_enum_member, pretty_name: str) -> dict[str, torch.Tensor]:
    """Download (or take from torch's hub cache) a torchvision weights entry. When the
    server cannot be reached, fail fast with a message that says what to do instead."""
    url = weights_enum_member.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    try:
        if not cached.is_file():
            _probe(url)
        return weights_enum_member.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # URLError, timeouts, proxies refusing, bad hash: all mean "not here"
        raise WeightsUnavailableError(
            f"could not download {pretty_name} ImageNet weights ({type(exc).__name__}; offline?). "
            "Pass weights=FILE (a torchvision state_dict .pth) or use efficientnet_lite0, which ships offline"
        ) from exc


def _probe(url: str) -> None:
    """A HEAD request with a timeout (urllib honours proxy settings, as the download
    does); torch's own download has no timeout."""
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=DOWNLOAD_PROBE_TIMEOUT_S):
        pass
