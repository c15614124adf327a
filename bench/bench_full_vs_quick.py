"""Full mode (the whole EfficientNet-Lite0 fine-tuned on augmented images) against quick mode
(frozen backbone, head on cached features) at equal wall-clock, on caltech101_dev.

The closed split of bench_finetune.py (half of each class's images to train, the other
half to evaluate; MAP@R leave-one-out among the evaluation images) and, with --splits,
the open one (half of the classes). The training half is presented to the trainer as a
folder of symbolic links, so both modes run exactly as `retrieval-app train` does, with
default settings and `--time-budget T`. Quick mode's features come from the cache (as on
a second run); full mode embeds the evaluation images through its own network.

    python bench/bench_full_vs_quick.py [--budgets 120 300 600] [--splits closed]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retrieval_app.data import scan_folder
from retrieval_app.metrics import retrieval_metrics
from retrieval_app.retrieval.embed import embed_records
from retrieval_app.training import TrainConfig, Trainer, load_embedder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_finetune import caltech_folder, split  # noqa: E402


def linked_folder(records, root: Path) -> Path:
    for record in records:
        target = root / record.class_name / Path(record.id).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(record.path)
    return root


def evaluate(spec, records) -> float:
    net = load_embedder(spec)
    result = embed_records(net, records, num_workers=0)
    ok = np.asarray(result.ok, dtype=bool)
    labels = np.asarray([r.label for r in records])[ok]
    return float(retrieval_metrics(result.embeddings[ok], labels)["map_at_r"])


def train(folder: Path, mode: str, budget: float) -> tuple[str, dict]:
    out = Path(tempfile.mkdtemp()) / mode
    steps = []
    started = time.monotonic()
    result = Trainer(TrainConfig(folder=str(folder), out_dir=str(out), mode=mode, time_budget=budget),
                     on_event=lambda e: steps.append(e) if e.kind == "step" else None).run()
    info = {"wall_s": time.monotonic() - started, "kept": result.kept,
            "images_per_s": steps[-1].images_per_s if steps else 0.0, "steps": steps[-1].step if steps else 0}
    return (str(out) if result.model_path is not None else "efficientnet_lite0"), info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="+", type=float, default=[120, 300, 600])
    parser.add_argument("--splits", nargs="+", default=["closed"], choices=["closed", "open"])
    args = parser.parse_args(argv)
    records = scan_folder(caltech_folder()).records
    print(f"{'split':6} {'budget':>6} | {'backbone':>8} {'quick':>6} {'full':>6} | quick steps  full steps  full img/s  full wall", flush=True)
    for split_kind in args.splits:
        train_idx, test_idx = split(records, split_kind)
        folder = linked_folder([records[i] for i in train_idx], Path(tempfile.mkdtemp()) / f"caltech_{split_kind}")
        # Evaluation records keep their labels from the full folder scan.
        test = [records[i] for i in test_idx]
        backbone = evaluate("efficientnet_lite0", test)
        for budget in args.budgets:
            quick_spec, quick = train(folder, "quick", budget)
            full_spec, full = train(folder, "full", budget)
            print(f"{split_kind:6} {budget:6.0f} | {backbone:8.3f} {evaluate(quick_spec, test):6.3f} {evaluate(full_spec, test):6.3f} | "
                  f"{quick['steps']:11d} {full['steps']:11d} {full['images_per_s']:11.1f} {full['wall_s']:9.0f}s"
                  + ("" if full["kept"] == "trained" else "  (full kept the backbone)"), flush=True)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
