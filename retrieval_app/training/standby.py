"""A training process started ahead of time, so that a run in its own process starts
as fast as one in a thread.

A new Python process spends most of its start importing torch (seconds on a quiet
machine, 20 s and more on a busy one). `StandbyWorker` keeps at most one worker started
with `--standby` (see `worker.py`): it has done its imports and waits for a job on its
stdin. `ProcessTrainingJob` takes it when it starts a run (or starts a fresh worker when
there is none), and the app asks for the next one when a run ends or when the user opens
the fine-tune panel - never while a run trains, so the import does not take the CPU
from the training.

One per app (the app's `SessionRegistry` holds it), not a global: closing it ends its
worker, which also ends by itself when this process exits (its stdin closes)."""

from __future__ import annotations

import atexit
import subprocess
import threading

from .worker import STANDBY_FLAG

CLOSE_GRACE_S = 3.0


class StandbyWorker:
    def __init__(self, spawn=None) -> None:
        from .subprocess_job import spawn_worker  # the same command line as a fresh worker

        self._spawn = spawn or spawn_worker
        self._lock = threading.Lock()
        self._worker: subprocess.Popen | None = None
        self._closed = False
        atexit.register(self.close)

    def warm(self) -> None:
        """Start a worker unless one is already waiting (cheap to call often)."""
        with self._lock:
            if self._closed or (self._worker is not None and self._worker.poll() is None):
                return
            try:
                self._worker = self._spawn(STANDBY_FLAG)
            except OSError:  # the run will start its own worker, and say so if it cannot
                self._worker = None

    def take(self) -> subprocess.Popen | None:
        """The waiting worker, now the caller's (None when there is none alive)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None and worker.poll() is not None:
            _reap(worker)
            return None
        return worker

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._worker.pid if self._worker is not None else None

    def close(self) -> None:
        """End the waiting worker (it exits when its stdin closes) and start no more."""
        with self._lock:
            worker, self._worker, self._closed = self._worker, None, True
        if worker is not None:
            _reap(worker)
        atexit.unregister(self.close)


def _reap(worker: subprocess.Popen) -> None:
    from .subprocess_job import end_worker

    end_worker(worker, CLOSE_GRACE_S)
    worker.wait()  # collected, not left a zombie
    for stream in (worker.stdout, worker.stderr):  # nobody reads them: no descriptors left open
        try:
            stream.close()
        except OSError:
            pass
