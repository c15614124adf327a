"""Optimizer steps per second of quick mode's head training (`training/head_loop.py`), the
loop the CLI and the app run, on cached-feature-sized inputs.

Heads: linear 1280→128 (PCA start), the identity head as trained (inside a 128-dim
principal subspace) and as a plain 1280×1280 map, and the MLP; batch 64 (16 classes × 4),
batch-all mining, Euclidean distance, margin 0.2. Each is timed on 1 and on all cores;
besides steps per second it prints, for one thread, the process's CPU time per step and
that of the fastest 20-step window: the numbers to read when other work shares the
machine.

    python bench/bench_head_steps.py [--seconds 5] [--features caltech_feats.npz]

Without --features the inputs are random 1280-d vectors in 40 classes (speed does not
depend on the values)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from retrieval_app.networks import create_model
from retrieval_app.networks.embedding_net import EmbeddingNet
from retrieval_app.networks.heads import BlendableLinear, init_from_features, make_head
from retrieval_app.threads import available_cores, use_threads
from retrieval_app.training import TrainConfig
from retrieval_app.training.head_loop import HeadLoop


def head_variants(features: torch.Tensor) -> dict[str, torch.nn.Module]:
    linear, identity = make_head("linear", 1280, 128), make_head("identity", 1280, 1280)
    init_from_features(linear, features)
    init_from_features(identity, features)
    full = BlendableLinear(1280, 1280)
    full.set_start(torch.eye(1280), torch.zeros(1280))
    return {
        "linear 1280→128": linear,
        "identity (subspace 128)": identity,
        "identity (full 1280×1280)": full,
        "mlp 1280→512→128": make_head("mlp", 1280, 128),
    }


WINDOW = 20  # steps per timed window


def steps_per_second(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, seconds: float) -> tuple[float, float, float]:
    """(optimizer steps per wall-clock second, CPU ms of this process per step, CPU ms of
    the training thread per step in its fastest `WINDOW`-step window). One `run` with a
    deadline, as quick mode trains (its batches are prepared ahead on a second core
    while a run lasts; the windows are read through `on_eval`, as validation would be).
    On a shared machine the wall-clock rate falls with the load, the CPU time much less
    (it still grows when other processes share the caches and cores); the fastest window
    is the closest a busy machine comes to a quiet one. The process's CPU time includes
    the thread that prepares batches."""
    base = create_model("efficientnet_lite0", head=None, pretrained=False)
    net = EmbeddingNet(base.spec, base.backbone, head, head_kind="bench", dim=1, normalize=True)
    config = TrainConfig(folder="", out_dir="")
    loop = HeadLoop(net, features, labels, config, lr=1e-4, seed=0)
    loop.run(steps=20)  # warm-up: caches, allocator
    marks = [time.thread_time()]
    first = loop.steps
    started, cpu_started = time.perf_counter(), time.process_time()
    loop.run(deadline=time.monotonic() + seconds, eval_at=lambda step, _elapsed: step % WINDOW == 0, on_eval=lambda *_: marks.append(time.thread_time()))
    wall, cpu, done = time.perf_counter() - started, time.process_time() - cpu_started, loop.steps - first
    best = min((b - a for a, b in zip(marks[1:], marks[2:])), default=float("nan")) / WINDOW
    return done / wall, 1000.0 * cpu / done, 1000.0 * best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--features", default=None, help="an .npz with 'features' and 'labels'")
    parser.add_argument("--heads", nargs="*", default=None, help="only these heads (names as printed, e.g. 'linear 1280→128')")
    args = parser.parse_args(argv)
    if args.features:
        data = np.load(args.features)
        features, labels = torch.from_numpy(data["features"]).float(), torch.from_numpy(data["labels"]).long()
    else:
        generator = torch.Generator().manual_seed(0)
        features, labels = torch.randn(2000, 1280, generator=generator).abs(), torch.arange(2000) % 40
    cores = available_cores()
    print(f"{'head':28} {'1 thread':>10} {f'{cores} threads':>10}   (optimizer steps/s, batch 64) | 1 thread: CPU ms/step, fastest window")
    for name, head in head_variants(features).items():
        if args.heads and name not in args.heads:
            continue
        rates = []
        for threads in (1, cores):
            with use_threads(threads):
                rates.append(steps_per_second(head, features, labels, args.seconds))
        print(f"{name:28} {rates[0][0]:10.0f} {rates[1][0]:10.0f} | {rates[0][1]:8.3f} {rates[0][2]:8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
