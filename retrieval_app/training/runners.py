"""Where a training run of the app goes: the registry of job kinds, by the names in
`choices.TRAINING_RUNNERS`.

- ``process`` (the app's default): `ProcessTrainingJob`, the trainer in its own process;
  a crash there leaves the app running and says why, the process sets its own threads.
  Its start-up (a new Python process importing torch: seconds) is paid ahead of time
  by a standby worker (`standby.py`) when the app gives one.
- ``thread``: `TrainingJob`, the trainer in a thread of the caller; starts at once and
  shares the caller's memory (callbacks need not pickle), but a crash in native code
  takes the caller down with it.

Both give the same events, snapshots and outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..choices import DEFAULT_TRAINING_RUNNER, TRAINING_RUNNERS
from ..errors import RetrievalAppError
from .config import TrainConfig
from .events import EventCallback, ignore_event
from .job import TrainingJob
from .standby import StandbyWorker
from .subprocess_job import ProcessTrainingJob


def _process_job(config: TrainConfig, *, standby: StandbyWorker | None = None, **kwargs) -> TrainingJob:
    return ProcessTrainingJob(config, standby=standby, **kwargs)


def _thread_job(config: TrainConfig, *, standby: StandbyWorker | None = None, **kwargs) -> TrainingJob:
    return TrainingJob(config, **kwargs)  # a thread has nothing to start ahead of time


@dataclass(frozen=True)
class Runner:
    make: Callable[..., TrainingJob]  # (config, *, on_event, callbacks, standby) -> job, not started
    starts_ahead: bool  # its start-up can be paid ahead of time by a standby worker (standby.py)


RUNNERS: dict[str, Runner] = {"process": Runner(_process_job, starts_ahead=True), "thread": Runner(_thread_job, starts_ahead=False)}
assert tuple(RUNNERS) == TRAINING_RUNNERS, "choices.TRAINING_RUNNERS and training.runners.RUNNERS must list the same runners"


def training_job(config: TrainConfig, runner: str = DEFAULT_TRAINING_RUNNER, *, on_event: EventCallback = ignore_event,
                 callbacks: Sequence = (), standby: StandbyWorker | None = None) -> TrainingJob:
    """A job (not started) that runs `config` with `runner`; `standby`: the app's worker
    started ahead of time, which a process job takes (see standby.py)."""
    if runner not in RUNNERS:
        raise RetrievalAppError(f"unknown training runner {runner!r} (choose from {', '.join(RUNNERS)})")
    return RUNNERS[runner].make(config, on_event=on_event, callbacks=callbacks, standby=standby)


def standby_worker(runner: str) -> StandbyWorker | None:
    """The worker an app keeps started ahead of time for `runner`'s runs (None: its runs
    need none; an unknown runner is refused when a run starts, by `training_job`)."""
    kind = RUNNERS.get(runner)
    return StandbyWorker() if kind is not None and kind.starts_ahead else None
