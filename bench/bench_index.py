"""Index backends side by side at 1M × 128 (issue 14): p50 latency of one query at a time
and recall@10 against exact search, for exact float32, exact float16 + float32 re-rank,
IVF-Flat, HNSW (and IVF-PQ on request), plus the machine's memory bandwidth and how close
exact search comes to it.

Data: synthetic clustered 128-d float32 vectors, 1,000 cluster centres drawn N(0, 1)
(centres ≈ 16 apart) and points around them with a spread σ per dimension:
- `separated`: σ = 0.3 (a cluster's radius ≈ 3.4: well apart);
- `harder`: σ = 1.0 (radius ≈ 11: clusters touch, and inside a cluster the nearest
  neighbours are nearly random, so an IVF list holds only part of them);
- `overlapping` (on request): σ = 2.0 (radius ≈ 23: clusters overlap their neighbours).
Queries are 1,000 further points of the same clusters (not in the index). Recall@10 is
the fraction of exact search's 10 nearest that a backend returns; the IVF/HNSW knobs
are tuned at build time on queries made from the index (see retrieval/tuning.py), so
the recall here is measured on other queries than the ones they were tuned on.

`--auto` adds the app's own choice (`build_index(backend="auto")`): IVF-Flat, or exact
search where the tuned IVF-Flat was slower per query on its tuning sample; the row says
which and why.

HNSW at 1M took 16 minutes to build on this kind of machine (issue 14), so by default it
is measured at --hnsw-size (100,000) and said so; --hnsw-size 1000000 to insist.

    python bench/bench_index.py [--sizes 100000 1000000] [--kinds separated harder]
        [--hnsw-size 100000] [--pq] [--auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from retrieval_app.retrieval.ann import HnswIndex, IvfIndex
from retrieval_app.retrieval.indexes import build_index
from retrieval_app.retrieval.search import ExactIndex
from retrieval_app.retrieval.tuning import recall_at_k

SPREAD = {"separated": 0.3, "harder": 1.0, "overlapping": 2.0}
DIM, CENTRES, N_QUERIES, K = 128, 1000, 1000, 10


def dataset(n: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n vectors, N_QUERIES held-out queries) from the same clusters, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    total = n + N_QUERIES
    data = np.empty((total, DIM), dtype=np.float32)
    for start in range(0, total, 200_000):  # no float64 temporaries of the whole set
        stop = min(start + 200_000, total)
        data[start:stop] = centres[rng.integers(0, CENTRES, stop - start)]
        data[start:stop] += SPREAD[kind] * rng.standard_normal((stop - start, DIM), dtype=np.float32)
    return data[:n], np.ascontiguousarray(data[n:])


def latencies_ms(index, queries: np.ndarray, limit: int) -> np.ndarray:
    """Wall time of `index.search(one query, 10)` for each of the first `limit` queries."""
    index.search(queries[:1], K)  # warm-up (lazy float16 copy, page faults)
    out = []
    for q in queries[:limit]:
        start = time.perf_counter()
        index.search(q[None, :], K)
        out.append((time.perf_counter() - start) * 1000)
    return np.asarray(out)


def memory_bandwidth_gbs() -> dict:
    """Read bandwidth: the best of 5 sums over a 1 GiB array, one thread (NumPy) and all
    threads (torch); and copy bandwidth (read + write)."""
    import torch

    a = np.ones(256 * 1024 * 1024, dtype=np.float32)  # 1 GiB
    b = np.empty_like(a)
    ta = torch.from_numpy(a)

    def best(fn):
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return a.nbytes / min(times) / 1e9

    result = {"sum_1_thread": best(lambda: a.sum()), "sum_all_threads": best(lambda: ta.sum()), "copy": 2 * best(lambda: np.copyto(b, a)) / 1, "threads": torch.get_num_threads()}
    result["read"] = max(result["sum_1_thread"], result["sum_all_threads"])
    return result


def measure(name: str, build, queries, truth, limit: int, scanned_bytes: int | None, bandwidth: float) -> dict:
    start = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - start
    found = index.search(queries, K)[0]
    lat = latencies_ms(index, queries, limit)
    row = {
        "backend": name, "build_s": round(build_s, 1), "p50_ms": float(np.median(lat)), "p90_ms": float(np.percentile(lat, 90)),
        "recall_at_10": recall_at_k(found, truth), "tuned_recall": getattr(index, "recall", None), "params": dict(index.params), "queries_timed": len(lat),
        "chosen": index.backend, "describe": index.describe(),
    }
    if scanned_bytes is not None:  # exact search: how near the memory bandwidth is it?
        row["bandwidth_floor_ms"] = scanned_bytes / (bandwidth * 1e9) * 1000
        row["bandwidth_ratio"] = row["bandwidth_floor_ms"] / row["p50_ms"]
    print(f"  {name:<22} build {row['build_s']:7.1f} s  p50 {row['p50_ms']:8.3f} ms  p90 {row['p90_ms']:8.3f} ms  recall@10 {row['recall_at_10']:.3f}  {row['params']}"
          + (f"  floor {row['bandwidth_floor_ms']:.2f} ms ({100 * row['bandwidth_ratio']:.0f} % of bandwidth)" if scanned_bytes else ""), flush=True)
    if name == "auto":
        print(f"    auto: {row['describe']}", flush=True)
    del index
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="*", default=["separated", "harder"], choices=sorted(SPREAD))
    parser.add_argument("--hnsw-size", type=int, default=100_000, help="the only size HNSW is built at (0: never)")
    parser.add_argument("--pq", action="store_true", help="also IVF-PQ")
    parser.add_argument("--auto", action="store_true", help="also the app's automatic choice")
    parser.add_argument("--exact-queries", type=int, default=100, help="queries timed one by one for exact search")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bandwidth = memory_bandwidth_gbs()
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; memory bandwidth (GB/s): " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in bandwidth.items()), flush=True)
    rows = []
    for n in args.sizes:
        for kind in args.kinds:
            vectors, queries = dataset(n, kind)
            truth = ExactIndex(vectors, precision="float32").search(queries, K)[0]
            print(f"{n:,} × {DIM}, {kind} (load {os.getloadavg()[0]:.1f})", flush=True)
            runs = [
                ("exact float32", lambda: ExactIndex(vectors, precision="float32"), args.exact_queries, vectors.nbytes),
                ("exact float16+rerank", lambda: ExactIndex(vectors, precision="float16"), args.exact_queries, vectors.nbytes // 2),
                ("ivf_flat", lambda: IvfIndex.build(vectors), N_QUERIES, None),
            ]
            if n == args.hnsw_size:
                runs.append(("hnsw", lambda: HnswIndex.build(vectors), N_QUERIES, None))
            if args.pq:
                runs.append(("ivf_pq", lambda: IvfIndex.build(vectors, pq=True), N_QUERIES, None))
            if args.auto:
                runs.append(("auto", lambda: build_index(vectors, backend="auto"), N_QUERIES, None))
            for name, build, limit, scanned in runs:
                row = measure(name, build, queries, truth, limit, scanned, bandwidth["read"])
                rows.append({"n": n, "kind": kind, "load": os.getloadavg()[0], **row})
            del vectors, queries, truth
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"bandwidth_gbs": bandwidth, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
