"""Training: configuration, the trainer, background jobs and checkpoints."""

from .checkpoint import (
    CheckpointInfo,
    checkpoint_distance,
    delete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_embedder,
)
from .config import TrainConfig
from .events import TrainEvent
from .job import JobSnapshot, TrainingJob
from .trainer import Trainer, TrainResult

__all__ = [
    "CheckpointInfo", "JobSnapshot", "TrainConfig", "TrainEvent", "TrainResult", "Trainer", "TrainingJob",
    "checkpoint_distance", "delete_checkpoint", "list_checkpoints", "load_checkpoint", "load_embedder",
]
