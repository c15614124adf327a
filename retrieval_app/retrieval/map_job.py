"""A map computed in the background, with a quick first map at once.

UMAP of 100,000 points takes minutes on a few cores; PCA of the same points about a
second. `MapJob.start` returns with `first` set: the requested map itself when it is
cached on disk (or is PCA), else a PCA map; the requested map is then computed in a
daemon thread (`compute_projection`, which caches it) and is `result` once `done`. The
caller shows `current` and swaps when `wait` says it is done. A job whose result is no
longer wanted is simply dropped: a UMAP fit cannot be interrupted, its thread ends on its
own and its map stays cached for next time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .projection import Projection, cached_projection, compute_projection

QUICK_METHOD = "pca"


@dataclass
class MapJob:
    """One requested map: `first` now, `result` when the background fit is done."""

    method: str
    first: Projection
    result: Projection | None = None
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None  # how long the background fit took
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def start(cls, embeddings: np.ndarray, method: str, *, seed: int = 0, cache_dir: str | Path | None = None,
              compute: Callable[..., Projection] | None = None, **params: Any) -> "MapJob":
        """Return at once with the first map; fit `method` in the background if needed.
        (`compute` is the fitter, replaceable so tests can hold the fit back; by default
        this module's `compute_projection`, looked up at each call.)"""
        compute = compute or compute_projection
        ready = compute(embeddings, method, seed=seed, cache_dir=cache_dir, **params) if method == QUICK_METHOD else \
            cached_projection(embeddings, method, seed=seed, cache_dir=cache_dir, **params)
        if ready is not None:
            job = cls(method, ready, result=ready, seconds=0.0)
            job._done.set()
            return job
        job = cls(method, compute(embeddings, QUICK_METHOD, seed=seed, cache_dir=cache_dir))
        thread = threading.Thread(target=job._fit, args=(compute, embeddings, method, dict(params, seed=seed, cache_dir=cache_dir)),
                                  name=f"map-{method}", daemon=True)
        job.started = time.monotonic()
        thread.start()
        return job

    def _fit(self, compute: Callable[..., Projection], embeddings: np.ndarray, method: str, options: dict) -> None:
        try:
            self.result = compute(embeddings, method, **options)
        except BaseException as exc:  # handed to whoever waits for the map
            self.error = exc
        finally:
            self.seconds = time.monotonic() - self.started
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def quick(self) -> bool:
        """Whether `first` was a stand-in (PCA) for the requested map."""
        return self.first is not self.result

    @property
    def current(self) -> Projection:
        """The best map there is now: the result when done, else the first map."""
        return self.result if self.result is not None else self.first

    @property
    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.monotonic() - self.started

    def wait(self, timeout: float | None = None) -> bool:
        """Until done or `timeout` seconds; True when done. Re-raises the fit's error."""
        finished = self._done.wait(timeout)
        if finished and self.error is not None:
            raise self.error
        return finished
