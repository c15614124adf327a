"""Groups for a folder without labels: k-means clusters of its embeddings, so the map has
colours and a legend to read.

k is chosen by the silhouette score (how much nearer each point is to its own cluster
than to the next one) among candidates from 2 to about √N, capped at 20 (a legend
of more colours is not readable, and the byte labels of the map allow 256 anyway). The
silhouette is computed on at most 2,000 points (it costs N²), k-means on all of them;
the vectors are L2-normalised first, so clusters follow the cosine geometry retrieval
uses, then reduced to their 32 leading principal directions (k-means on 1,280 dims cost
10× more for the same clusters). One thread: on a busy 2-core machine k-means with all
cores measured 10× slower than with one. Seeded: the same embeddings give the same
clusters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.scan import UNLABELLED

MAX_CLUSTERS = 20
PCA_DIMS = 32
SILHOUETTE_SAMPLE = 2000
NO_LABEL_NAME = "(no label)"


@dataclass(frozen=True)
class Clusters:
    labels: np.ndarray  # (N,) int64 in 0..k-1
    k: int
    silhouette: float | None  # of the chosen k; None when it could not be computed
    scores: dict[int, float]  # silhouette per candidate k

    @property
    def names(self) -> list[str]:
        return [f"cluster {i + 1}" for i in range(self.k)]


def candidate_ks(n: int) -> list[int]:
    """2 … min(20, N - 1, round(√N)); empty below 3 points."""
    if n < 3:
        return []
    top = min(MAX_CLUSTERS, n - 1, max(2, int(round(np.sqrt(n)))))
    return list(range(2, top + 1))


def cluster_embeddings(vectors: np.ndarray, *, k: int | None = None, seed: int = 0) -> Clusters:
    """k-means clusters of `vectors` (N, D); `k` None: chosen by silhouette."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _cluster(np.asarray(vectors, dtype=np.float32), k, seed)


def _cluster(x: np.ndarray, k: int | None, seed: int) -> Clusters:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if x.shape[1] > PCA_DIMS and len(x) > PCA_DIMS:
        centred = x - x.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        x = centred @ vt[:PCA_DIMS].T
    n = len(x)
    if n < 3 or (k is not None and k < 2):
        return Clusters(np.zeros(n, dtype=np.int64), 1, None, {})
    ks = [min(int(k), n - 1)] if k is not None else candidate_ks(n)
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=SILHOUETTE_SAMPLE, replace=False) if n > SILHOUETTE_SAMPLE else np.arange(n)
    best, scores = None, {}
    for candidate in ks:
        labels = KMeans(n_clusters=candidate, n_init=3, random_state=seed).fit_predict(x).astype(np.int64)
        if len(np.unique(labels[sample])) < 2:
            continue
        scores[candidate] = float(silhouette_score(x[sample], labels[sample]))
        if best is None or scores[candidate] > scores[best[0]]:
            best = (candidate, labels)
    if best is None:  # every candidate collapsed (e.g. identical vectors): one group
        return Clusters(np.zeros(n, dtype=np.int64), 1, None, scores)
    chosen, labels = best
    return Clusters(_by_size(labels), chosen, scores[chosen], scores)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters largest first: cluster 1 is the biggest, whatever k-means's order."""
    counts = np.bincount(labels)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels].astype(np.int64)


def colour_groups(labels: np.ndarray, classes: list[str], embeddings: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, list[str], str]:
    """What a map colours by: (group per point, group names, "class" or "cluster").
    Classes when any image has a label (the unlabelled ones as one more group, "(no
    label)"); k-means clusters of `embeddings` when none has."""
    labels = np.asarray(labels, dtype=np.int64)
    if classes:
        if (labels == UNLABELLED).any():
            return np.where(labels == UNLABELLED, len(classes), labels), [*classes, NO_LABEL_NAME], "class"
        return labels, list(classes), "class"
    clusters = cluster_embeddings(embeddings, seed=seed)
    return clusters.labels, clusters.names, "cluster"
