"""Training in its own process (`ProcessTrainingJob`): the same events and outcome as the
thread job, arrays in event data arriving bit for bit, a cancel within seconds, a crash
or a kill of the worker reported as a failed run with its last output (and the next run
working), and no worker outliving its parent. Tiny from-scratch runs on 40 px shapes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from itertools import groupby
from pathlib import Path

import numpy as np
import pytest

from retrieval_app import choices
from retrieval_app.training import TrainConfig, TrainEvent
from retrieval_app.training import wire
from retrieval_app.training.callbacks import Callback
from retrieval_app.training.dial import Dial, DialPoint
from retrieval_app.training.job import CANCELLED_EARLY
from retrieval_app.training.runners import RUNNERS, training_job
from retrieval_app.training.subprocess_job import ProcessTrainingJob
from synthetic import write_class_folder

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(autouse=True)
def callbacks_importable(monkeypatch):
    """The callbacks below are pickled by reference to this module: the worker finds it here."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("shapes") / "shapes", n_classes=6, per_class=10, size=40)


def config(folder: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(backbone="small_cnn", mode="full", epochs=2, dim=16, batch_size=24, num_workers=0)
    return TrainConfig(folder=str(folder), out_dir=str(out), **{**settings, **overrides})


def long_config(folder: Path, out: Path) -> TrainConfig:
    """Runs until cancelled (the stall watch cannot end it: no triplet satisfies the margin)."""
    return config(folder, out, epochs=100_000, patience=None, margin=1e6)


class FrameSender(Callback):
    """Sends the embeddings of the first rows as an array when training starts, like a
    live map frame."""

    def on_training_start(self, run) -> None:
        rows = np.arange(min(8, len(run.records)))
        run.emit(TrainEvent("data", phase="frame", data={"frame": run.embed(rows), "rows": rows, "at": (1, "start")}))


class Crash(Callback):
    """Says something on stderr, then dies as a native crash would."""

    def on_training_start(self, run) -> None:
        print("about to crash on purpose", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie has ended: only its exit status is left for a parent to collect
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


# ----------------------------------------------------------------- the wire format
def test_event_data_and_results_travel_as_json_lines_and_come_back_equal():
    frame = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    event = TrainEvent("step", phase="training", step=7, loss=float("nan"), data={
        "frame": frame, "ids": np.arange(4, dtype=np.int64), "empty": np.zeros((0, 2), np.float16), "scalar": np.float32(0.5),
        "pairs": [(1, 2.5)], "by_class": {3: "three", (1, 2): None}, "where": Path("/tmp/x"), "nested": {"histogram": {"edges": [0.0, 1.0]}},
    })
    line = wire.dumps({"type": "event", "event": event})
    assert "\n" not in line
    back = wire.loads(line)["event"]
    assert isinstance(back, TrainEvent) and back.step == 7 and np.isnan(back.loss)
    assert back.data["frame"].dtype == np.float32 and np.array_equal(back.data["frame"], frame) and back.data["frame"].flags.writeable
    assert back.data["ids"].dtype == np.int64 and back.data["empty"].shape == (0, 2) and back.data["empty"].dtype == np.float16
    assert back.data["scalar"] == 0.5 and back.data["pairs"] == [(1, 2.5)] and back.data["by_class"] == {3: "three", (1, 2): None}
    assert back.data["where"] == Path("/tmp/x") and back.data["nested"] == {"histogram": {"edges": [0.0, 1.0]}}
    point = DialPoint(10, 0.5, 0.7, 0.6, unseen_worst_gain=-0.01)
    dial = Dial(0.6, 0.65, [point], recommended=point, chosen=point, n_folds=3)
    assert wire.loads(wire.dumps(dial)) == dial


def test_only_this_package_s_dataclasses_are_rebuilt_and_odd_values_are_refused():
    line = wire.dumps({"__wire__": "dataclass", "type": "subprocess:Popen", "fields": {}})  # a dict whose key needs tagging
    assert wire.loads(line) == {"__wire__": "dataclass", "type": "subprocess:Popen", "fields": {}}
    forged = '{"__wire__": "dataclass", "type": "subprocess:Popen", "fields": {"args": ["true"]}}'
    with pytest.raises(wire.WireError, match="only retrieval_app"):
        wire.loads(forged)
    with pytest.raises(wire.WireError, match="cannot send"):
        wire.dumps({"lock": threading.Lock()})
    with pytest.raises(wire.WireError, match="objects"):
        wire.dumps(np.array([object()]))
    with pytest.raises(wire.WireError):
        wire.loads("not json")


def test_the_runners_are_the_registered_choices():
    assert tuple(RUNNERS) == choices.TRAINING_RUNNERS and choices.DEFAULT_TRAINING_RUNNER in RUNNERS
    assert isinstance(training_job(TrainConfig(folder="x", out_dir="y"), "process"), ProcessTrainingJob)
    with pytest.raises(Exception, match="unknown training runner"):
        training_job(TrainConfig(folder="x", out_dir="y"), "cluster")
    from retrieval_app.ui.session import SessionRegistry, SessionState

    assert SessionState().training_runner == choices.DEFAULT_TRAINING_RUNNER
    thread_app, process_app = SessionRegistry("thread"), SessionRegistry("process")
    assert thread_app.new().training_runner == "thread" and process_app.new().training_runner == "process"
    # A standby worker (standby.py) only for a runner whose start-up it can pay ahead of
    # time, one per app, shared by its sessions (nothing is started until it is warmed).
    assert [name for name, runner in RUNNERS.items() if runner.starts_ahead] == ["process"]
    assert thread_app.standby is None and thread_app.new().standby is None
    assert process_app.standby is not None and process_app.new().standby is process_app.standby and process_app.standby.pid is None
    process_app.close()


# ----------------------------------------------------------------- a whole run
def test_a_run_in_a_process_streams_the_thread_job_s_events_and_outcome(shapes, tmp_path):
    runs = {}
    for runner in ("thread", "process"):
        events: list[TrainEvent] = []
        job = training_job(config(shapes, tmp_path / runner), runner, on_event=events.append, callbacks=[FrameSender()]).start()
        snap = job.wait(300)
        assert snap.state == "done", snap.message
        runs[runner] = (events, snap)
    (thread_events, thread_snap), (process_events, process_snap) = runs["thread"], runs["process"]
    # The same kinds and phases in the same order (steps come a few a second: runs of
    # them are compared as one).
    def sequence(events):
        return [key for key, _ in groupby((e.kind, e.phase) for e in events)]
    assert sequence(process_events) == sequence(thread_events)
    assert sequence(process_events)[-1] == ("done", "done") and ("epoch", "validated") in sequence(process_events)
    assert all(isinstance(e, TrainEvent) for e in process_events)
    # the callback ran in the worker; its array came back as the thread job's, bit for bit
    frames = {runner: [e for e in events if e.phase == "frame"] for runner, (events, _) in runs.items()}
    got, want = frames["process"][0].data, frames["thread"][0].data
    assert got["frame"].dtype == np.float32 and got["frame"].shape == want["frame"].shape == (8, 16)
    np.testing.assert_array_equal(got["frame"], want["frame"])
    assert np.array_equal(got["rows"], want["rows"]) and got["at"] == (1, "start")
    # the same snapshot, result included (paths are Paths, the history the same epochs)
    assert set(process_snap.series) == set(thread_snap.series) and process_snap.series["frame"][0][1].shape == (8, 16)
    assert [row["epoch"] for row in process_snap.val_history] == [row["epoch"] for row in thread_snap.val_history] == [0, 1, 2]
    assert len(process_snap.loss_history) >= 2 and process_snap.message == process_snap.result.summary
    result, reference = process_snap.result, thread_snap.result
    assert result.out_dir == tmp_path / "process" and result.kept == reference.kept and result.epochs_run == reference.epochs_run == 2
    assert (result.model_path is not None) == (result.kept == "trained")
    if result.model_path is not None:
        assert result.model_path.is_file() and result.model_path.parent == tmp_path / "process"
    assert [row["epoch"] for row in result.history] == [row["epoch"] for row in reference.history]
    assert result.before == pytest.approx(reference.before) and result.summary.split(":")[0] == reference.summary.split(":")[0]
    assert job.wait_process(30) == 0 and not job.running


def test_bad_settings_fail_in_the_caller_before_a_process_starts(tmp_path):
    job = ProcessTrainingJob(TrainConfig(folder=str(tmp_path), out_dir=str(tmp_path / "m"), mining="hardest"))
    with pytest.raises(Exception, match="mining must be one of"):
        job.start()
    assert job.pid is None and not job.running


def test_a_failure_inside_the_run_is_reported_like_the_thread_job_s(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    outcomes = [training_job(config(empty, tmp_path / runner), runner).start().wait(120) for runner in ("thread", "process")]
    assert [s.state for s in outcomes] == ["failed", "failed"]
    assert outcomes[0].error == outcomes[1].error and outcomes[1].error


# ----------------------------------------------------------------- cancel, crash, parent exit
def test_cancel_stops_the_process_within_seconds_with_the_thread_job_s_outcome(shapes, tmp_path):
    job = ProcessTrainingJob(long_config(shapes, tmp_path / "long")).start()
    wait_for(lambda: job.snapshot().step > 0, 120, "the first training step")
    asked = time.monotonic()
    job.cancel()
    snap = job.wait(10)
    took = time.monotonic() - asked
    assert snap.state == "cancelled", snap
    assert took < 3.0, f"the run stopped {took:.1f} s after the cancel"
    assert snap.result is not None and snap.result.stopped_because == "cancelled" and snap.message.startswith("Stopped: cancelled.")
    assert job.wait_process(30) == 0


def test_a_cancel_while_the_worker_starts_up_ends_it_at_once(shapes, tmp_path):
    job = ProcessTrainingJob(config(shapes, tmp_path / "early")).start()
    job.cancel()  # the worker is still importing torch: nothing to keep
    snap = job.wait(5)
    assert snap.state == "cancelled" and snap.message == CANCELLED_EARLY and snap.result is None
    assert job.wait_process(5) == -signal.SIGKILL


def test_a_worker_that_ignores_a_cancel_is_killed_after_the_grace_period(shapes, tmp_path):
    job = ProcessTrainingJob(long_config(shapes, tmp_path / "stuck"), cancel_grace_s=1.0).start()
    wait_for(lambda: job.snapshot().step > 0, 120, "the first training step")
    os.kill(job.pid, signal.SIGSTOP)  # frozen: it cannot read the cancel
    try:
        job.cancel()
        snap = job.wait(15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGCONT)
    assert snap.state == "cancelled" and "was killed" in snap.message and snap.result is None
    assert job.wait_process(15) == -signal.SIGKILL


def test_a_crashing_worker_is_a_failed_run_with_its_last_output(shapes, tmp_path):
    job = ProcessTrainingJob(config(shapes, tmp_path / "crash"), callbacks=[Crash()]).start()
    snap = job.wait(120)
    assert snap.state == "failed" and snap.result is None
    assert "killed by SIGSEGV" in snap.error and "about to crash on purpose" in snap.error
    assert snap.message == snap.error and not job.running


def test_a_killed_worker_is_a_failed_run_and_the_next_run_works(shapes, tmp_path):
    job = ProcessTrainingJob(long_config(shapes, tmp_path / "killed")).start()
    wait_for(lambda: job.snapshot().step > 0, 120, "the first training step")
    os.kill(job.pid, signal.SIGKILL)
    snap = job.wait(15)
    assert snap.state == "failed" and "killed by SIGKILL" in snap.error, snap
    assert not (tmp_path / "killed" / "summary.json").exists()
    again = ProcessTrainingJob(config(shapes, tmp_path / "again", epochs=1)).start().wait(120)
    assert again.state == "done" and again.result.epochs_run == 1, again.message


PARENT = """
import sys, time
from retrieval_app.training import TrainConfig
from retrieval_app.training.subprocess_job import ProcessTrainingJob
config = TrainConfig(folder=sys.argv[1], out_dir=sys.argv[2], backbone="small_cnn", mode="full", epochs=100000, patience=None,
                     margin=1e6, dim=16, batch_size=24, num_workers=0)
job = ProcessTrainingJob(config).start()
while job.snapshot().step == 0:
    assert not job.snapshot().finished, job.snapshot().message
    time.sleep(0.05)
print(job.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("ending", ["killed", "exits"])
def test_the_worker_does_not_outlive_its_parent(shapes, tmp_path, ending):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    parent = subprocess.Popen([sys.executable, str(script), str(shapes), str(tmp_path / "orphan")], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent said {line!r}"
        worker = int(line)
        assert not process_gone(worker)
        if ending == "killed":  # no chance to clean up: the worker sees its stdin close
            parent.kill()
        else:  # a normal interpreter exit (SIGTERM's default ends it without atexit; SIGINT raises)
            parent.send_signal(signal.SIGINT)
        parent.wait(30)
        wait_for(lambda: process_gone(worker), 30, f"worker {worker} to end")
    finally:
        if parent.poll() is None:
            parent.kill()
