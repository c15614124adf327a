"""Embedding at scale: large photos end to end vs the model alone, and peak memory (RSS)
against the number of images.

1. `photos`: `--photos` caltech101_dev photos upscaled to 2000×1500 (3 MP) and 4000×3000
   (12 MP) JPEGs (made once under --work). EfficientNet-Lite0 at 224 px, batch 32:
   model only (tensors decoded beforehand) vs `embed_records` with decoding in a
   background thread (0 workers) and in one worker process per core; best and median of
   `--rounds` interleaved rounds.
2. `memory`: peak RSS of one fresh process that embeds the first N images of a folder of
   28×28 PNGs (bench_ui_click.py's 100,000 Fashion-MNIST folder, made if missing) through
   the app's cache (`cached_embeddings`: parts flushed while computing, merged at the
   end), with the small CNN (untrained: this measures the pipeline, not the network),
   for each N in `--sizes`. Worker processes' peak is reported separately (ru_maxrss of
   the children). The vectors themselves are N × D × 4 bytes and are listed beside it.
   The whole folder's scan stays alive in every run, so each size starts from the same
   process and the growth is the embedding's alone (slicing the scan's records used to
   free the rest, whose memory the smaller sizes then reused). `--traced`: instead,
   the peak of Python and NumPy allocations (tracemalloc; torch's own are not traced)
   during the first run and during a re-open that reads the store; slower, so images/s
   is left out.

    python bench/bench_embed_scale.py photos [--photos 64] [--rounds 2]
    python bench/bench_embed_scale.py memory [--sizes 20000 50000 100000] [--traced]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALTECH = ROOT.parent / "shared" / "datasets" / "caltech101_dev"
WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "retrieval-bench-embed-scale"
SIZES = {"3 MP": (2000, 1500), "12 MP": (4000, 3000)}


def large_photos(work: Path, n: int, size: tuple[int, int]) -> Path:
    """`n` caltech photos upscaled to `size`, as JPEG (quality 90), one class folder per source class."""
    from PIL import Image

    folder = work / f"photos-{size[0]}x{size[1]}-{n}"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == n:
        return folder
    sources = sorted(CALTECH.rglob("*.jpg"))
    step = max(1, len(sources) // n)
    for source in sources[::step][:n]:
        out = folder / source.parent.name / source.name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("RGB").resize(size, Image.BICUBIC).save(out, quality=90)
    return folder


def rate(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def photos(args) -> dict:
    import torch

    from retrieval_app.data import load_image, scan_folder
    from retrieval_app.networks import create_model
    from retrieval_app.retrieval.embed import default_workers, embed_records
    from retrieval_app.threads import available_cores

    net = create_model("efficientnet_lite0", head=None).eval()
    bs, workers = 32, default_workers() or available_cores()
    results = {"cores": available_cores(), "workers": workers, "torch_threads": torch.get_num_threads(), "sizes": {}}
    for label, size in SIZES.items():
        records = scan_folder(large_photos(args.work, args.photos, size), check_images=False).records
        transform = net.eval_transform()
        tensors = [torch.stack([transform(load_image(r.path, max_side=net.spec.decode_max_side)) for r in records[i:i + bs]])
                   .contiguous(memory_format=torch.channels_last) for i in range(0, len(records), bs)]

        def model_only():
            with torch.inference_mode():
                for batch in tensors:
                    net(batch)

        model_only()  # warm-up
        variants = {"model only": model_only,
                    "end to end, decoding thread": lambda: embed_records(net, records, batch_size=bs, num_workers=0, device="cpu"),
                    f"end to end, {workers} worker processes": lambda: embed_records(net, records, batch_size=bs, num_workers=workers, device="cpu")}
        rates = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                rates[name].append(rate(len(records), fn))
        best_ref, median_ref = max(rates["model only"]), statistics.median(rates["model only"])
        results["sizes"][label] = {name: {"best": round(max(v), 1), "best_vs_model": round(max(v) / best_ref, 2),
                                          "median": round(statistics.median(v), 1), "median_vs_model": round(statistics.median(v) / median_ref, 2)}
                                   for name, v in rates.items()}
        print(label, json.dumps(results["sizes"][label]), file=sys.stderr)
    return results


def memory_folder() -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_ui_click import make_folder

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "retrieval-bench-ui"
    return make_folder(work, 100_000)


def memory_worker(folder: str, n: int, traced: bool = False) -> dict:
    """One size, in this (fresh) process."""
    from retrieval_app.data import scan_folder
    from retrieval_app.networks import create_model
    from retrieval_app.retrieval.cache import cached_embeddings
    from retrieval_app.retrieval.embed import default_workers

    scan = scan_folder(folder, check_images=False)  # kept whole (see the module docstring)
    records = scan.records[:n]
    net = create_model("small_cnn", pretrained=False, dim=64).eval()
    if traced:
        return traced_worker(net, records)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        result = cached_embeddings(net, records, cache_dir=cache, device="cpu", batch_size=256)
        seconds = time.perf_counter() - start
    return {"images": n, "ok": int(result.ok.sum()), "dim": int(result.embeddings.shape[1]), "seconds": round(seconds, 1),
            "images_per_s": round(n / seconds), "workers": default_workers(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "rss_before_embedding_mb": round(base),
            "workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "vectors_mb": round(result.embeddings.nbytes / 2**20, 1)}


def traced_worker(net, records) -> dict:
    """Peak Python + NumPy bytes (tracemalloc) above the start, first run and re-open."""
    import tracemalloc

    from retrieval_app.retrieval.cache import cached_embeddings

    def peak_mb(fn) -> float:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return round((tracemalloc.get_traced_memory()[1] - before) / 2**20, 1)

    tracemalloc.start()
    with tempfile.TemporaryDirectory() as cache:
        embed = lambda: cached_embeddings(net, records, cache_dir=cache, device="cpu", batch_size=256)  # noqa: E731
        first = peak_mb(embed)
        reopen = peak_mb(embed)
    dim = net.embedding_dim
    return {"images": len(records), "traced_peak_mb": first, "reopen_traced_peak_mb": reopen,
            "vectors_mb": round(len(records) * dim * 4 / 2**20, 1)}


def memory(args) -> list[dict]:
    folder = args.folder or memory_folder()
    rows = []
    for n in args.sizes:
        command = [sys.executable, __file__, "memory-worker", str(folder), str(n)] + (["traced"] if args.traced else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> None:
    if len(sys.argv) in (4, 5) and sys.argv[1] == "memory-worker":
        print(json.dumps(memory_worker(sys.argv[2], int(sys.argv[3]), traced=sys.argv[4:] == ["traced"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["photos", "memory"])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 100_000])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--folder", type=Path, default=None, help="memory: a folder of small images (default: bench_ui_click's 100k)")
    parser.add_argument("--traced", action="store_true", help="memory: tracemalloc peaks instead of RSS (slower)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = photos(args) if args.what == "photos" else memory(args)
    print(json.dumps({"result": result, "cpu_count": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}, indent=2))


if __name__ == "__main__":
    main()
