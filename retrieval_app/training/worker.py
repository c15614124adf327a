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


def watch_parent(stdin_fd: int, cancel: threading.Event) -> threading.Thread:
    """Commands from the parent, read from the raw file descriptor: a thread blocked in
    `sys.stdin`'s buffered reader would hold its lock and abort the interpreter's exit."""

    def read() -> None:
        pending = b""
        while chunk := _read(stdin_fd):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if any(line.strip() == b"cancel" for line in lines):
                cancel.set()
        cancel.set()  # end of file: the parent is gone
        timer = threading.Timer(EXIT_AFTER_PARENT_GONE_S, os._exit, (EXIT_PARENT_GONE,))
        timer.daemon = True
        timer.start()

    thread = threading.Thread(target=read, name="parent-watch", daemon=True)
    thread.start()
    return thread


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
        print("usage: python -m retrieval_app.training.worker SPEC.json (started by the app)", file=sys.stderr)
        return 2
    cancel = threading.Event()
    channel = Channel(claim_stdout(), cancel)
    cancel_on_signals(cancel)
    watch_parent(sys.stdin.fileno(), cancel)
    channel.send({"type": "started"})  # from now on a cancel is heard
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))

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
