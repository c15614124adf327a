"""The stall watch: a callback that notices when training no longer changes the model.

With no active triplet in a batch (every triplet already satisfies the margin) the loss
and its gradient are exactly zero; after `STALL_STEPS` such steps in a row the training
is spending its time on nothing. The watch then warns once per run, and when a time
budget alone sets the length (no epoch count), it asks the trainer to stop early: the
rest of the budget would change nothing."""

from __future__ import annotations

from .callbacks import Callback, RunView
from .config import TrainConfig
from .events import TrainEvent

STALL_STEPS = 200  # steps in a row without an active triplet


class StallWatch(Callback):
    def __init__(self, config: TrainConfig, steps: int = STALL_STEPS) -> None:
        self.steps = steps
        self.may_stop = config.time_budget is not None and config.epochs is None
        self.run: RunView | None = None
        self.warned = False

    def on_training_start(self, run: RunView) -> None:
        self.run, self.warned = run, False

    def on_event(self, event: TrainEvent) -> None:
        if event.kind != "step" or self.warned or self.run is None:
            return
        inactive = event.data.get("inactive_steps", 0)
        if inactive < self.steps:
            return
        self.warned = True
        reason = f"training has stalled: no triplet violated the margin in the last {inactive} steps (loss 0), so the model no longer changed"
        if self.may_stop:
            self.run.request_stop(reason)
            text = f"{reason}; stopping early, since a time budget alone set the length"
        else:
            text = f"{reason}; a larger margin, or fewer epochs, would use the time better"
        self.run.emit(TrainEvent("warning", phase=event.phase, step=event.step, message=text,
                                 data={"stalled": {"step": event.step, "inactive_steps": inactive, "stopping": self.may_stop}}))
