"""Training progress on the command line: a bar on a terminal, whole lines in a log."""

from __future__ import annotations

import io

from retrieval_app.cli.progress import LOG_STEP_INTERVAL_S, TrainingProgressPrinter
from retrieval_app.training.events import TrainEvent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def epoch_event(epoch: int) -> TrainEvent:
    metrics = {"loss": 0.5, "active_fraction": 0.25, "val_seen": {"precision_at_1": 0.75, "map_at_r": 0.5}}
    return TrainEvent("epoch", epoch=epoch, epochs=2, metrics=metrics, eta_s=3.0)


def run_two_epochs(printer: TrainingProgressPrinter, clock: FakeClock | None = None, steps_per_epoch: int = 1000) -> None:
    """Phases, 2 × `steps_per_epoch` steps (one simulated second each), epochs, and kinds
    the printer does not know (the trainer may add some)."""
    with printer:
        printer(TrainEvent("phase", phase="extracting features", message="extracting backbone features of 40 images"))
        printer(epoch_event(0))
        for epoch in (1, 2):
            printer(TrainEvent("phase", phase="training", message=f"training epoch {epoch}"))
            for i in range(steps_per_epoch):
                if clock is not None:
                    clock.now += 1.0
                step = (epoch - 1) * steps_per_epoch + i + 1
                printer(TrainEvent("step", epoch=epoch, step=step, total_steps=2 * steps_per_epoch, loss=0.5, active_fraction=0.3, images_per_s=120.0))
            printer(TrainEvent("heartbeat", message="a kind added later"))
            printer(epoch_event(epoch))
        printer(TrainEvent("done", message="finished"))
        printer(TrainEvent("cancelled"))
        printer(object())  # not even an event: ignored, never a crash


def test_without_a_terminal_each_phase_and_epoch_is_one_line():
    log = io.StringIO()
    run_two_epochs(TrainingProgressPrinter(log, clock=FakeClock()))
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[:2] == ["extracting backbone features of 40 images", "    start | loss 0.5000 | active 0.25 | seen P@1 0.750 MAP@R 0.500"]
    assert lines[2] == "training epoch 1" and lines.count("training epoch 2") == 1
    assert sum(line.strip().startswith("epoch ") for line in lines) == 2
    # No clock advance (FakeClock stays at 0): not a single step line.
    assert not any(line.strip().startswith("step") for line in lines)


def test_without_a_terminal_a_long_epoch_logs_a_step_line_a_minute():
    log, clock = io.StringIO(), FakeClock()
    run_two_epochs(TrainingProgressPrinter(log, clock=clock), clock, steps_per_epoch=300)  # 600 simulated seconds
    step_lines = [line for line in log.getvalue().splitlines() if line.strip().startswith("step")]
    assert len(step_lines) == int(600 // LOG_STEP_INTERVAL_S) - 1  # the first interval starts at the first step
    assert step_lines[0].split("|")[0].strip() == "step 61/600" and "120 img/s" in step_lines[0]


def test_on_a_terminal_a_bar_follows_the_steps():
    terminal = Terminal()
    run_two_epochs(TrainingProgressPrinter(terminal), steps_per_epoch=50)
    text = terminal.getvalue()
    assert "\r" in text and "100/100" in text  # tqdm redraws its line
    assert "training epoch 2" in text and "epoch 2 | loss 0.5000" in text


def test_live_can_be_forced_either_way():
    assert TrainingProgressPrinter(io.StringIO(), live=True).live
    assert not TrainingProgressPrinter(Terminal(), live=False).live
