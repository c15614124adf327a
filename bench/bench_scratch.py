"""From scratch: the small CNN trained on Fashion-MNIST by the app's default full-mode
recipe against pytorch-metric-learning's recipe, at equal wall-clock; and the app's
training speed against the same network in a bare loop.

- App: `retrieval-app train FOLDER --backbone small_cnn --time-budget T` with every other
  setting at its default (full mode, linear head to 128, batch-all, margin 0.2, Adam-W
  1e-3, images decoded once into memory, crop augmentation), reading a folder of PNGs.
- Reference: the same network (small CNN + linear 256→128), MPerClassSampler m=4,
  TripletMarginMiner semihard, TripletMarginLoss margin 0.2, Adam 1e-3, batch 64, on
  in-memory tensors (no decoding, no augmentation, no validation), for T seconds.
- Bare loop: the same network and batch-all loss on in-memory tensors, steps/s.
Evaluation: MAP@R on Fashion-MNIST *test* images (200 per class), leave-one-out: all 10 classes
("closed", the classes it trained on, new images) and, for an "open" run trained on 5
classes, the other 5. One torch thread for all (threads.py: the faster choice here).

    python bench/bench_scratch.py [--budgets 30 90] [--per-class 600] [--splits closed open]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retrieval_app.losses import OnlineTripletLoss
from retrieval_app.metrics import retrieval_metrics
from retrieval_app.networks import create_model
from retrieval_app.paths import cache_dir
from retrieval_app.training import TrainConfig, Trainer, load_embedder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def fashion(per_class: int, classes: list[int]):
    with np.load(SHARED / "fashion_mnist.npz") as archive:  # NpzFile re-reads a key on every access
        data = {key: archive[key] for key in archive.files}
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.permutation(np.flatnonzero(data["y_train"] == c))[:per_class] for c in classes])
    test = np.flatnonzero(np.isin(data["y_test"], classes))
    return data, train, test


def write_folder(data, indices, root: Path) -> Path:
    from PIL import Image

    names = [str(n) for n in data["class_names"]]
    for i in indices:
        folder = root / names[data["y_train"][i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data["x_train"][i]).save(folder / f"{i:05d}.png")
    return root


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - 0.5) / 0.5).unsqueeze(1)


def map_at_r(net, images: torch.Tensor, labels: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        embeddings = torch.cat([net(images[i:i + 1000]) for i in range(0, len(images), 1000)])
    return float(retrieval_metrics(F.normalize(embeddings, dim=1), labels)["map_at_r"])


def reference(images: torch.Tensor, labels: torch.Tensor, budget: float):
    from pytorch_metric_learning import losses, miners, samplers

    torch.manual_seed(0)
    net = create_model("small_cnn", dim=128, head="linear", normalize=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    miner, loss_fn = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"), losses.TripletMarginLoss(margin=0.2)
    batch = min(64, 4 * len(labels.unique()))
    sampler = samplers.MPerClassSampler(labels.numpy(), m=4, batch_size=batch, length_before_new_iter=len(labels))
    started, steps = time.monotonic(), 0
    net.train()
    while time.monotonic() - started < budget:
        order = torch.as_tensor(list(iter(sampler)))
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start:start + batch]
            embeddings = net(images[index])
            loss = loss_fn(embeddings, labels[index], miner(embeddings, labels[index]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.monotonic() - started >= budget:
                break
    return net, steps


def bare_loop_steps_per_s(images: torch.Tensor, labels: torch.Tensor, seconds: float = 10.0) -> float:
    torch.manual_seed(0)
    net = create_model("small_cnn", dim=128, head="linear")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = OnlineTripletLoss("batch_all", margin=0.2)
    started, steps = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        index = torch.randint(0, len(labels), (64,))
        out = loss_fn(net(images[index]), labels[index])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        steps += 1
    return steps / (time.monotonic() - started)


def app(folder: Path, budget: float, overrides: dict | None = None):
    out = Path(tempfile.mkdtemp()) / "model"
    steps = []
    config = TrainConfig(folder=str(folder), out_dir=str(out), backbone="small_cnn", time_budget=budget, num_workers=0, **(overrides or {}))
    started = time.monotonic()
    result = Trainer(config, on_event=lambda e: steps.append(e) if e.kind == "step" else None, cancel=threading.Event()).run()
    wall = time.monotonic() - started
    net = load_embedder(out) if result.model_path is not None else create_model("small_cnn", dim=128, head="linear")
    last = steps[-1] if steps else None
    return net, {"steps": last.step if last else 0, "images_per_s": last.images_per_s if last else 0.0, "kept": result.kept, "wall_s": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="+", type=float, default=[30, 90])
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--splits", nargs="+", default=["closed", "open"], choices=["closed", "open"])
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override TrainConfig defaults of the app run (tuning)")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {key: _value(value) for key, value in (item.split("=", 1) for item in args.set)}
    print(f"{'split':6} {'budget':>6} | {'untrained':>9} {'reference':>9} {'app':>6} {'app−ref':>7} | ref steps  app steps  app img/s  bare-loop img/s", flush=True)
    for split in args.splits:
        classes = list(range(10)) if split == "closed" else [0, 2, 4, 6, 8]
        test_classes = list(range(10)) if split == "closed" else [1, 3, 5, 7, 9]
        data, train, _ = fashion(args.per_class, classes)
        rng = np.random.default_rng(1)  # 200 test images per class: MAP@R ranks R = 200 per query
        test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(data["y_test"] == c))[:args.test_per_class] for c in test_classes]))
        folder = write_folder(data, train, cache_dir() / "bench" / f"scratch_{split}_{args.per_class}")
        train_images, train_labels = as_tensor(data["x_train"][train]), torch.from_numpy(data["y_train"][train].astype(np.int64))
        test_images, test_labels = as_tensor(data["x_test"][test]), data["y_test"][test]
        torch.manual_seed(0)
        untrained = map_at_r(create_model("small_cnn", dim=128, head="linear"), test_images, test_labels)
        bare = bare_loop_steps_per_s(train_images, train_labels) * 64
        for budget in args.budgets:
            if args.no_reference:
                ref_score, ref_steps = float("nan"), 0
            else:
                ref_net, ref_steps = reference(train_images, train_labels, budget)
                ref_score = map_at_r(ref_net, test_images, test_labels)
            app_net, info = app(folder, budget, overrides)
            app_score = map_at_r(app_net, test_images, test_labels)
            print(f"{split:6} {budget:6.0f} | {untrained:9.3f} {ref_score:9.3f} {app_score:6.3f} {app_score - ref_score:+7.3f} | "
                  f"{ref_steps:9d} {info['steps']:10d} {info['images_per_s']:10.0f} {bare:16.0f}", flush=True)
    return 0


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


if __name__ == "__main__":
    sys.exit(main())
