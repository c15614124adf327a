"""Start-up and cancel latency of the app's training runners (`training/runners.py`):
for each runner, `--repeats` quick-mode runs on FOLDER, each cancelled once its training
phase has begun. Reports the time from `start()` to the first training phase, from the
cancel to the outcome, and (process runner) to the worker's exit. "process+standby" is
the app's way: a standby worker (`training/standby.py`) started ahead of time and given
`--standby-lead` seconds to finish its imports before the run starts (in the app it
starts when the fine-tune panel opens, or when the previous run ends).

    python bench/bench_training_runners.py sample_data --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from retrieval_app.training import TrainConfig
from retrieval_app.training.runners import RUNNERS, training_job
from retrieval_app.training.standby import StandbyWorker

STANDBY = "process+standby"


def measure(folder: str, runner: str, out_dir: str, standby_lead_s: float) -> dict[str, float]:
    config = TrainConfig(folder=folder, out_dir=out_dir, mode="quick", epochs=100_000, num_workers=0)
    standby = None
    if runner == STANDBY:
        runner, standby = "process", StandbyWorker()
        standby.warm()
        time.sleep(standby_lead_s)
    started = time.monotonic()
    job = training_job(config, runner, standby=standby).start()
    while not job.snapshot().phase.startswith("fold "):  # quick mode's training phases
        if job.snapshot().finished:
            raise SystemExit(f"{runner}: the run ended before training: {job.snapshot().message}")
        time.sleep(0.01)
    training = time.monotonic()
    job.cancel()
    snap = job.wait(60)
    outcome = time.monotonic()
    row = {"start_s": training - started, "cancel_to_outcome_s": outcome - training, "state": snap.state}
    if hasattr(job, "wait_process"):
        job.wait_process(60)
        row["cancel_to_exit_s"] = time.monotonic() - training
    if standby is not None:
        assert job.took_standby
        standby.close()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runners", nargs="+", default=[*RUNNERS, STANDBY], choices=[*RUNNERS, STANDBY])
    parser.add_argument("--standby-lead", type=float, default=20.0, help="seconds the standby worker gets before the run starts")
    args = parser.parse_args(argv)
    for runner in args.runners:
        rows = [measure(args.folder, runner, tempfile.mkdtemp(), args.standby_lead) for _ in range(args.repeats)]
        assert all(r["state"] == "cancelled" for r in rows), rows
        parts = [f"{runner:15s}"]
        for key in ("start_s", "cancel_to_outcome_s", "cancel_to_exit_s"):
            values = [r[key] for r in rows if key in r]
            if values:
                parts.append(f"{key} median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})")
        print(" · ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
