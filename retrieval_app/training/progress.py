"""Throughput and ETA for a run bounded by epochs, a time budget, or both."""

from __future__ import annotations

import time


class ProgressClock:
    def __init__(self, total_steps: int | None, time_budget: float | None) -> None:
        self.total_steps = total_steps
        self.time_budget = time_budget
        self.started = time.monotonic()
        self.images = 0
        self.steps = 0

    def tick(self, images: int) -> None:
        self.tick_many(1, images)

    def tick_many(self, steps: int, images: int) -> None:
        self.steps += steps
        self.images += images

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def images_per_s(self) -> float:
        return self.images / max(self.elapsed, 1e-9)

    def out_of_time(self) -> bool:
        return self.time_budget is not None and self.elapsed >= self.time_budget

    def eta_s(self) -> float | None:
        estimates = []
        if self.total_steps and self.steps:
            estimates.append(self.elapsed / self.steps * max(self.total_steps - self.steps, 0))
        if self.time_budget is not None:
            estimates.append(max(self.time_budget - self.elapsed, 0.0))
        return min(estimates) if estimates else None

    def fraction(self) -> float:
        fractions = []
        if self.total_steps:
            fractions.append(self.steps / self.total_steps)
        if self.time_budget:
            fractions.append(self.elapsed / self.time_budget)
        return min(max(fractions), 1.0) if fractions else 0.0


class PassProgress:
    """Progress of one pass over images outside the training steps (backbone features,
    a validation pass): a `(done, total)` callback that reports "label: done/total
    images, about N s left" through `report(text)` after every batch. Rows served from a
    cache (the first call's `done`) do not count toward the speed."""

    def __init__(self, label: str, report, clock=time.monotonic) -> None:
        self.label = label
        self.report = report
        self.clock = clock
        self.started = clock()
        self.first_done: int | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.first_done is None:
            self.first_done, self.started = done, self.clock()
        self.report(self.text(done, total))

    def text(self, done: int, total: int) -> str:
        text = f"{self.label}: {done}/{total} images"
        computed, elapsed = done - (self.first_done or 0), self.clock() - self.started
        if 0 < done < total and computed > 0 and elapsed > 0:
            text += f", about {elapsed / computed * (total - done):.0f} s left"
        return text
