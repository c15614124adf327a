"""What the live map costs training: optimizer steps per second with frames on and off,
for quick mode (a head on cached features) and full mode (the small CNN from scratch).

Runs alternate off / on, `--repeats` times each; reported are medians of

- steps per CPU second of the training thread (`time.thread_time`, between the first and
  the last step event): the work a step costs, frames included, and what a busy, shared
  machine disturbs least (the training runs on one thread in both modes);
- steps per wall-clock second, over the same stretch;
- the frames sent, their points and the mean time one took (embed + layout).

Quick mode counts the steps of the first class fold only: the live map shows that fold
and the refit, so they are where it costs (the other folds run without frames).

    python bench/bench_live_map.py --quick-folder ../shared/datasets/caltech101_dev --fashion ../shared/datasets/fashion_mnist.npz
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Fashion-MNIST folder writer of the tests

from retrieval_app.training import TrainConfig, Trainer  # noqa: E402
from retrieval_app.training.live_map import LiveMap  # noqa: E402


class Meter(LiveMap):
    """A `LiveMap` that also times its frames."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spent: list[float] = []

    def _take(self, stage: str, step: int) -> None:
        began = time.perf_counter()
        super()._take(stage, step)
        self.spent.append(time.perf_counter() - began)


def one_run(config: TrainConfig, live: bool, stage: str | None) -> dict:
    marks = []  # (thread CPU s, wall s, step) at each counted step event

    def on_event(event):
        if event.kind == "step" and (stage is None or event.data.get("stage") == stage):
            marks.append((time.thread_time(), time.perf_counter(), event.step))

    meter = Meter() if live else None
    Trainer(config, on_event=on_event, callbacks=[meter] if live else []).run()
    (cpu0, wall0, step0), (cpu1, wall1, step1) = marks[0], marks[-1]
    steps = step1 - step0
    out = {"cpu": steps / max(cpu1 - cpu0, 1e-9), "wall": steps / max(wall1 - wall0, 1e-9), "steps": steps}
    if meter is not None:
        out.update(frames=len(meter.spent), points=len(meter.points), frame_s=statistics.mean(meter.spent))
    return out


def compare(name: str, make_config, repeats: int, stage: str | None) -> None:
    results = {False: [], True: []}
    for _ in range(repeats):
        for live in (False, True):
            results[live].append(one_run(make_config(), live, stage))
    off, on = results[False], results[True]
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    print(f"\n{name}: {repeats} runs each, medians")
    print(f"  steps per CPU second:  off {med(off, 'cpu'):8.1f}   on {med(on, 'cpu'):8.1f}   slow-down {100 * (1 - med(on, 'cpu') / med(off, 'cpu')):5.1f} %")
    print(f"  steps per wall second: off {med(off, 'wall'):8.1f}   on {med(on, 'wall'):8.1f}   slow-down {100 * (1 - med(on, 'wall') / med(off, 'wall')):5.1f} %")
    print(f"  live map: {on[0]['points']} points, {med(on, 'frames'):.0f} frames a run, {1000 * med(on, 'frame_s'):.0f} ms a frame; "
          f"steps counted {med(off, 'steps'):.0f} (off) / {med(on, 'steps'):.0f} (on)")
    for live, runs in results.items():
        print(f"    {'on ' if live else 'off'}: " + "  ".join(f"{r['cpu']:.0f}/{r['wall']:.0f}" for r in runs) + "  (CPU/wall steps/s per run)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick-folder", type=Path, default=ROOT.parent / "shared" / "datasets" / "caltech101_dev")
    parser.add_argument("--fashion", type=Path, default=ROOT.parent / "shared" / "datasets" / "fashion_mnist.npz")
    parser.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST images per class for full mode (2,000 in all)")
    parser.add_argument("--budget", type=float, default=16.0, help="quick mode's time budget, s (the first fold gets a quarter)")
    parser.add_argument("--epochs", type=int, default=2, help="full mode's epochs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("quick", "full"), default=None)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp())
    if args.only in (None, "quick"):
        compare(f"quick mode, {args.quick_folder.name}, efficientnet_lite0 features, identity head, {args.budget:g} s budget",
                lambda: TrainConfig(folder=str(args.quick_folder), out_dir=str(out / "quick"), mode="quick", time_budget=args.budget, num_workers=0),
                args.repeats, stage="fold 1")
    if args.only in (None, "full"):
        from synthetic import write_fashion_mnist_folder

        folder = write_fashion_mnist_folder(out / "fashion", args.fashion, per_class=args.per_class)
        compare(f"full mode, Fashion-MNIST {10 * args.per_class} images, small_cnn from scratch, {args.epochs} epochs",
                lambda: TrainConfig(folder=str(folder), out_dir=str(out / "full"), backbone="small_cnn", mode="full", epochs=args.epochs, num_workers=0),
                args.repeats, stage=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
