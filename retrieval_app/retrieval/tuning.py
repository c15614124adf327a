"""Measuring an approximate index against exact search, and tuning its search-time knob
(IVF's nprobe, HNSW's efSearch) until it reaches a recall target.

The measurement: `SAMPLE_QUERIES` queries made from vectors drawn from the index (each
moved off its vector, see `RecallProbe`) are searched, and the recall@10 is the fraction
of exact search's 10 nearest that the index returns. The knob grows in steps of about √2
(cost grows with it) from its smallest value until the recall reaches `RECALL_TARGET`
(plus a margin), the knob reaches its cap or the recall stops growing; the recall reached
is kept with the index and shown.

`time_per_query` times indexes on the same sample, one query per search (as the app
searches), so that `auto` can tell whether a tuned index is faster than exact search."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import numpy as np

from .search import ExactIndex, NearestNeighbourIndex

RECALL_TARGET = 0.95
RECALL_K = 10
SAMPLE_QUERIES = 300
# Tuned to the target plus a margin, so that other queries (the sample's recall varies by
# about ±0.005) still reach the target.
TUNE_MARGIN = 0.01
PLATEAU_GAIN = 0.002
PLATEAU_STEPS = 3
TIMING_QUERIES = 100  # of the sample's queries, timed one at a time per index


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found ∩ truth| / |truth| (labels; −1 padding never matches)."""
    if truth.size == 0:
        return 1.0
    hits = [len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def knob_steps(low: int, cap: int) -> list[int]:
    """low, then ×≈√2 each step (1, 2, 3, 4, 6, 8, 12, 16, 24, ...), ending at cap."""
    steps, value = [], max(1, low)
    while value < cap:
        steps.append(value)
        value = max(value + 1, int(round(value * 2 ** 0.5)))
    return steps + [cap]


class RecallProbe:
    """Held-out-like queries and exact search's answers to them.

    Each query is a sampled indexed vector moved, in a random direction, half the way
    to its nearest other vector, and it must not return the vector it came from: so it
    is like a new image of the gallery's kind, not a copy of an indexed one (a graph
    finds its own nodes' neighbours more easily than a stranger's)."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, distance: str, *, n_queries: int = SAMPLE_QUERIES, k: int = RECALL_K, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)
        exact = ExactIndex(vectors, distance, labels, precision="float32")
        origin = np.ascontiguousarray(exact.vectors[rows])  # normalised for cosine
        self.exclude = np.asarray(labels, dtype=np.int64)[rows]
        nearest = exact.search(origin, 1, exclude=self.exclude)[0][:, 0]
        gap = np.linalg.norm(exact.vectors[exact._rows_of_labels(nearest)] - origin, axis=1, keepdims=True)
        direction = rng.normal(size=origin.shape)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        self.queries = np.ascontiguousarray(origin + 0.5 * gap * direction, dtype=np.float32)
        self.k = k
        self.truth = exact.search(self.queries, k, exclude=self.exclude)[0]

    def recall(self, index: NearestNeighbourIndex) -> float:
        found = index.search(self.queries, self.k, exclude=self.exclude)[0]
        return recall_at_k(found, self.truth)


def tune(index: NearestNeighbourIndex, probe: RecallProbe, steps: Sequence[int], set_knob: Callable[[int], None], target: float = RECALL_TARGET) -> tuple[int, float]:
    """The first knob value of `steps` whose sampled recall reaches `target` plus
    `TUNE_MARGIN`, and that recall; the knob is left at that value. It stops early, at
    the value where the recall stopped growing, when `PLATEAU_STEPS` steps in a row
    gain less than `PLATEAU_GAIN` (IVF-PQ: its codes, not the probes, cap the recall)."""
    best_value, best, flat = steps[0], -1.0, 0
    for value in steps:
        set_knob(value)
        recall = probe.recall(index)
        if recall >= target + TUNE_MARGIN:
            return value, recall
        flat = flat + 1 if recall < best + PLATEAU_GAIN else 0
        if recall > best:
            best_value, best = value, recall
        if flat >= PLATEAU_STEPS:
            break
    set_knob(best_value)
    return best_value, best


def time_per_query(indexes: Sequence[NearestNeighbourIndex], probe: RecallProbe, n_queries: int = TIMING_QUERIES) -> list[float]:
    """Median seconds of a one-query search (k = the probe's k) for each index, over the
    probe's first `n_queries` queries. The indexes take turns query by query, so a change
    in the machine's load (a shared machine) falls on all of them alike; each answers one
    untimed query first (lazy set-up such as the float16 copy of exact search)."""
    times: list[list[float]] = [[] for _ in indexes]
    queries, exclude = probe.queries[:n_queries], probe.exclude[:n_queries]
    for index in indexes:
        index.search(queries[:1], probe.k, exclude=exclude[:1])
    for row in range(len(queries)):
        for index, seen in zip(indexes, times):
            start = time.perf_counter()
            index.search(queries[row:row + 1], probe.k, exclude=exclude[row:row + 1])
            seen.append(time.perf_counter() - start)
    return [statistics.median(seen) for seen in times]
