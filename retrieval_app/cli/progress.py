"""Terminal rendering of training events: a progress bar and one line per epoch."""

from __future__ import annotations

import sys

from tqdm import tqdm

from ..training.events import TrainEvent


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


class TrainingProgressPrinter:
    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.bar: tqdm | None = None

    def __enter__(self) -> "TrainingProgressPrinter":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, event: TrainEvent) -> None:
        if event.kind == "phase" and event.message:
            self._write(event.message)
        elif event.kind == "step":
            self._step(event)
        elif event.kind == "epoch":
            self._epoch(event)

    def _step(self, event: TrainEvent) -> None:
        if self.bar is None:
            self.bar = tqdm(total=event.total_steps, unit="step", file=self.stream, dynamic_ncols=True, leave=False)
        self.bar.n = event.step
        self.bar.set_postfix(epoch=event.epoch, loss=_fmt(event.loss, ".4f"), active=_fmt(event.active_fraction, ".2f"), img_s=_fmt(event.images_per_s, ".0f"), refresh=False)
        self.bar.refresh()

    def _epoch(self, event: TrainEvent) -> None:
        m = event.metrics
        label = "start" if event.epoch == 0 else f"epoch {event.epoch}"
        parts = [f"{label:>9}", f"loss {_fmt(m.get('loss'), '.4f')}", f"active {_fmt(m.get('active_fraction'), '.2f')}"]
        for set_name, short in (("val_seen", "seen"), ("val_unseen", "unseen")):
            if set_name in m:
                parts.append(f"{short} P@1 {_fmt(m[set_name]['precision_at_1'])} MAP@R {_fmt(m[set_name]['map_at_r'])}")
        if event.eta_s is not None and event.epoch:
            parts.append(f"ETA {event.eta_s:.0f}s")
        self._write(" | ".join(parts))

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream)
