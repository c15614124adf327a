"""Fine-tuning quality: the app's default quick-mode recipe against pytorch-metric-learning's
head recipe, on the same cached EfficientNet-Lite0 features and the same wall-clock.

Splits (decided by a stable hash, the same every run):
- closed: every class, half of its images to train, the other half to evaluate
  ("new images of the trained classes");
- open: half of the classes to train, the other half to evaluate ("classes it never saw").
Evaluation: MAP@R, leave-one-out among the evaluation images (the training images are
not in the gallery). Baseline: the bare backbone's L2-normalised features.

Reference (pytorch-metric-learning): MPerClassSampler m=4, TripletMarginMiner semihard,
TripletMarginLoss margin 0.2, MLP head 1280→512→128, Adam 1e-3, batch 64 (4 × classes when
that is less), trained for
the budget. App default: `TrainConfig(time_budget=budget)` with every other setting at
its default, run through the same `QuickProtocol` the CLI and the app use (class folds,
then a refit on all training images). Both run on one torch thread (the faster choice
for both on a 2-core machine, see retrieval_app/threads.py).

    python bench/bench_finetune.py [--datasets caltech fashion] [--budgets 30 90 300]
                                   [--splits closed open] [--json results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retrieval_app.data import scan_folder
from retrieval_app.metrics import retrieval_metrics
from retrieval_app.networks import create_model
from retrieval_app.paths import cache_dir
from retrieval_app.retrieval.cache import cached_embeddings
from retrieval_app.training import TrainConfig
from retrieval_app.training.quick import FeatureTable, QuickProtocol, head_net_factory

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


# ------------------------------------------------------------------ data
def caltech_folder() -> Path:
    return SHARED / "caltech101_dev"


def fashion_folder(per_class: int) -> Path:
    """Fashion-MNIST training images, `per_class` of each class, as PNGs in the app cache."""
    from PIL import Image

    root = cache_dir() / "bench" / f"fashion_mnist_{per_class}"
    if (root / ".complete").is_file():
        return root
    with np.load(SHARED / "fashion_mnist.npz") as data:  # each data[key] decompresses the whole array: read each once
        images, targets, names = data["x_train"], data["y_train"], data["class_names"]
    rng = np.random.default_rng(0)
    for label, name in enumerate(names):
        folder = root / str(name)
        folder.mkdir(parents=True, exist_ok=True)
        for index in rng.permutation(np.flatnonzero(targets == label))[:per_class]:
            Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    (root / ".complete").touch()
    return root


def load_features(folder: Path):
    scan = scan_folder(folder)
    net = create_model("efficientnet_lite0", head=None)
    result = cached_embeddings(net, scan.records, output="features")
    ok = np.asarray(result.ok, dtype=bool)
    records = [r for r, good in zip(scan.records, ok) if good]
    return records, torch.from_numpy(np.ascontiguousarray(result.embeddings[ok])).float(), net


def _rank(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def split(records, kind: str) -> tuple[list[int], list[int]]:
    if kind == "closed":
        train, test = [], []
        for name in sorted({r.class_name for r in records}):
            members = sorted((i for i, r in enumerate(records) if r.class_name == name), key=lambda i: _rank(records[i].id))
            train += members[: len(members) // 2]
            test += members[len(members) // 2:]
        return sorted(train), sorted(test)
    classes = sorted({r.class_name for r in records}, key=lambda c: _rank("class:" + c))
    train_classes = set(classes[: len(classes) // 2])
    train = [i for i, r in enumerate(records) if r.class_name in train_classes]
    return train, [i for i, r in enumerate(records) if r.class_name not in train_classes]


def map_at_r(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    return float(retrieval_metrics(F.normalize(embeddings, dim=1), labels.numpy())["map_at_r"])


# --------------------------------------------------------------- methods
def reference(features: torch.Tensor, labels: torch.Tensor, budget: float, seed: int = 0):
    from pytorch_metric_learning import losses, miners, samplers

    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Linear(features.shape[1], 512), torch.nn.ReLU(), torch.nn.Linear(512, 128))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    loss_fn = losses.TripletMarginLoss(margin=0.2)
    # MPerClassSampler needs m × classes ≥ batch size: fewer classes, smaller batches
    # (the app's P×K sampler does the same).
    batch = min(64, 4 * len(labels.unique()))
    sampler = samplers.MPerClassSampler(labels.numpy(), m=4, batch_size=batch, length_before_new_iter=max(batch, len(labels)))
    started, steps = time.monotonic(), 0
    while time.monotonic() - started < budget:
        order = torch.as_tensor(list(iter(sampler)))
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start:start + batch]
            embeddings = head(features[index])
            loss = loss_fn(embeddings, labels[index], miner(embeddings, labels[index]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.monotonic() - started >= budget:
                break
    head.eval()
    return head, {"steps": steps}


def app_default(records, features: torch.Tensor, base, budget: float, overrides: dict | None = None):
    config = TrainConfig(folder="", out_dir="", time_budget=budget, **(overrides or {})).validate()
    table = FeatureTable(list(records), features, torch.as_tensor([r.label for r in records]))
    make_net = head_net_factory(base, config, table.features, torch.device("cpu"))
    protocol = QuickProtocol(config, make_net, table, lr=config.resolved_lr(), metric_distance="euclidean", cancel=threading.Event(), emit=lambda event: None)
    outcome, net = protocol.run()
    chosen = outcome.dial.chosen
    gate = outcome.dial.gate
    info = {
        "gate_weight": gate["weight"] if gate else None, "gate_familiarity": gate["familiarity"] if gate else None, "gate": gate,
        "refit_steps": outcome.refit_steps, "blend": outcome.blend,
        "estimate_yours": gate["seen"] if gate else (chosen.seen if chosen else outcome.dial.baseline_seen),
        "estimate_new": gate["unseen"] if gate else (chosen.unseen if chosen else outcome.dial.baseline_unseen),
        "estimate_backbone_yours": outcome.dial.baseline_seen, "estimate_backbone_new": outcome.dial.baseline_unseen,
    }
    return (net.embed_features if net is not None else (lambda x: x)), info


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["caltech", "fashion"], choices=["caltech", "fashion"])
    parser.add_argument("--splits", nargs="+", default=["closed", "open"], choices=["closed", "open"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[30, 90, 300])
    parser.add_argument("--fashion-per-class", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override TrainConfig defaults of the app run (tuning), e.g. lr=1e-3 folds=4")
    parser.add_argument("--subspace", type=int, default=None, help="override the identity head's training subspace (tuning)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference (tuning the app alone)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {key: _value(value) for key, value in (item.split("=", 1) for item in args.set)}
    if args.subspace:
        import retrieval_app.networks.heads as heads

        heads.IDENTITY_RANK = args.subspace
    rows = []
    print(f"{'dataset':8} {'split':6} {'budget':>6} | {'backbone':>8} {'reference':>9} {'app':>6} {'app−ref':>7} | ref steps  app steps blend   gate  app estimate yours/new", flush=True)
    for dataset in args.datasets:
        folder = caltech_folder() if dataset == "caltech" else fashion_folder(args.fashion_per_class)
        records, features, base = load_features(folder)
        labels = torch.as_tensor([r.label for r in records])
        for split_kind in args.splits:
            train, test = split(records, split_kind)
            train_idx, test_idx = torch.as_tensor(train), torch.as_tensor(test)
            backbone = map_at_r(features[test_idx], labels[test_idx])
            for budget in args.budgets:
                if args.no_reference:
                    ref_score, ref_info = float("nan"), {"steps": 0}
                else:
                    ref_head, ref_info = reference(features[train_idx], labels[train_idx], budget)
                    with torch.no_grad():
                        ref_score = map_at_r(ref_head(features[test_idx]), labels[test_idx])
                embed, app_info = app_default([records[i] for i in train], features[train_idx], base, budget, overrides)
                with torch.no_grad():
                    app_score = map_at_r(embed(features[test_idx]), labels[test_idx])
                row = {"dataset": dataset, "split": split_kind, "budget_s": budget, "n_train": len(train), "n_test": len(test),
                       "backbone": backbone, "reference": ref_score, "app": app_score, "reference_steps": ref_info["steps"], **app_info}
                rows.append(row)
                est = f"{_f(app_info['estimate_yours'])}/{_f(app_info['estimate_new'])}"
                print(f"{dataset:8} {split_kind:6} {budget:6.0f} | {backbone:8.4f} {ref_score:9.4f} {app_score:6.4f} {app_score - ref_score:+7.4f} | "
                      f"{ref_info['steps']:9d} {app_info['refit_steps']:10d} {_f(app_info['blend']):>5} {_gate(app_info):>6}  {est}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def _gate(info: dict) -> str:
    """The kept gate's weight and kind of familiarity (c: class means, n: nearest images), or -."""
    return "-" if info["gate_weight"] is None else f"{info['gate_weight']:g} {info['gate_familiarity'][0]}"


def _f(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
