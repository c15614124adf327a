"""What a training run tells its caller while it works."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

EVENT_KINDS = ("phase", "step", "epoch", "done", "cancelled", "failed")


@dataclass
class TrainEvent:
    kind: str  # one of EVENT_KINDS
    phase: str = ""  # e.g. "scanning", "extracting features", "training", "validating"
    epoch: int = 0
    epochs: int | None = None  # None when a time budget decides
    step: int = 0  # global step
    total_steps: int | None = None
    fraction: float = 0.0  # overall progress 0..1
    loss: float | None = None
    active_fraction: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # epoch-end validation
    message: str = ""


EventCallback = Callable[[TrainEvent], None]


def ignore_event(event: TrainEvent) -> None:
    """The default callback."""
