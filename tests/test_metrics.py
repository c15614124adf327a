"""retrieval_metrics against pytorch-metric-learning's AccuracyCalculator and brute force."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from retrieval_app import metrics as metrics_module
from retrieval_app.metrics import retrieval_metrics

PML_KEYS = {"precision_at_1": "precision_at_1", "r_precision": "r_precision", "map_at_r": "mean_average_precision_at_r"}
# Class sizes; 1-item classes have no relevant item in leave-one-out and are excluded.
LAYOUTS = {
    "balanced": [6] * 5,
    "many_small": [3] * 12,
    "few_large": [20, 20, 20],
    "unbalanced": [2, 3, 10, 25, 4],
    "with_singletons": [1, 5, 1, 8, 6, 1],
}


def embeddings(sizes: list[int], seed: int, dim: int = 8, spread: float = 1.0):
    """Gaussian clusters, one per class, overlapping enough for imperfect retrieval."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    centres = rng.normal(size=(len(sizes), dim))
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def pml(query, q_labels, reference=None, r_labels=None, distance="euclidean"):
    # AccuracyCalculator's own knn is FAISS L2; CustomKNN makes the distance explicit.
    # LpDistance normalises embeddings unless told not to, which is not plain euclidean.
    knn = CustomKNN(CosineSimilarity() if distance == "cosine" else LpDistance(normalize_embeddings=False))
    calculator = AccuracyCalculator(include=tuple(PML_KEYS.values()), k="max_bin_count", device=torch.device("cpu"), knn_func=knn)
    if reference is None:  # leave-one-out: query and reference are the same set
        return calculator.get_accuracy(torch.tensor(query), torch.tensor(q_labels))
    return calculator.get_accuracy(torch.tensor(query), torch.tensor(q_labels), torch.tensor(reference), torch.tensor(r_labels), ref_includes_query=False)


def assert_matches_pml(ours: dict, reference: dict) -> None:
    for key, pml_key in PML_KEYS.items():
        assert ours[key] == pytest.approx(reference[pml_key], abs=1e-6), key


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", range(3))
def test_leave_one_out_matches_accuracy_calculator(seed, layout, distance):
    emb, labels = embeddings(LAYOUTS[layout], seed)
    ours = retrieval_metrics(emb, labels, distance=distance)
    assert_matches_pml(ours, pml(emb, labels, distance=distance))
    singletons = sum(size == 1 for size in LAYOUTS[layout])
    assert ours["n_excluded"] == singletons and ours["n_queries"] == len(labels) - singletons


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", range(3))
def test_queries_against_a_gallery_match_accuracy_calculator(seed, distance):
    gallery, g_labels = embeddings([8, 3, 12, 5, 6], seed)
    queries, q_labels = embeddings([3, 4, 1, 2, 3, 2], seed + 100)  # class 5 is not in the gallery
    ours = retrieval_metrics(queries, q_labels, gallery, g_labels, distance=distance)
    assert_matches_pml(ours, pml(queries, q_labels, gallery, g_labels, distance=distance))
    assert ours["n_excluded"] == 2 and ours["n_queries"] == len(q_labels) - 2


def test_faiss_default_knn_agrees_for_euclidean():
    emb, labels = embeddings(LAYOUTS["unbalanced"], 11)
    calculator = AccuracyCalculator(include=tuple(PML_KEYS.values()), k="max_bin_count", device=torch.device("cpu"))
    assert_matches_pml(retrieval_metrics(emb, labels), calculator.get_accuracy(torch.tensor(emb), torch.tensor(labels)))


def brute_force_recall(queries, q_labels, gallery, g_labels, k, leave_one_out, distance):
    hits = []
    for i, (query, label) in enumerate(zip(queries, q_labels)):
        candidates = [j for j in range(len(gallery)) if not (leave_one_out and j == i)]
        if not any(g_labels[j] == label for j in candidates):
            continue  # excluded: nothing relevant to find
        if distance == "cosine":
            d = [1 - np.dot(query, gallery[j]) / np.linalg.norm(query) / np.linalg.norm(gallery[j]) for j in candidates]
        else:
            d = [np.linalg.norm(query - gallery[j]) for j in candidates]
        nearest = [candidates[j] for j in np.argsort(d)[:k]]
        hits.append(any(g_labels[j] == label for j in nearest))
    return float(np.mean(hits))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("layout", ["unbalanced", "with_singletons", "many_small"])
def test_recall_at_k_against_brute_force(layout, distance):
    emb, labels = embeddings(LAYOUTS[layout], 4, spread=2.0)
    ks = (1, 2, 3, 5, 10, 100)
    ours = retrieval_metrics(emb, labels, distance=distance, ks=ks)
    for k in ks:
        assert ours[f"recall_at_{k}"] == pytest.approx(brute_force_recall(emb, labels, emb, labels, k, True, distance)), k
    assert ours["recall_at_1"] == ours["precision_at_1"]
    gallery, g_labels = embeddings([4, 6, 2], 5, spread=2.0)
    ours = retrieval_metrics(emb[:20], labels[:20], gallery, g_labels, distance=distance, ks=ks)
    for k in ks:
        assert ours[f"recall_at_{k}"] == pytest.approx(brute_force_recall(emb[:20], labels[:20], gallery, g_labels, k, False, distance)), k


def test_default_keys():
    emb, labels = embeddings([4, 4], 0)
    assert set(retrieval_metrics(emb, labels)) == {
        "precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r", "n_queries", "n_excluded",
    }


def test_perfect_embedding_scores_one_and_shuffled_labels_score_less():
    emb, labels = embeddings([6] * 5, 5, spread=0.01)
    perfect = retrieval_metrics(emb, labels)
    for key in ("precision_at_1", "recall_at_1", "recall_at_5", "r_precision", "map_at_r"):
        assert perfect[key] == pytest.approx(1.0), key
    shuffled = retrieval_metrics(emb, np.random.default_rng(0).permutation(labels))
    assert shuffled["map_at_r"] < 0.5 and shuffled["precision_at_1"] < 0.7 and shuffled["r_precision"] < 0.6


def test_map_at_r_by_hand():
    # Query 0 (class 0, R = 2): ranked 2 (wrong), 1 (right), 3 (wrong):
    # MAP@R = (0 + 1/2) / 2; R-precision = 1/2; P@1 = 0.
    emb = np.array([[0.0], [2.0], [1.0], [3.0]])
    q = retrieval_metrics(emb[:1], [0], emb[1:], [0, 1, 0])
    assert (q["precision_at_1"], q["r_precision"], q["map_at_r"]) == (0.0, 0.5, 0.25)


def test_inputs_torch_numpy_and_any_label_type():
    emb, labels = embeddings(LAYOUTS["unbalanced"], 2)
    expected = retrieval_metrics(emb, labels)
    names = np.array(["cat", "dog", "eel", "fox", "gnu"])[labels]
    assert retrieval_metrics(torch.tensor(emb), torch.tensor(labels)) == expected
    assert retrieval_metrics(emb.astype(np.float64), names.tolist()) == pytest.approx(expected)
    half = len(emb) // 2
    assert retrieval_metrics(emb[:half], names[:half], torch.tensor(emb[half:]), list(names[half:]))["n_queries"] > 0


def test_blocked_computation_gives_the_same_numbers(monkeypatch):
    emb, labels = embeddings([30, 20, 50, 10], 9)
    whole = retrieval_metrics(emb, labels)
    monkeypatch.setattr(metrics_module, "BLOCK_FLOATS", 7 * len(emb))  # 7 queries at a time
    assert retrieval_metrics(emb, labels) == pytest.approx(whole)
    gallery, g_labels = embeddings([5, 7, 9, 11], 10)
    monkeypatch.setattr(metrics_module, "BLOCK_FLOATS", 1)
    blocked = retrieval_metrics(emb, labels, gallery, g_labels)
    monkeypatch.undo()
    assert blocked == pytest.approx(retrieval_metrics(emb, labels, gallery, g_labels))


def test_a_few_thousand_items_are_fast():
    torch.set_num_threads(1)
    emb, labels = embeddings([60] * 50, 3, dim=128)
    start = time.perf_counter()
    result = retrieval_metrics(emb, labels)
    assert time.perf_counter() - start < 5.0  # ~0.2 s on one core
    assert result["n_queries"] == 3000 and 0 < result["map_at_r"] < 1


def test_empty_and_hopeless_inputs():
    nothing = retrieval_metrics(np.zeros((0, 4)), [])
    assert nothing["n_queries"] == 0 and nothing["map_at_r"] == 0.0
    lonely = retrieval_metrics(np.eye(3), [0, 1, 2])
    assert lonely["n_queries"] == 0 and lonely["n_excluded"] == 3 and lonely["precision_at_1"] == 0.0


def test_bad_arguments():
    emb, labels = embeddings([3, 3], 0)
    with pytest.raises(ValueError, match="distance"):
        retrieval_metrics(emb, labels, distance="manhattan")
    with pytest.raises(ValueError, match="length"):
        retrieval_metrics(emb, labels[:-1])
    with pytest.raises(ValueError, match="dimensions differ"):
        retrieval_metrics(emb, labels, emb[:, :3], labels)
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(emb, labels, emb)
