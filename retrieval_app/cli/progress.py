"""Terminal rendering of training events: a progress bar, one line per validation (and
one for the mining statistics of the steps before it), and warnings.

On a terminal a tqdm bar follows the steps. Anywhere else (a log file, a pipe, CI) a
bar would write a carriage-return update per step, thousands of them, so only whole
lines are printed: each phase, each epoch, and at most one step line a minute, so a
long epoch still shows signs of life. Event kinds this module does not know are
ignored, so the trainer can add kinds without breaking the command line."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Callable

from .report import printable

if TYPE_CHECKING:  # the events module is light, but importing it loads the trainer
    from ..training.events import TrainEvent

LOG_STEP_INTERVAL_S = 60.0  # without a terminal: one step line at most this often


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


class TrainingProgressPrinter:
    """A `TrainEvent` callback. `live`: draw a bar (default: when `stream` is a terminal)."""

    def __init__(self, stream=None, *, live: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = _is_terminal(self.stream) if live is None else live
        self.clock = clock
        self.bar = None
        self.last_step_line: float | None = None

    def __enter__(self) -> "TrainingProgressPrinter":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, event: "TrainEvent") -> None:
        kind = getattr(event, "kind", None)
        if kind == "phase" and event.message:
            self._write(event.message)
        elif kind == "step" and self.live:
            self._step(event)
        elif kind == "step":
            self._step_line(event)
        elif kind == "epoch":
            self._epoch(event)
        elif kind == "warning" and event.message:
            self._write(f"warning: {event.message}")

    def _step(self, event: "TrainEvent") -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=event.total_steps, unit="step", file=self.stream, dynamic_ncols=True, leave=False)
        self.bar.n = event.step
        self.bar.set_postfix(epoch=event.epoch, loss=_fmt(event.loss, ".4f"), active=_fmt(event.active_fraction, ".2f"), img_s=_fmt(event.images_per_s, ".0f"), refresh=False)
        self.bar.refresh()

    def _step_line(self, event: "TrainEvent") -> None:
        now = self.clock()
        if self.last_step_line is None:
            self.last_step_line = now  # the first interval starts with the first step
            return
        if now - self.last_step_line < LOG_STEP_INTERVAL_S:
            return
        self.last_step_line = now
        total = f"/{event.total_steps}" if event.total_steps else ""
        self._write(f"   step {event.step}{total} | epoch {event.epoch} | loss {_fmt(event.loss, '.4f')} | "
                    f"active {_fmt(event.active_fraction, '.2f')} | {_fmt(event.images_per_s, '.0f')} img/s")

    def _epoch(self, event: "TrainEvent") -> None:
        m = event.metrics
        if "fold" in m:  # quick mode: one line per measurement of a class fold's run
            parts = [f"fold {m['fold']} step {m.get('step', 0):>5}"]
        else:
            label = "start" if event.epoch == 0 else f"epoch {event.epoch}"
            parts = [f"{label:>9}", f"loss {_fmt(m.get('loss'), '.4f')}", f"active {_fmt(m.get('active_fraction'), '.2f')}"]
        for set_name, short in (("val_seen", "seen"), ("val_unseen", "unseen")):
            if set_name in m:
                parts.append(f"{short} P@1 {_fmt(m[set_name]['precision_at_1'])} MAP@R {_fmt(m[set_name]['map_at_r'])}")
        if event.eta_s is not None and (event.epoch or "fold" in m):
            parts.append(f"ETA {event.eta_s:.0f}s")
        self._write(" | ".join(parts))
        if isinstance(m.get("mining"), dict):
            self._write(mining_line(m["mining"]))

    def _write(self, text: str) -> None:
        text = printable(text)
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)


def mining_line(mining: dict) -> str:
    """The mining statistics of the steps before a validation, in one short line."""
    kinds = " ".join(f"{name} {100 * mining.get(key, 0.0):.0f}%" for key, name in (("hard", "hard"), ("semi_hard", "semi-hard"), ("easy", "easy")))
    return f"{'':>9}   triplets {kinds} | d(a,p) {_fmt(mining.get('d_ap'))} d(a,n) {_fmt(mining.get('d_an'))}"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
