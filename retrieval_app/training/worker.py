"""The training process: `python -m retrieval_app.training.worker SPEC.json`.

Started by `ProcessTrainingJob` (see `subprocess_job.py`), never by users. It runs the
same `run_trainer` as the thread job and talks to its parent through its standard
streams:

- stdout carries only messages, one JSON line each (`wire.py`): ``{"type": "started"}``
  once it listens for a cancel, ``{"type": "event", "event": TrainEvent}`` while the run goes on, then ``{"type": "end", "outcome":
  Outcome}``. Anything else that would print to stdout (a library's print) goes to
  stderr instead, so it cannot break a line;
- stderr is free text: the parent keeps its last lines to explain a crash;
- stdin brings commands: a line ``cancel`` sets the trainer's cancel event. End of file
  means the parent is gone (exited, killed, crashed): the run is cancelled and the
  process exits within `EXIT_AFTER_PARENT_GONE_S`, so no training outlives its app. A
  pipe is used rather than Linux's PR_SET_PDEATHSIG, which fires when the *thread* that
  started the child ends (a web server's worker thread may) and exists on Linux only.

`python -m retrieval_app.training.worker --standby` is a worker started ahead of time
(`standby.py`): it imports torch and the trainer, says ``{"type": "ready"}``, and waits
for one line on stdin, the spec's path; from there it runs as above. End of file
instead: it exits, nothing done.

SIGTERM and SIGINT cancel too (a second one ends the process at once), so `kill` or a
launcher that forwards signals stops a run the same way the app's Cancel does."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from . import wire

EXIT_AFTER_PARENT_GONE_S = 10.0  # a cancelled run normally stops within a batch
EXIT_PARENT_GONE = 3  # the exit code when the run did not stop in time after that
STANDBY_FLAG = "--standby"
ENV_PREFIX = "RETRIEVAL_APP_"


class Channel:
    """Messages to the parent, one line each, whole lines only (a lock: events come from
    the trainer's thread and from callbacks' threads). When the parent stops reading,
    the run is cancelled: nobody is left to use its result."""

    def __init__(self, stream: BinaryIO, cancel: threading.Event) -> None:
        self.stream, self.cancel = stream, cancel
        self._lock = threading.Lock()
        self._open = True

    def event(self, event) -> None:
        self.send({"type": "event", "event": event})

    def send(self, message: dict[str, Any]) -> None:
        try:
            line = wire.dumps(message)
        except wire.WireError as exc:
            print(f"retrieval-app worker: {exc}; sent without the values that cannot travel", file=sys.stderr)
            line = wire.dumps(_without_unsendable(message))
        with self._lock:
            if not self._open:
                return
            try:
                self.stream.write(line.encode("utf-8") + b"\n")
                self.stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._open = False
                self.cancel.set()


def _without_unsendable(message: dict[str, Any]) -> dict[str, Any]:
    """An event with the `data` keys that cannot be encoded left out (a callback's odd
    value must not end the run); any other message that cannot travel is a bug."""
    event = message.get("event")
    if event is None:
        from .job import Outcome

        text = "the training process could not send the run's outcome"
        return {"type": "end", "outcome": Outcome("failed", text, error=text)}
    kept = {}
    for key, value in event.data.items():
        try:
            wire.encode(value)
            kept[key] = value
        except wire.WireError:
            pass
    return {**message, "event": replace(event, data=kept)}


def claim_stdout() -> BinaryIO:
    """The real stdout for messages; fd 1 (print, C libraries) then points at stderr."""
    sys.stdout.flush()
    messages = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return messages


def watch_parent(stdin_fd: int, cancel: threading.Event, pending: bytes = b"") -> threading.Thread:
    """Commands from the parent, read from the raw file descriptor: a thread blocked in
    `sys.stdin`'s buffered reader would hold its lock and abort the interpreter's exit.
    `pending`: bytes already read after the spec's line (a standby worker)."""

    def read() -> None:
        buffer = pending
        while True:
            *lines, buffer = buffer.split(b"\n")
            if any(line.strip() == b"cancel" for line in lines):
                cancel.set()
            chunk = _read(stdin_fd)
            if not chunk:
                break
            buffer += chunk
        cancel.set()  # end of file: the parent is gone
        timer = threading.Timer(EXIT_AFTER_PARENT_GONE_S, os._exit, (EXIT_PARENT_GONE,))
        timer.daemon = True
        timer.start()

    thread = threading.Thread(target=read, name="parent-watch", daemon=True)
    thread.start()
    return thread


def read_spec_line(fd: int) -> tuple[str | None, bytes]:
    """A standby worker's job: the spec's path on one line of stdin, and any bytes read
    after it. (None, b""): end of file, the app no longer needs this worker."""
    pending = b""
    while b"\n" not in pending:
        chunk = _read(fd)
        if not chunk:
            return None, b""
        pending += chunk
    line, rest = pending.split(b"\n", 1)
    return line.decode("utf-8").strip(), rest


def apply_environment(env: dict[str, str] | None) -> None:
    """The app's own settings (RETRIEVAL_APP_*: cache and models directories...) as they
    were when the job was sent: a standby worker was started earlier, maybe under others."""
    if env is None:
        return
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX) and n not in env]:
        del os.environ[name]
    os.environ.update(env)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""


def cancel_on_signals(cancel: threading.Event) -> None:
    def handle(signum, _frame) -> None:
        if cancel.is_set():
            os._exit(128 + signum)
        cancel.set()

    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handle)


def set_threads(count: int | None) -> int:
    """This process's own intra-op thread count: every core it may use unless told;
    `threads.py`'s workloads still set theirs (1 for heads) around their work."""
    import torch

    from ..threads import available_cores

    count = count or available_cores()
    torch.set_num_threads(count)
    return count


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m retrieval_app.training.worker SPEC.json | {STANDBY_FLAG} (started by the app)", file=sys.stderr)
        return 2
    cancel = threading.Event()
    channel = Channel(claim_stdout(), cancel)
    spec_path, pending = args[0], b""
    if spec_path == STANDBY_FLAG:  # import now, then wait for a job: its start costs no import
        from . import job as _job  # noqa: F401  (torch and the trainer)

        channel.send({"type": "ready"})
        spec_path, pending = read_spec_line(sys.stdin.fileno())
        if spec_path is None:
            return 0
    cancel_on_signals(cancel)
    watch_parent(sys.stdin.fileno(), cancel, pending)
    channel.send({"type": "started"})  # from now on a cancel is heard
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    apply_environment(spec.get("env"))

    from .config import TrainConfig  # torch is imported from here on
    from .job import run_trainer

    config = TrainConfig.from_dict(spec["config"])
    callbacks = pickle.loads(base64.b64decode(spec["callbacks"])) if spec.get("callbacks") else []
    set_threads(spec.get("threads"))
    outcome = run_trainer(config, channel.event, cancel, callbacks)
    channel.send({"type": "end", "outcome": outcome})
    return 0


if __name__ == "__main__":
    status = main()
    # Everything the run writes is written, and the outcome sent, by now: skip the
    # interpreter's teardown, which with torch loaded took seconds on a busy machine
    # (and a daemon thread in a read must not abort it).
    sys.stderr.flush()
    os._exit(status)
