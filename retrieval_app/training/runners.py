"""Where a training run of the app goes: the registry of job kinds, by the names in
`choices.TRAINING_RUNNERS`.

- ``process`` (the app's default): `ProcessTrainingJob`, the trainer in its own process;
  a crash there leaves the app running and says why, the process sets its own threads.
  It costs a second or two of start-up (importing torch) per run.
- ``thread``: `TrainingJob`, the trainer in a thread of the caller; starts at once and
  shares the caller's memory (callbacks need not pickle), but a crash in native code
  takes the caller down with it.

Both give the same events, snapshots and outcomes."""

from __future__ import annotations

from typing import Sequence

from ..choices import DEFAULT_TRAINING_RUNNER, TRAINING_RUNNERS
from ..errors import RetrievalAppError
from .config import TrainConfig
from .events import EventCallback, ignore_event
from .job import TrainingJob
from .subprocess_job import ProcessTrainingJob

RUNNERS: dict[str, type[TrainingJob]] = {"process": ProcessTrainingJob, "thread": TrainingJob}


def training_job(config: TrainConfig, runner: str = DEFAULT_TRAINING_RUNNER, *, on_event: EventCallback = ignore_event,
                 callbacks: Sequence = ()) -> TrainingJob:
    """A job (not started) that runs `config` with `runner`."""
    if runner not in RUNNERS:
        raise RetrievalAppError(f"unknown training runner {runner!r} (choose from {', '.join(RUNNERS)})")
    return RUNNERS[runner](config, on_event=on_event, callbacks=callbacks)
