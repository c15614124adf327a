"""The class gate (networks/class_gate.py) and how its settings are chosen on class folds
(training/gate_selection.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval_app.errors import RetrievalAppError
from retrieval_app.metrics import retrieval_metrics
from retrieval_app.networks import create_model
from retrieval_app.networks.class_gate import fit_class_gate, gated_embedding
from retrieval_app.networks.familiarity import FAMILIARITY_KINDS, balanced_images, familiarity, fit_references
from retrieval_app.networks.heads import init_from_features
from retrieval_app.training.checkpoint import load_embedder, save_model
from retrieval_app.training.gate_selection import OPEN_THRESHOLD, FoldGateParts, choose_gate

FEATURE_DIM = 1280


def clustered(classes: int, per_class: int, seed: int, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.randn(classes, FEATURE_DIM, generator=generator)
    return (centres[labels] + spread * torch.randn(len(labels), FEATURE_DIM, generator=generator)).abs(), labels


def map_at_r(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    return float(retrieval_metrics(embeddings, labels)["map_at_r"])


def identity_net(features: torch.Tensor):
    torch.manual_seed(0)
    net = create_model("efficientnet_lite0", head="identity")
    init_from_features(net.head, features)
    return net.eval()


# ------------------------------------------------------------------ the module
def test_a_closed_gate_keeps_the_base_distances_and_an_open_one_adds_the_class_part():
    features, labels = clustered(4, 10, seed=0)
    gate = fit_class_gate(features, labels)
    assert gate.n_classes == 4
    assert gate.references.shape == (4, FEATURE_DIM) and int(gate.reference_rank) == 1  # by default the class means
    assert torch.allclose(gate.references.norm(dim=1), torch.ones(4), atol=1e-5)
    probabilities = gate.class_probabilities(features)
    assert (probabilities.argmax(1) == labels).float().mean() > 0.9  # the training classes are recognised
    base = features * 3.0

    closed = gated_embedding(base, gate.familiarity(features), probabilities, weight=2.0, threshold=5.0, softness=0.01)
    assert closed.shape == (40, FEATURE_DIM + 4)
    assert torch.allclose(closed[:, :FEATURE_DIM], F.normalize(base, dim=1))
    assert closed[:, FEATURE_DIM:].abs().max() < 1e-6  # nothing added: the base's distances

    opened = gated_embedding(base, gate.familiarity(features), probabilities, weight=2.0, threshold=OPEN_THRESHOLD, softness=0.01)
    assert torch.allclose(opened[:, FEATURE_DIM:], 2.0 * probabilities, atol=1e-6)


def test_an_image_the_probe_is_unsure_of_adds_a_shorter_class_part():
    features, labels = clustered(3, 20, seed=5)
    gate = fit_class_gate(features, labels)
    means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    sure = gate.class_probabilities(means[:1]).norm()
    between = gate.class_probabilities((means[:1] + means[1:2]) / 2).norm()
    assert sure > 0.95 and between < sure - 0.15


def test_the_probe_recognises_new_images_of_the_trained_classes():
    features, labels = clustered(5, 40, seed=3, spread=2.0)
    train = torch.arange(len(labels)) % 2 == 0
    gate = fit_class_gate(features[train], labels[train], seed=1)
    assert not any(p.requires_grad for p in gate.parameters())  # fitted, then frozen
    held_out = gate.class_probabilities(features[~train])
    assert torch.allclose(held_out.sum(dim=1), torch.ones(int((~train).sum())), atol=1e-5)
    accuracy = (held_out.argmax(1) == labels[~train]).float().mean()
    assert accuracy > 0.9
    # the same seed, the same probe: a refit is reproducible
    again = fit_class_gate(features[train], labels[train], seed=1)
    assert torch.equal(again.probe.weight, gate.probe.weight)


def test_unfamiliar_images_get_a_smaller_class_part_than_familiar_ones():
    features, labels = clustered(6, 10, seed=1, spread=0.5)
    seen = labels < 3
    gate = fit_class_gate(features[seen], labels[seen])
    familiarity = gate.familiarity(features)
    assert familiarity[seen].min() > familiarity[~seen].max()  # classes it never saw look unfamiliar
    threshold = float((familiarity[seen].min() + familiarity[~seen].max()) / 2)
    gate.set_settings(weight=1.0, threshold=threshold, softness=0.01)
    part = gate(features, features)[:, FEATURE_DIM:].norm(dim=1)
    assert part[seen].min() > 0.99 and part[~seen].max() < 0.01


def test_a_gated_model_keeps_its_gate_through_a_head_only_checkpoint(tmp_path):
    features, labels = clustered(5, 8, seed=2)
    net = identity_net(features)
    net.head.delta.data.normal_(0, 0.05)  # a trained head, not the start
    gate = fit_class_gate(features, labels)
    gate.set_settings(weight=0.5, threshold=0.3, softness=0.02)
    net.attach_class_gate(gate)
    assert net.embedding_dim == FEATURE_DIM + 5
    save_model(tmp_path / "model.pt", net, classes=list("abcde"), train_config={}, metrics={}, epoch=1, head_only=True)

    loaded = load_embedder(tmp_path / "model.pt")
    assert loaded.class_gate is not None and loaded.embedding_dim == FEATURE_DIM + 5
    assert loaded.class_gate.settings() == pytest.approx(gate.settings())
    with torch.no_grad():
        assert torch.allclose(loaded.embed_features(features), net.embed_features(features), atol=1e-5)
        images = torch.rand(2, 3, 224, 224)
        assert loaded(images).shape == (2, FEATURE_DIM + 5)


def two_looks_per_class(classes: int, per_look: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classes whose images fall into two far-apart looks (a car from the side and from the
    front); returns features, labels and each image's look centre."""
    generator = torch.Generator().manual_seed(seed)
    looks = torch.randn(classes, 2, FEATURE_DIM, generator=generator)
    labels = torch.arange(classes).repeat_interleave(2 * per_look)
    which = torch.arange(2).repeat_interleave(per_look).repeat(classes)
    centres = looks[labels, which]
    return centres + 0.3 * torch.randn(len(labels), FEATURE_DIM, generator=generator), labels, centres


def test_nearest_images_find_each_look_of_a_class_where_the_mean_lies_between_them():
    features, labels, centres = two_looks_per_class(3, 10, seed=6)
    means, images = fit_references("class means", features, labels), fit_references("nearest images", features, labels)
    assert means.shape == (3, FEATURE_DIM) and images.shape == (60, FEATURE_DIM)
    assert torch.allclose(images.norm(dim=1), torch.ones(60), atol=1e-5)
    assert (F.normalize(centres, dim=1) @ means.t()).max(dim=1).values.max() < 0.8  # the mean is near neither look
    new_images = centres + 0.3 * torch.randn(centres.shape, generator=torch.Generator().manual_seed(7))
    rank = FAMILIARITY_KINDS["nearest images"].rank
    assert rank > 1  # one odd training image does not make its surroundings familiar
    near_images = familiarity(new_images, images, rank)
    assert (near_images > familiarity(new_images, means, 1) + 0.1).all()
    # the rank-th most similar, not the most similar: below the best match, above the worst
    similarity = F.normalize(new_images, dim=1) @ images.t()
    assert (near_images < similarity.max(dim=1).values).all() and (near_images > similarity.min(dim=1).values).all()
    assert torch.allclose(familiarity(new_images, images[:3], rank), similarity[:, :3].min(dim=1).values, atol=1e-6)  # fewer points than the rank


def test_a_large_folder_keeps_a_balanced_sample_of_reference_images():
    labels = torch.cat([torch.zeros(50, dtype=torch.long), torch.ones(5, dtype=torch.long), torch.full((45,), 2)])
    unit = F.normalize(torch.randn(100, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    kept = balanced_images(unit, labels, seed=1, limit=35)
    assert kept.shape == (35, 16)
    rows = [int(torch.nonzero((unit == row).all(dim=1))[0]) for row in kept]
    assert len(set(rows)) == 35 and rows == sorted(rows)  # distinct images, in folder order
    counts = torch.bincount(labels[rows], minlength=3).tolist()
    assert counts == [15, 5, 15]  # the small class keeps all its images, the others share the rest
    assert torch.equal(balanced_images(unit, labels, seed=1, limit=35), kept)  # seeded
    assert not torch.equal(balanced_images(unit, labels, seed=2, limit=35), kept)
    assert balanced_images(unit, labels, seed=1, limit=100) is unit


def test_a_gate_with_reference_images_survives_a_checkpoint_and_an_old_one_still_loads(tmp_path):
    features, labels, _ = two_looks_per_class(3, 6, seed=9)
    net = identity_net(features)
    gate = fit_class_gate(features, labels, familiarity_kind="nearest images")
    assert gate.references.shape == (36, FEATURE_DIM) and int(gate.reference_rank) == FAMILIARITY_KINDS["nearest images"].rank
    gate.set_settings(weight=0.7, threshold=0.5, softness=0.05)
    net.attach_class_gate(gate)
    save_model(tmp_path / "model.pt", net, classes=list("abc"), train_config={}, metrics={}, epoch=1, head_only=True)
    loaded = load_embedder(tmp_path / "model.pt")
    assert torch.equal(loaded.class_gate.references, gate.references) and int(loaded.class_gate.reference_rank) == int(gate.reference_rank)
    with torch.no_grad():
        assert torch.allclose(loaded.embed_features(features), net.embed_features(features), atol=1e-5)

    # A model saved before the kinds: its class means stored as `familiar_means`, no rank.
    old_gate = fit_class_gate(features, labels)
    old_gate.set_settings(weight=0.7, threshold=0.5, softness=0.05)
    net.attach_class_gate(old_gate)
    save_model(tmp_path / "old.pt", net, classes=list("abc"), train_config={}, metrics={}, epoch=1, head_only=True)
    payload = torch.load(tmp_path / "old.pt", weights_only=False)
    payload["state_dict"]["class_gate.familiar_means"] = payload["state_dict"].pop("class_gate.references")
    del payload["state_dict"]["class_gate.reference_rank"]
    del payload["config"]["class_gate"]["n_references"]
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_embedder(tmp_path / "old.pt")
    with torch.no_grad():
        assert torch.allclose(loaded.embed_features(features), net.embed_features(features), atol=1e-5)


# ------------------------------------------------------------- choosing settings
def fold_parts(seed: int, *, unseen_familiarity: tuple[float, float], unseen_probabilities_match: bool) -> dict[str, FoldGateParts]:
    """A fold whose base embeddings are noisy class clusters. Seen images get their true
    class as probabilities (the gate helps them); unseen images get a random one of the
    fold's trained classes (the gate misleads them) unless told otherwise."""
    generator = torch.Generator().manual_seed(seed)

    def part(labels: torch.Tensor, familiarity: tuple[float, float], true_classes: bool) -> FoldGateParts:
        centres = torch.randn(int(labels.max()) + 1, 32, generator=generator)
        base = centres[labels] + 1.2 * torch.randn(len(labels), 32, generator=generator)
        low, high = familiarity
        fam = low + (high - low) * torch.rand(len(labels), generator=generator)
        classes = labels % 4 if true_classes else torch.randint(0, 4, (len(labels),), generator=generator)
        return FoldGateParts(base, {"class means": fam}, F.one_hot(classes, 4).float(), labels)

    seen_labels = torch.arange(4).repeat_interleave(8)
    unseen_labels = torch.arange(3).repeat_interleave(8)
    return {"val_seen": part(seen_labels, (0.7, 0.9), True),
            "val_unseen": part(unseen_labels, unseen_familiarity, unseen_probabilities_match)}


def ungated_unseen(fold: dict[str, FoldGateParts]) -> float:
    parts = fold["val_unseen"]
    return map_at_r(F.normalize(parts.base, dim=1), parts.labels)


def test_a_gate_that_leaves_unfamiliar_images_alone_is_kept():
    folds = [fold_parts(seed, unseen_familiarity=(0.1, 0.3), unseen_probabilities_match=False) for seed in range(3)]
    choice = choose_gate(folds, [ungated_unseen(fold) for fold in folds], map_at_r)
    assert choice is not None and choice.weight > 0
    assert choice.seen > choice.seen_without + 0.1
    assert choice.threshold > 0.3  # above every unseen image's familiarity: they keep their distances
    assert choice.unseen_worst_gain >= 0


def test_a_gate_that_misleads_images_of_new_classes_is_refused():
    # Unseen images look as familiar as seen ones, and the gate assigns them wrong classes.
    folds = [fold_parts(seed, unseen_familiarity=(0.7, 0.9), unseen_probabilities_match=False) for seed in range(3)]
    assert choose_gate(folds, [ungated_unseen(fold) for fold in folds], map_at_r) is None


def test_the_gate_is_held_to_the_bare_backbone_on_new_classes():
    """Fails if the guard compares with the ungated model only: here that model already
    trails the bare backbone on new classes, and a gate that keeps it there is refused."""
    folds = [fold_parts(seed, unseen_familiarity=(0.1, 0.3), unseen_probabilities_match=False) for seed in range(3)]
    better_backbone = [ungated_unseen(fold) + 0.05 for fold in folds]
    assert choose_gate(folds, better_backbone, map_at_r) is None
    # and with the backbone at the ungated model's level the same gate is kept
    assert choose_gate(folds, [ungated_unseen(fold) for fold in folds], map_at_r) is not None


def test_a_model_saved_with_another_kind_of_gate_is_refused_with_a_clear_message(tmp_path):
    features, labels = clustered(3, 6, seed=4)
    net = identity_net(features)
    net.attach_class_gate(fit_class_gate(features, labels))
    save_model(tmp_path / "model.pt", net, classes=list("abc"), train_config={}, metrics={}, epoch=1, head_only=True)
    payload = torch.load(tmp_path / "model.pt", weights_only=False)
    assert payload["config"]["class_gate"] == {"n_classes": 3, "n_references": 3, "kind": "linear probe, sharpened softmax"}
    payload["config"]["class_gate"]["kind"] = "linear probe"  # what the second version wrote (the first: no kind)
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(RetrievalAppError, match="earlier version of the class gate"):
        load_embedder(tmp_path / "old.pt")


def test_the_kind_of_familiarity_that_tells_new_classes_apart_is_chosen():
    """Two kinds: with one, unseen images look as familiar as seen ones (the gate would
    mislead them); with the other they do not. Fails if the choice ignores the kind."""
    folds = []
    for seed in range(3):
        separated = fold_parts(seed, unseen_familiarity=(0.1, 0.3), unseen_probabilities_match=False)
        mixed = fold_parts(seed, unseen_familiarity=(0.7, 0.9), unseen_probabilities_match=False)
        folds.append({name: FoldGateParts(parts.base, {"class means": mixed[name].familiarity["class means"], "nearest images": parts.familiarity["class means"]},
                                          parts.probabilities, parts.labels) for name, parts in separated.items()})
    backbone = [ungated_unseen(fold) for fold in folds]
    choice = choose_gate(folds, backbone, map_at_r)
    assert choice is not None and choice.familiarity == "nearest images"
    swapped = [{name: FoldGateParts(p.base, {"class means": p.familiarity["nearest images"], "nearest images": p.familiarity["class means"]}, p.probabilities, p.labels)
                for name, p in fold.items()} for fold in folds]
    assert choose_gate(swapped, backbone, map_at_r).familiarity == "class means"


def test_familiarity_in_blocks_equals_it_at_once(monkeypatch):
    import retrieval_app.networks.familiarity as familiarity_module

    features, labels = clustered(5, 12, seed=11)
    references = fit_references("nearest images", features, labels)
    whole = familiarity(features, references, 5)
    monkeypatch.setattr(familiarity_module, "SIMILARITY_BLOCK", 7 * len(references))  # 7 rows at a time
    assert torch.allclose(familiarity(features, references, 5), whole, atol=1e-6)
    assert familiarity(features[:0], references, 5).shape == (0,)
