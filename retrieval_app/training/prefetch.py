"""Preparing a training loop's next batches on a second core while it trains on this one.

Quick mode's step on cached features runs on one thread (`threads.py`); drawing the
next P×K batch, gathering its feature rows and computing what depends on those rows
alone (the identity head's within-batch Gram factor) is about a third of it, and none of
it depends on the step before. `Prefetcher` runs that part ahead on a background thread
when the process may use a second core, keeping a few batches ready; with one core it
produces each batch when asked, as the loop did before.

`produce` makes several batches per call: each torch call the background thread makes
takes Python's global lock for a moment, and every time the training thread then waits
for it, it loses a thread wake-up; measured on the 2-core machine, preparing batch by
batch on the second core slowed the training thread's step by ~0.5 ms, a third of it.
Batched calls (one gather, one Gram product, one Cholesky for 16 batches) keep those
moments few.

The batches come out in the order they were made, and `produce` is only ever called by
one thread at a time, so a seeded run gives the same batches whether or not it
prefetches. `pause()` stops the thread and keeps the batches it made for the next
`next()`: nothing drawn from the sampler is lost between two `HeadLoop.run` calls."""

from __future__ import annotations

import collections
import threading
from typing import Callable, Generic, TypeVar

from ..threads import available_cores, use_threads

T = TypeVar("T")

DEPTH = 32  # items kept ready (at least one `produce` call's worth is made even so)


class Prefetcher(Generic[T]):
    """`next(prefetcher)` is the next item of the lists `produce()` returns, made ahead
    while `start()`ed."""

    def __init__(self, produce: Callable[[], list[T]], *, depth: int = DEPTH, enabled: bool | None = None) -> None:
        self.produce = produce
        self.depth = max(1, depth)
        self.enabled = available_cores() >= 2 if enabled is None else enabled
        self._ready: collections.deque[T] = collections.deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> "Prefetcher[T]":
        """Start making batches ahead (no-op when disabled or already running)."""
        if self.enabled and self._thread is None:
            self._stopping, self._error = False, None
            self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
            self._thread.start()
        return self

    def pause(self) -> None:
        """Stop the thread once its current batch is made; the batches made stay queued."""
        thread = self._thread
        if thread is None:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        thread.join()
        self._thread = None

    def __iter__(self) -> "Prefetcher[T]":
        return self

    def __next__(self) -> T:
        if self._thread is None:
            if not self._ready:
                self._ready.extend(self.produce())
            return self._ready.popleft()
        with self._changed:
            while not self._ready and self._error is None:
                self._changed.wait()
            if not self._ready:  # the thread failed: its error, in the caller's thread
                error, self._error = self._error, None
                self._thread = None
                raise error
            item = self._ready.popleft()
            if len(self._ready) < self.depth:  # only then has the thread work: no wake-up for nothing
                self._changed.notify_all()
            return item

    def _work(self) -> None:
        with use_threads(1):  # small per-batch work: one core, the other one trains
            while True:
                with self._changed:
                    while len(self._ready) >= self.depth and not self._stopping:
                        self._changed.wait()
                    if self._stopping:
                        return
                try:
                    items = self.produce()
                except BaseException as error:  # noqa: BLE001 - handed to the consumer
                    with self._changed:
                        self._error = error
                        self._changed.notify_all()
                    return
                with self._changed:
                    self._ready.extend(items)
                    self._changed.notify_all()
