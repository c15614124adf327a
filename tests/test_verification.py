"""Verification and open-set identification measures against brute-force computations,
the FaceNet preset, and the calibration's storage form. No network is trained here
(see tests/test_faces.py for the trained identity set)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from retrieval_app.errors import RetrievalAppError
from retrieval_app.identification import UNKNOWN, OpenSetScores, dir_at_far, identify, open_set_report, open_set_scores, rates_at
from retrieval_app.verification import (
    Calibration,
    all_pairs,
    calibrate_embeddings,
    calibrate_pairs,
    distance_matrix,
    equal_error_rate,
    roc_curve,
    tar_at_far,
    verify_embeddings,
)


def _brute_rates(genuine, impostor, t):
    """(FAR, TAR) by counting, accept if d ≤ t."""
    return sum(d <= t for d in impostor) / len(impostor), sum(d <= t for d in genuine) / len(genuine)


def _distances(seed, n_gen=60, n_imp=400, ties=False):
    rng = np.random.default_rng(seed)
    genuine, impostor = rng.normal(1.0, 0.4, n_gen), rng.normal(2.0, 0.5, n_imp)
    if ties:  # rounded: many equal distances, within and across the two kinds
        genuine, impostor = np.round(genuine, 1), np.round(impostor, 1)
    return genuine, impostor


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_roc_eer_and_tar_at_far_equal_brute_force(seed, ties):
    genuine, impostor = _distances(seed, ties=ties)
    roc = roc_curve(genuine, impostor)
    # Every ROC point: its threshold accepts exactly what counting says, and the curve
    # covers every distinct accept set (one point per distinct distance, plus "none").
    for t, far, tar in zip(roc.threshold, roc.far, roc.tar):
        assert (far, tar) == pytest.approx(_brute_rates(genuine, impostor, t))
    candidates = [-np.inf, *sorted(set(genuine) | set(impostor))]
    assert len(roc.far) == len(candidates)
    brute = [_brute_rates(genuine, impostor, t) for t in candidates]
    eer, i = equal_error_rate(roc)
    assert eer == pytest.approx(min(max(far, 1 - tar) for far, tar in brute))
    assert max(roc.far[i], 1 - roc.tar[i]) == pytest.approx(eer)
    for target in (0.01, 0.05, 0.2):
        tar, j = tar_at_far(roc, target)
        assert tar == pytest.approx(max(tar for far, tar in brute if far <= target))
        assert roc.far[j] <= target
    assert 0.0 < eer < 0.3  # the two distributions overlap a little


def test_all_pairs_are_every_unordered_pair():
    rng = np.random.default_rng(3)
    x, labels = rng.normal(size=(13, 4)), rng.integers(0, 4, 13)
    for distance in ("euclidean", "squared_euclidean", "cosine", "linf"):
        genuine, impostor = all_pairs(x, labels, distance)
        brute_g, brute_i = [], []
        for i, j in itertools.combinations(range(13), 2):
            a, b = x[i], x[j]
            d = {"euclidean": np.linalg.norm(a - b), "squared_euclidean": np.sum((a - b) ** 2), "linf": np.abs(a - b).max(),
                 "cosine": 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)}[distance]
            (brute_g if labels[i] == labels[j] else brute_i).append(d)
        assert sorted(genuine) == pytest.approx(sorted(brute_g), abs=1e-9)
        assert sorted(impostor) == pytest.approx(sorted(brute_i), abs=1e-9)


def test_calibration_threshold_sets_and_storage_round_trip():
    genuine, impostor = _distances(4)
    g2, i2 = _distances(5, n_gen=30, n_imp=100)
    cal = calibrate_pairs({"held-out images": (genuine, impostor), "held-out identities": (g2, i2)}, "squared_euclidean", source="test")
    pooled = roc_curve(np.concatenate([genuine, g2]), np.concatenate([impostor, i2]))
    assert cal.eer == pytest.approx(equal_error_rate(pooled)[0])
    far, tar = _brute_rates(np.concatenate([genuine, g2]), np.concatenate([impostor, i2]), cal.threshold)
    assert max(far, 1 - tar) == pytest.approx(cal.eer)  # the threshold is the EER point
    assert cal.sets["held-out identities"].n_genuine == 30 and cal.sets["held-out images"].n_impostor == 400
    assert cal.tar_at_far["0.001"] <= cal.tar_at_far["0.01"] and set(cal.tar_at_far) == {"0.01", "0.001"}
    assert cal.rates_at(cal.threshold) == pytest.approx((far, tar))
    assert cal.threshold_for_far(0.01) == pytest.approx(cal.threshold_at_far["0.01"])
    assert len(cal.roc["far"]) <= 256 + 3 and list(cal.roc["threshold"]) == sorted(cal.roc["threshold"])
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal
    with pytest.raises(RetrievalAppError):
        Calibration.from_dict({"nonsense": 1})
    with pytest.raises(RetrievalAppError):
        calibrate_pairs({"x": (np.array([1.0]), np.array([]))}, "euclidean")


def test_separable_clusters_calibrate_to_zero_error_and_verify_pairs():
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(5, 8)) * 10
    labels = np.repeat(np.arange(5), 6)
    x = centres[labels] + rng.normal(scale=0.1, size=(30, 8))
    cal = calibrate_embeddings({"set": (x, labels)}, "euclidean")
    assert cal.eer == 0.0 and cal.tar_at_far["0.001"] == 1.0
    assert verify_embeddings(x[0], x[1], cal).same and not verify_embeddings(x[0], x[7], cal).same
    verdict = verify_embeddings(x[0], x[7], None, threshold=1e9, distance="euclidean")
    assert verdict.same and verdict.distance == pytest.approx(np.linalg.norm(x[0] - x[7]))
    with pytest.raises(RetrievalAppError):
        verify_embeddings(x[0], x[1], None)


def _brute_open_set(vectors, labels, known_ids, distance):
    known_rows = [i for i in range(len(labels)) if labels[i] in known_ids]
    matrix = distance_matrix(vectors, vectors, distance)
    kd, kc, ud = [], [], []
    for i in range(len(labels)):
        others = [j for j in known_rows if j != i]
        j = min(others, key=lambda j: matrix[i, j])
        if labels[i] in known_ids:
            kd.append(matrix[i, j])
            kc.append(labels[j] == labels[i])
        else:
            ud.append(matrix[i, j])
    return np.array(kd), np.array(kc), np.array(ud)


def test_open_set_scores_and_dir_equal_brute_force():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 8, 60)
    vectors = rng.normal(size=(8, 6))[labels] + rng.normal(scale=0.8, size=(60, 6))
    scores = open_set_scores(vectors, labels, "euclidean", unknown_identities=[1, 4, 6])
    kd, kc, ud = _brute_open_set(vectors, labels, {0, 2, 3, 5, 7}, "euclidean")
    assert np.sort(kd) == pytest.approx(np.sort(scores.known_distance)) and len(kd) == len(scores.known_distance)
    assert np.sort(ud) == pytest.approx(np.sort(scores.unknown_distance))
    assert kc.sum() == scores.known_correct.sum()
    seeded = open_set_scores(vectors, labels, "euclidean", unknown_fraction=0.5, seed=1)
    assert len(seeded.known_distance) + len(seeded.unknown_distance) == 60 and 0 < len(seeded.unknown_distance) < 60
    for far in (0.0, 0.05, 0.1, 0.3):
        dir_, t = dir_at_far(scores, far)
        # Brute force: over every threshold, the best DIR whose false-alarm rate ≤ far.
        best = max(np.mean(kc & (kd <= c)) for c in [-np.inf, *np.sort(np.concatenate([kd, ud]))] if np.mean(ud <= c) <= far + 1e-12)
        assert dir_ == pytest.approx(best)
        assert rates_at(scores, t)[1] <= far + 1e-12
    report = open_set_report(scores, threshold=1.0)
    assert report.rank1 == pytest.approx(kc.mean()) and report.n_unknown == len(ud)
    assert (report.dir_at_threshold, report.far_at_threshold) == pytest.approx((np.mean(kc & (kd <= 1.0)), np.mean(ud <= 1.0)))


def test_identify_names_the_nearest_identity_or_unknown():
    gallery = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    classes = ["ann", "bob", "cy"]
    found = identify(np.array([[0.5, 0.0], [9.0, 0.5], [5.0, 5.0]]), gallery, classes, threshold=2.0, distance="euclidean")
    assert [f.identity for f in found] == ["ann", "bob", UNKNOWN]
    assert found[2].nearest_label in classes and found[2].nearest_distance == pytest.approx(np.sqrt(50))
    assert identify(np.array([[5.0, 5.0]]), gallery, classes, threshold=60.0, distance="squared_euclidean")[0].known


def test_dir_needs_both_kinds_of_probe():
    with pytest.raises(RetrievalAppError):
        dir_at_far(OpenSetScores(np.zeros(3), np.ones(3, bool), np.zeros(0)), 0.01)


def test_facenet_preset_fills_defaults_and_keeps_changed_settings():
    from retrieval_app import choices
    from retrieval_app.cli import build_parser
    from retrieval_app.training import TrainConfig
    from retrieval_app.training.presets import PRESETS

    assert tuple(PRESETS) == choices.PRESETS
    config = TrainConfig(folder="f", out_dir="o", preset="facenet").validate()
    assert (config.head, config.dim, config.normalize, config.distance, config.margin, config.reduction, config.mining) == \
        ("linear", 128, True, "squared_euclidean", 0.2, "sum", "semi_hard")
    mine = TrainConfig(folder="f", out_dir="o", preset="facenet", margin=0.5, mining="batch_hard")
    assert (mine.margin, mine.mining, mine.distance) == (0.5, "batch_hard", "squared_euclidean")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RetrievalAppError, match="unknown preset"):
        TrainConfig(folder="f", out_dir="o", preset="vggface")
    args = build_parser().parse_args(["train", "f", "--preset", "facenet", "--margin", "0.3"])
    assert args.preset == "facenet" and args.margin == 0.3
