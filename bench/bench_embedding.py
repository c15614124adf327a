"""Folder embedding throughput: end to end (decode in DataLoader workers + forward) vs
the model alone on pre-made tensors, same model and batch size, plus a cached re-open.

    python bench/bench_embedding.py [FOLDER] [--limit N] [--batch-size 32] [--workers W]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from retrieval_app.data import scan_folder
from retrieval_app.networks import create_model
from retrieval_app.retrieval.cache import cached_embeddings
from retrieval_app.retrieval.embed import embed_records

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "caltech101_dev"


def model_only_rate(net, records, batch_size: int, rounds: int = 3) -> float:
    """Forward passes alone over the same images, decoded and transformed beforehand."""
    from retrieval_app.data import load_image

    transform = net.eval_transform()
    batches = []
    for start in range(0, len(records), batch_size):
        images = [transform(load_image(r.path, max_side=net.spec.decode_max_side)) for r in records[start:start + batch_size]]
        batches.append(torch.stack(images).contiguous(memory_format=torch.channels_last))
    rates = []
    with torch.inference_mode():
        net(batches[0])  # warm-up: oneDNN picks its kernels on the first call
        for _ in range(rounds):
            start = time.perf_counter()
            for batch in batches:
                net(batch)
            rates.append(len(records) / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?", default=str(DEFAULT))
    parser.add_argument("--limit", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    net = create_model("efficientnet_lite0", head=None).eval()
    records = scan_folder(args.folder).records[: args.limit]
    print(f"{len(records)} images from {args.folder}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    model_rate = model_only_rate(net, records, args.batch_size)
    print(f"model only (channels-last, inference_mode, median of 3 passes): {model_rate:.1f} images/s")
    for workers in args.workers:
        start = time.perf_counter()
        embed_records(net, records, batch_size=args.batch_size, num_workers=workers)
        rate = len(records) / (time.perf_counter() - start)
        print(f"end to end, {workers} workers: {rate:.1f} images/s = {rate / model_rate:.0%} of model only")
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cached_embeddings(net, records, cache_dir=Path(cache))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        hit = cached_embeddings(net, records, cache_dir=Path(cache))
        warm = time.perf_counter() - start
        assert hit.n_cached == len(records)
    print(f"cache: first open {cold:.2f} s, re-open {warm * 1000:.1f} ms ({cold / warm:.0f}× faster)")


if __name__ == "__main__":
    main()
