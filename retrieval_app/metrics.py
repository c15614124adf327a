"""Retrieval quality: Precision@1, Recall@K, R-Precision and MAP@R.

MAP@R follows Musgrave et al., "A Metric Learning Reality Check" (2020): for a query
with R relevant gallery items, the mean over the first R ranks of precision-at-rank,
counted only at ranks that hold a relevant item. Recall@K is the usual metric-learning
one: the share of queries with at least one relevant item among the K nearest.
Queries without any relevant gallery item are excluded (and counted)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

QUERY_CHUNK = 1024  # rows of the distance matrix held at once


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().float().cpu()


def _distances(queries: torch.Tensor, gallery: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        q = torch.nn.functional.normalize(queries, dim=1)
        g = torch.nn.functional.normalize(gallery, dim=1)
        return 1.0 - q @ g.t()
    if distance == "euclidean":
        return torch.cdist(queries, gallery)
    raise ValueError(f"distance must be 'euclidean' or 'cosine', not '{distance}'")


def retrieval_metrics(query_emb, query_labels, gallery_emb=None, gallery_labels=None, *, distance: str = "euclidean", ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Leave-one-out within `query_emb` when no gallery is given, else queries vs gallery."""
    leave_one_out = gallery_emb is None
    queries, q_labels = _as_tensor(query_emb), torch.as_tensor(np.asarray(query_labels)).long()
    gallery = queries if leave_one_out else _as_tensor(gallery_emb)
    g_labels = q_labels if leave_one_out else torch.as_tensor(np.asarray(gallery_labels)).long()

    relevant_counts = (q_labels.unsqueeze(1) == g_labels.unsqueeze(0)).sum(1) - (1 if leave_one_out else 0)
    usable = relevant_counts > 0
    max_rank = min(len(gallery) - (1 if leave_one_out else 0), max(int(relevant_counts.max()) if len(q_labels) else 0, *ks))
    sums = {"precision_at_1": 0.0, "r_precision": 0.0, "map_at_r": 0.0, **{f"recall_at_{k}": 0.0 for k in ks}}
    n_used = int(usable.sum())
    if n_used and max_rank > 0:
        for start in range(0, len(queries), QUERY_CHUNK):
            rows = slice(start, start + QUERY_CHUNK)
            _accumulate(sums, queries[rows], q_labels[rows], relevant_counts[rows], usable[rows], gallery, g_labels, distance, max_rank, ks, start if leave_one_out else None)
    out = {key: (value / n_used if n_used else 0.0) for key, value in sums.items()}
    out["n_queries"] = n_used
    out["n_excluded"] = int(len(q_labels) - n_used)
    return out


def _accumulate(sums, queries, labels, r_counts, usable, gallery, g_labels, distance, max_rank, ks, self_offset) -> None:
    d = _distances(queries, gallery, distance)
    if self_offset is not None:  # a query never retrieves itself
        own = torch.arange(len(queries)) + self_offset
        d[torch.arange(len(queries)), own] = torch.inf
    order = torch.topk(d, max_rank, dim=1, largest=False).indices
    hits = (g_labels[order] == labels.unsqueeze(1)).float()[usable]
    r = r_counts[usable].float()
    ranks = torch.arange(1, max_rank + 1, dtype=torch.float32)
    within_r = ranks.unsqueeze(0) <= r.unsqueeze(1)
    sums["precision_at_1"] += float(hits[:, 0].sum())
    sums["r_precision"] += float(((hits * within_r).sum(1) / r).sum())
    precision_at_rank = hits.cumsum(1) / ranks
    sums["map_at_r"] += float(((precision_at_rank * hits * within_r).sum(1) / r).sum())
    for k in ks:
        sums[f"recall_at_{k}"] += float((hits[:, :k].sum(1) > 0).sum())
