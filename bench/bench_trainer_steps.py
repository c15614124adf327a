"""Optimizer steps per second of quick-mode training end to end (`Trainer.run`, time-budgeted),
counted from its step events: validation, checkpoints and events included.

Runs whichever `retrieval_app` is importable, so an older checkout can be measured the same
way: `PYTHONPATH=/path/to/old/checkout python bench/bench_trainer_steps.py FOLDER 30`.

    python bench/bench_trainer_steps.py ../shared/datasets/caltech101_dev 30
"""

from __future__ import annotations

import sys
import tempfile
import time

import retrieval_app
from retrieval_app.training import TrainConfig, Trainer


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder, budget = argv[0], float(argv[1]) if len(argv) > 1 else 30.0
    steps = []

    def on_event(event):
        if event.kind == "step":
            steps.append((time.monotonic(), event.step))

    config = TrainConfig(folder=folder, out_dir=tempfile.mkdtemp(), mode="quick", time_budget=budget, num_workers=0)
    started = time.monotonic()
    Trainer(config, on_event=on_event).run()
    (first_time, _), (last_time, last_step) = steps[0], steps[-1]
    print(f"code: {retrieval_app.__file__}")
    print(f"{last_step} optimizer steps; {last_step / max(last_time - first_time, 1e-9):.1f} steps/s between the first "
          f"and the last step event; run {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
