"""A training run in its own process, observed like the thread job (`TrainingJob`'s
`start`, `snapshot`, `wait`, `cancel`, `running`, the same `JobSnapshot`).

Why a process: a run that crashes (out of memory, a segfault in a native library, a
`kill -9`) takes only itself down; the app shows the failure with the process's last
lines of output and can start another run. The process also picks its own thread
counts, and is what a launcher such as `torchrun` would start.

How: `worker.py` runs the trainer and writes one JSON line per event to its stdout
(`wire.py` encodes any event data, arrays included); a thread here turns each line
back into a `TrainEvent` and records it exactly as the thread job does. Cancel writes
``cancel`` to the worker's stdin, which sets the trainer's cancel event: the run stops
within a batch as in a thread. If it has not ended `cancel_grace_s` later it is killed.
When this process ends, the worker sees its stdin close and stops (see `worker.py`);
at a normal exit it is also told so here, and killed if it lingers."""

from __future__ import annotations

import atexit
import base64
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..atomic import atomic_write_text
from ..errors import RetrievalAppError
from . import wire
from .config import TrainConfig
from .events import EventCallback, ignore_event
from .job import CANCELLED_EARLY, JobSnapshot, Outcome, TrainingJob
from .worker import ENV_PREFIX

if TYPE_CHECKING:
    from .standby import StandbyWorker

WORKER_MODULE = "retrieval_app.training.worker"
CANCEL_GRACE_S = 10.0  # after a cancel: the worker is killed if it has not ended by then
EXIT_GRACE_S = 3.0  # at this process's exit: how long a worker may take to stop
STDERR_TAIL_LINES = 8  # the worker's last output lines kept to explain a crash
STDERR_LINE_CHARS = 300


class ProcessTrainingJob(TrainingJob):
    """`callbacks` run in the worker, so they must pickle; what they send with
    `RunView.emit` arrives in the snapshot like any event. `on_event` runs here, on the
    thread that reads the worker's output. `threads`: the worker's intra-op thread
    count (None: every core it may use)."""

    def __init__(self, config: TrainConfig, on_event: EventCallback = ignore_event, callbacks: Sequence = (), *,
                 cancel_grace_s: float = CANCEL_GRACE_S, threads: int | None = None, standby: "StandbyWorker | None" = None) -> None:
        super().__init__(config, on_event=on_event, callbacks=callbacks)
        self.cancel_grace_s = cancel_grace_s
        self.threads = threads
        self.standby = standby  # a worker started ahead of time to take, and to refill when the run ends
        self.took_standby = False
        self._proc: subprocess.Popen | None = None
        self._done = threading.Event()
        self._output_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._started = False  # the worker said it runs (its imports done)
        self._cancel_sent = False
        self._killed_for = ""  # "cancel before start" or "cancel ignored": why this side killed it
        self._workdir: Path | None = None
        self._stderr_reader: threading.Thread | None = None

    # ------------------------------------------------------------ the TrainingJob interface
    def start(self) -> "ProcessTrainingJob":
        if self._proc is not None:
            raise RetrievalAppError("this training job was already started")
        self.config.validate()  # bad settings fail here, in the caller, as with a thread
        spec = wire.dumps({"config": self.config.to_dict(), "callbacks": self._pickled_callbacks(), "threads": self.threads,
                           "env": app_environment()})
        self._workdir = Path(tempfile.mkdtemp(prefix="retrieval-app-train-"))
        spec_path = self._workdir / "job.json"
        atomic_write_text(spec_path, spec)
        started_at = time.time()
        self._proc = self._standby_worker(spec_path)
        if self._proc is None:
            try:
                self._proc = spawn_worker(str(spec_path))
            except OSError as exc:
                self._remove_workdir()
                raise RetrievalAppError(f"could not start the training process: {exc}") from None
        with self._lock:
            self._snapshot = JobSnapshot(state="running", phase="starting", started_at=started_at)
        atexit.register(self._stop_at_exit)
        self._stderr_reader = threading.Thread(target=self._read_stderr, name=f"train-{self.config.name}-stderr", daemon=True)
        self._stderr_reader.start()
        threading.Thread(target=self._read_messages, name=f"train-{self.config.name}-events", daemon=True).start()
        return self

    def _standby_worker(self, spec_path: Path) -> subprocess.Popen | None:
        """The standby worker, given this run's spec (None: none was waiting, or it died)."""
        worker = self.standby.take() if self.standby is not None else None
        if worker is None:
            return None
        try:
            worker.stdin.write(str(spec_path).encode("utf-8") + b"\n")
            worker.stdin.flush()
        except (OSError, ValueError):  # it ended meanwhile: a fresh worker instead
            worker.kill()
            return None
        self.took_standby = True
        return worker

    def cancel(self) -> None:
        """Ask the worker to stop (it answers with its outcome, usually within a batch);
        kill it if it has not ended `cancel_grace_s` later. A worker still starting up
        (importing torch takes seconds) has nothing to keep: it is killed at once."""
        self._cancel.set()
        with self._lock:
            if self._proc is None or self._done.is_set() or self._cancel_sent:
                return
            self._cancel_sent = True
            if not self._started:
                self._killed_for = "cancel before start"
                self._proc.kill()
                return
        self._tell("cancel")
        threading.Thread(target=self._kill_unless_done, name=f"train-{self.config.name}-grace", daemon=True).start()

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        """Until the outcome is known (the worker may still be exiting)."""
        self._done.wait(timeout)
        return self.snapshot()

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._done.is_set()

    # ------------------------------------------------------------ the process
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def wait_process(self, timeout: float | None = None) -> int | None:
        """The worker's exit code once it has exited (None: still running after `timeout`)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _tell(self, command: str) -> None:
        try:
            self._proc.stdin.write(command.encode("ascii") + b"\n")
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the worker has already ended
            pass

    def _kill_unless_done(self) -> None:
        if self._done.wait(self.cancel_grace_s) or self._proc.poll() is not None:
            return
        self._killed_for = "cancel ignored"
        self._proc.kill()

    def _stop_at_exit(self) -> None:
        """This process is exiting: the worker sees its stdin close and cancels; kill it
        if it is still there shortly after."""
        if self._proc is None or self._proc.poll() is not None:
            return
        end_worker(self._proc, EXIT_GRACE_S)

    # ------------------------------------------------------------ reading the worker
    def _read_messages(self) -> None:
        for line in self._proc.stdout:
            try:
                message = wire.loads(line)
            except wire.WireError:  # not one of ours: keep it as output
                self._note_output(line.decode("utf-8", "replace"))
                continue
            try:
                self._handle(message)
            except Exception:  # an `on_event` bug must not stop the reading
                traceback.print_exc()
        code = self._proc.wait()
        if self._stderr_reader is not None:
            self._stderr_reader.join(2.0)  # the last lines explain a crash
        if not self._done.is_set():
            outcome = self._ended_without_outcome(code)
            self._finish(outcome.state, message=outcome.message, result=outcome.result, error=outcome.error)
        self._remove_workdir()

    def _handle(self, message) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ready":  # a standby worker's imports are done; "started" follows
            return
        if kind == "started":
            with self._lock:
                self._started = True
        elif kind == "event":
            self._record(message["event"])
        elif kind == "end":
            outcome: Outcome = message["outcome"]
            self._finish(outcome.state, message=outcome.message, result=outcome.result, error=outcome.error)

    def _read_stderr(self) -> None:
        prefix = f"[training process {self._proc.pid}] "
        for raw in self._proc.stderr:
            text = raw.decode("utf-8", "replace")
            self._note_output(text)
            try:
                sys.stderr.write(prefix + text)  # the server's log keeps the whole story
            except (OSError, ValueError):
                pass

    def _note_output(self, text: str) -> None:
        text = text.rstrip()
        if text:
            self._output_tail.append(text[:STDERR_LINE_CHARS])

    def _ended_without_outcome(self, code: int) -> Outcome:
        if self._killed_for == "cancel before start":
            return Outcome("cancelled", CANCELLED_EARLY)
        if self._killed_for == "cancel ignored":
            return Outcome("cancelled", f"Cancelled: the training process had not stopped {self.cancel_grace_s:g} s after the cancel and was "
                                        "killed; the model in use is unchanged.")
        detail = f"the training process {describe_exit(code)} before the run ended"
        tail = list(self._output_tail)
        detail += (". Its last output:\n" + "\n".join(tail)) if tail else " (it wrote nothing)."
        return Outcome("failed", detail, error=detail)

    def _finish(self, state: str, **kwargs) -> None:
        super()._finish(state, **kwargs)
        self._done.set()
        atexit.unregister(self._stop_at_exit)
        if self.standby is not None:  # the next run's worker, started now that this one is over
            self.standby.warm()

    # ------------------------------------------------------------ setup
    def _pickled_callbacks(self) -> str | None:
        if not self._callbacks:
            return None
        try:
            return base64.b64encode(pickle.dumps(self._callbacks)).decode("ascii")
        except Exception as exc:
            raise RetrievalAppError(f"the training callbacks cannot be sent to a training process ({exc}); use the thread runner") from None

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def spawn_worker(argument: str) -> subprocess.Popen:
    """A worker process for a spec's path, or `--standby` (see worker.py), talking
    through pipes, in its own session (a Ctrl-C in the app's terminal is the app's)."""
    return subprocess.Popen(
        [sys.executable, "-m", WORKER_MODULE, argument], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=worker_environment(), start_new_session=True,
    )


def end_worker(proc: subprocess.Popen, grace_s: float) -> None:
    """Close the worker's stdin (it cancels its run, or a standby leaves) and kill it if
    it is still there `grace_s` later."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def app_environment() -> dict[str, str]:
    """The app's own settings in this environment (see `worker.apply_environment`)."""
    return {name: value for name, value in os.environ.items() if name.startswith(ENV_PREFIX)}


def worker_environment() -> dict[str, str]:
    """This environment, with this copy of the package first on the worker's path, so
    the worker runs the same code as the app that started it."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    return env


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == 0:
        return "exited without reporting an outcome"
    return f"exited with code {code}"
