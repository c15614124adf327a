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
    assert torch.allclose(gate.familiar_means.norm(dim=1), torch.ones(4), atol=1e-5)
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
        return FoldGateParts(base, fam, F.one_hot(classes, 4).float(), labels)

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
    assert payload["config"]["class_gate"] == {"n_classes": 3, "kind": "linear probe, sharpened softmax"}
    payload["config"]["class_gate"]["kind"] = "linear probe"  # what the second version wrote (the first: no kind)
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(RetrievalAppError, match="earlier version of the class gate"):
        load_embedder(tmp_path / "old.pt")
