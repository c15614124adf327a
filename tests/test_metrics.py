"""Retrieval metrics against pytorch-metric-learning's AccuracyCalculator and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from retrieval_app.metrics import retrieval_metrics

PML_KEYS = {"precision_at_1": "precision_at_1", "r_precision": "r_precision", "map_at_r": "mean_average_precision_at_r"}


def random_set(seed: int, n_classes: int, per_class: int, dim: int = 8, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, dim))
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def pml(query, q_labels, reference=None, r_labels=None):
    calculator = AccuracyCalculator(include=tuple(PML_KEYS.values()), k="max_bin_count", device=torch.device("cpu"))
    if reference is None:
        return calculator.get_accuracy(torch.tensor(query), torch.tensor(q_labels))  # leave-one-out
    return calculator.get_accuracy(torch.tensor(query), torch.tensor(q_labels), torch.tensor(reference), torch.tensor(r_labels), ref_includes_query=False)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("layout", [(5, 6), (10, 3), (3, 20)])
def test_leave_one_out_matches_accuracy_calculator(seed, layout):
    emb, labels = random_set(seed, *layout)
    ours = retrieval_metrics(emb, labels)
    reference = pml(emb, labels)
    for key, pml_key in PML_KEYS.items():
        assert ours[key] == pytest.approx(reference[pml_key], abs=1e-6), key


@pytest.mark.parametrize("seed", range(3))
def test_query_vs_gallery_matches_accuracy_calculator(seed):
    gallery, g_labels = random_set(seed, 6, 8)
    queries, q_labels = random_set(seed + 100, 6, 3)
    ours = retrieval_metrics(queries, q_labels, gallery, g_labels)
    reference = pml(queries, q_labels, gallery, g_labels)
    for key, pml_key in PML_KEYS.items():
        assert ours[key] == pytest.approx(reference[pml_key], abs=1e-6), key
    assert ours["n_queries"] == len(q_labels)


def test_recall_at_k_by_brute_force():
    emb, labels = random_set(4, 8, 5, spread=2.0)
    ours = retrieval_metrics(emb, labels, ks=(1, 3, 5, 10))
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1)
    for k in (1, 3, 5, 10):
        expected = np.mean([(labels[order[i, :k]] == labels[i]).any() for i in range(len(labels))])
        assert ours[f"recall_at_{k}"] == pytest.approx(expected)
    assert ours["recall_at_1"] == pytest.approx(ours["precision_at_1"])


def test_perfect_and_shuffled_embeddings():
    emb, labels = random_set(5, 5, 6, spread=0.01)
    perfect = retrieval_metrics(emb, labels)
    assert perfect["map_at_r"] == pytest.approx(1.0) and perfect["precision_at_1"] == 1.0
    shuffled = retrieval_metrics(emb, np.random.default_rng(0).permutation(labels))
    assert shuffled["map_at_r"] < 0.6


def test_cosine_and_excluded_queries():
    emb, labels = random_set(6, 4, 5)
    cos = retrieval_metrics(emb, labels, distance="cosine")
    normalised = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert cos["map_at_r"] == pytest.approx(retrieval_metrics(normalised, labels)["map_at_r"], abs=1e-6)
    lonely = retrieval_metrics(np.vstack([emb, np.ones((1, 8))]), np.append(labels, 99))
    assert lonely["n_excluded"] == 1 and lonely["n_queries"] == len(labels)
