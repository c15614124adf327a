"""Retrieval quality: Precision@1, Recall@K, R-Precision and MAP@R.

Definitions, for a query whose class has R items in the gallery:
- Precision@1: the nearest gallery item is of the query's class.
- Recall@K (the usual metric-learning one): at least one of the K nearest is.
- R-Precision: the share of the R nearest that are.
- MAP@R (Musgrave, Belongie and Lim, "A Metric Learning Reality Check", 2020): the mean
  over ranks i = 1..R of precision@i, counted only at ranks that hold a relevant item.
Each is averaged over the queries; queries with R = 0 are excluded and counted.

Only the K nearest items per query are ranked (K = the largest R or requested K), from a
distance matrix computed a block of queries at a time, so a few thousand items take
milliseconds and memory stays bounded."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
# Floats per block (distance rows, and top-K rows): bounds memory to ~100 MB.
BLOCK_FLOATS = 1 << 24


def retrieval_metrics(
    query_emb,
    query_labels,
    gallery_emb=None,
    gallery_labels=None,
    *,
    distance: str = "euclidean",
    ks: Sequence[int] = (1, 5, 10),
) -> dict:
    """Retrieval scores of `query_emb` (N × D, numpy or torch) against a gallery.

    With no gallery, leave-one-out within the queries (a query never retrieves itself);
    otherwise every query is ranked against `gallery_emb` (M × D). Labels may be any
    comparable values. `distance`: "euclidean" (= "squared_euclidean" for ranking) or
    "cosine". Returns floats `precision_at_1`, `recall_at_<k>` for each k in `ks`,
    `r_precision`, `map_at_r`, and ints `n_queries` (queries scored) and `n_excluded`
    (queries with no relevant gallery item)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    leave_one_out = gallery_emb is None
    if leave_one_out != (gallery_labels is None):
        raise ValueError("give both gallery_emb and gallery_labels, or neither")
    queries = _embeddings(query_emb)
    gallery = queries if leave_one_out else _embeddings(gallery_emb, device=queries.device)
    q_labels, g_labels, n_classes = _label_codes(query_labels, query_labels if leave_one_out else gallery_labels, queries.device)
    _check_shapes(queries, q_labels, gallery, g_labels)
    if distance == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=1)
        gallery = queries if leave_one_out else torch.nn.functional.normalize(gallery, dim=1)
    elif len(gallery):
        # Centring changes no distance but shrinks the norms in |q|² - 2q·g + |g|², and
        # with them float32 rounding (ties are otherwise broken by noise).
        centre = gallery.mean(0)
        queries, gallery = queries - centre, gallery - centre

    # R per query: gallery items of its class (itself excluded in leave-one-out).
    relevant = torch.bincount(g_labels, minlength=n_classes)[q_labels] - (1 if leave_one_out else 0)
    n_candidates = len(gallery) - (1 if leave_one_out else 0)
    depth = min(n_candidates, max([int(relevant.max()) if len(relevant) else 0, *map(int, ks)]))
    sums = {"precision_at_1": 0.0, **{f"recall_at_{int(k)}": 0.0 for k in ks}, "r_precision": 0.0, "map_at_r": 0.0}
    scored = relevant > 0
    n_scored = int(scored.sum())
    if n_scored and depth > 0:
        block = max(1, BLOCK_FLOATS // max(len(gallery), depth))
        for start in range(0, len(queries), block):
            rows = slice(start, start + block)
            hits = _hits(queries[rows], q_labels[rows], gallery, g_labels, depth, start if leave_one_out else None)
            _accumulate(sums, hits[scored[rows]], relevant[rows][scored[rows]], ks)
    result: dict = {key: (value / n_scored if n_scored else 0.0) for key, value in sums.items()}
    result["n_queries"] = n_scored
    result["n_excluded"] = len(q_labels) - n_scored
    return result


def _embeddings(values, device: torch.device | None = None) -> torch.Tensor:
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if device is not None:
        tensor = tensor.to(device)
    if tensor.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (items × dimensions) array, got shape {tuple(tensor.shape)}")
    return tensor.float()


def _label_codes(query_labels, gallery_labels, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Labels of any kind (ints, strings, tensors) → shared int64 codes, and their count."""
    q = _as_numpy(query_labels).reshape(-1)
    g = _as_numpy(gallery_labels).reshape(-1)
    classes, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = torch.as_tensor(codes.reshape(-1).astype(np.int64), device=device)
    return codes[: len(q)], codes[len(q) :], max(len(classes), 1)


def _as_numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _check_shapes(queries, q_labels, gallery, g_labels) -> None:
    if len(queries) != len(q_labels) or len(gallery) != len(g_labels):
        raise ValueError(f"embeddings and labels differ in length ({len(queries)} vs {len(q_labels)}, {len(gallery)} vs {len(g_labels)})")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ ({queries.shape[1]} vs {gallery.shape[1]})")


def _hits(queries, labels, gallery, g_labels, depth: int, self_offset: int | None) -> torch.Tensor:
    """(rows × depth) booleans: does the i-th nearest gallery item share the query's label?"""
    # Squared euclidean ranks like euclidean; for unit vectors it ranks like cosine.
    distances = (queries * queries).sum(1, keepdim=True) - 2.0 * queries @ gallery.T + (gallery * gallery).sum(1)
    if self_offset is not None:  # a query never retrieves itself
        rows = torch.arange(len(queries), device=queries.device)
        distances[rows, rows + self_offset] = torch.inf
    nearest = torch.topk(distances, depth, dim=1, largest=False, sorted=True).indices
    return g_labels[nearest] == labels.unsqueeze(1)


def _accumulate(sums: dict, hits: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> None:
    hits = hits.double()
    r = relevant.double()
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64, device=hits.device)
    within_r = ranks.unsqueeze(0) <= r.unsqueeze(1)
    sums["precision_at_1"] += float(hits[:, 0].sum())
    for k in ks:
        sums[f"recall_at_{int(k)}"] += float((hits[:, : int(k)].sum(1) > 0).sum())
    sums["r_precision"] += float(((hits * within_r).sum(1) / r).sum())
    precision_at_rank = hits.cumsum(1) / ranks
    sums["map_at_r"] += float(((precision_at_rank * hits * within_r).sum(1) / r).sum())
