"""Embedding throughput on many small images: 20,000 Fashion-MNIST PNGs (28×28 greyscale).

For each model, `embed_records` over the whole folder (no cache, the app's default
settings: batch size, decoding thread or worker processes, thread counts), with the wall
time, images/s and the process's user and system CPU time (system time close to user time
means threads spinning against each other). Optionally (`--model-only`) the network alone
on pre-decoded tensors of the first images, the ceiling for the same batch size.

    python bench/bench_embed_small.py [--images 20000] [--models small_cnn efficientnet_lite0]
        [--limit-large 4000] [--work DIR]

`--limit-large` embeds only that many images with networks on full-size inputs
(EfficientNet-Lite0 upsamples every 28×28 image to 224×224; its rate does not depend on the
folder size), so a run stays within minutes on 2 cores."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
NPZ = ROOT.parent / "shared" / "datasets" / "fashion_mnist.npz"


def make_folder(work: Path, images: int) -> Path:
    """`images` Fashion-MNIST PNGs, one folder per class (made once, then reused)."""
    from synthetic import write_fashion_mnist_folder

    folder = work / f"fashion-{images}"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == images:
        return folder
    if images % 10:
        raise SystemExit("--images must be a multiple of 10 (ten classes)")
    return write_fashion_mnist_folder(folder, NPZ, per_class=images // 10)


def cpu_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def embed_rate(net, records) -> dict:
    from retrieval_app.retrieval.embed import embed_records

    user0, sys0 = cpu_times()
    start = time.perf_counter()
    result = embed_records(net, records, device="cpu")
    wall = time.perf_counter() - start
    user1, sys1 = cpu_times()
    assert result.n_ok == len(records), result.failures[:3]
    return {"images": len(records), "wall_s": round(wall, 2), "images_per_s": round(len(records) / wall, 1),
            "user_s": round(user1 - user0, 1), "sys_s": round(sys1 - sys0, 1)}


def model_only_rate(net, records, batch_size: int = 32) -> float:
    """The network alone on pre-decoded, pre-transformed tensors (with the app's threads)."""
    import torch

    from retrieval_app.data import load_image
    from retrieval_app.retrieval.embed import run_forward
    from retrieval_app.threads import network_workload, workload_threads

    transform = net.eval_transform()
    batches = [torch.stack([transform(load_image(r.path)) for r in records[i:i + batch_size]]) for i in range(0, len(records), batch_size)]
    net.eval()
    with workload_threads(network_workload(net.spec.input_size)), torch.inference_mode():
        start = time.perf_counter()
        for batch in batches:
            run_forward(net, batch, torch.device("cpu"))
        return round(len(records) / (time.perf_counter() - start), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--models", nargs="+", default=["small_cnn", "efficientnet_lite0"])
    parser.add_argument("--limit-large", type=int, default=4000, help="images for networks with inputs above 64 px")
    parser.add_argument("--model-only", action="store_true", help="also time the network alone on pre-decoded tensors")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "retrieval-bench-embed-small")
    args = parser.parse_args()

    from retrieval_app.data import scan_folder
    from retrieval_app.threads import SMALL_INPUT_SIDE
    from retrieval_app.training import load_embedder

    folder = make_folder(args.work, args.images)
    records = scan_folder(folder, check_images=False).records
    report = {"folder": str(folder), "cpu_count": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()], "models": {}}
    for name in args.models:
        net = load_embedder(name)  # what `retrieval-app embed --model NAME` and the app use
        subset = records if net.spec.input_size <= SMALL_INPUT_SIDE else records[:: max(1, len(records) // args.limit_large)][: args.limit_large]
        row = embed_rate(net, subset)
        if args.model_only:
            row["model_only_images_per_s"] = model_only_rate(net, subset[:2000])
        report["models"][name] = row
        print(name, json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
