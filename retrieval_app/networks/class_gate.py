"""The class gate: what the embedding adds for images that look like the user's classes.

A fine-tuned head that specialises in the user's classes wins on new images of those
classes and loses on classes it never saw; blending it toward the backbone trades one for
the other for *every* image alike. The gate decides per image instead. The embedding of
an image x with backbone features f is

    [ base(x) / |base(x)|  |  weight · s(x) · p(x) ]       (then L2-normalised)

- base: the head at its kept blend (the identity head at blend 0 is the bare backbone);
- p(x): which of the user's classes x looks like - a softmax over the cosine similarity of
  the trained head's output (at blend 1: the `specialist`) to each class's mean, as a unit
  vector. Two images the specialist puts in the same class get a large inner product;
- s(x) in [0, 1]: how familiar x looks - a sigmoid of its backbone features' best cosine
  similarity to a class mean, around a threshold. An image of a class the user never
  trained on scores low, gets s ≈ 0 and so keeps (up to one scale shared by all such
  images) the distances its base embedding had.

`weight`, `threshold` and `softness` are chosen on class folds (training/quick.py): the
best for held-out images of the fold's classes that does not make any fold's held-out
classes worse than the bare backbone. The module holds its own copy of the specialist,
so queries never touch the head's `blend` (the app answers several at once)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .heads import is_blendable, make_head, set_blend

PROBABILITY_TEMPERATURE = 0.05  # softmax over cosine similarities to class means


class ClassGate(nn.Module):
    """See the module docstring. Build it with `fit_class_gate`, or empty (to load a
    checkpoint into) with `ClassGate(specialist, feature_dim, n_classes)`."""

    def __init__(self, specialist: nn.Module, feature_dim: int, specialist_dim: int, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ModelError(f"a class gate needs at least 2 classes, got {n_classes}")
        self.specialist = specialist
        self.register_buffer("familiar_means", torch.zeros(n_classes, feature_dim))  # unit rows, backbone space
        self.register_buffer("prototypes", torch.zeros(n_classes, specialist_dim))  # unit rows, specialist space
        self.register_buffer("weight", torch.zeros(()))
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("softness", torch.ones(()))

    @property
    def n_classes(self) -> int:
        return self.prototypes.shape[0]

    def familiarity(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) best cosine similarity of each image's backbone features to a class mean."""
        return (F.normalize(features, dim=1) @ self.familiar_means.t()).max(dim=1).values

    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, n_classes) unit vectors: the softmax over the specialist's class similarities."""
        similarity = F.normalize(self.specialist(features), dim=1) @ self.prototypes.t()
        return F.normalize(torch.softmax(similarity / PROBABILITY_TEMPERATURE, dim=1), dim=1)

    def forward(self, features: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return gated_embedding(base, self.familiarity(features), self.class_probabilities(features),
                               weight=float(self.weight), threshold=float(self.threshold), softness=float(self.softness))

    def settings(self) -> dict[str, float]:
        return {"weight": float(self.weight), "threshold": float(self.threshold), "softness": float(self.softness)}

    @torch.no_grad()
    def set_settings(self, *, weight: float, threshold: float, softness: float) -> None:
        if weight < 0 or softness <= 0:
            raise ModelError(f"class gate needs weight ≥ 0 and softness > 0, got {weight}, {softness}")
        self.weight.fill_(float(weight))
        self.threshold.fill_(float(threshold))
        self.softness.fill_(float(softness))


def gated_embedding(base: torch.Tensor, familiarity: torch.Tensor, probabilities: torch.Tensor, *,
                    weight: float, threshold: float, softness: float) -> torch.Tensor:
    """[base/|base| | weight · sigmoid((familiarity − threshold)/softness) · probabilities];
    a threshold far below −1 opens the gate for every image."""
    openness = torch.sigmoid((familiarity - threshold) / softness).unsqueeze(1)
    return torch.cat([F.normalize(base, dim=1), (weight * openness) * probabilities], dim=1)


def empty_class_gate(net, n_classes: int) -> ClassGate:
    """A gate shaped for `net`'s head (what a checkpoint's weights load into)."""
    if net.head is None:
        raise ModelError("a class gate needs a head")
    specialist = make_head(net.head_kind, net.spec.feature_dim, net.dim)
    return ClassGate(specialist, net.spec.feature_dim, net.dim, int(n_classes))


def with_class_gate_from_config(net, config: dict):
    """`net` with an empty gate attached when its `config` says it had one."""
    gate = config.get("class_gate")
    return net.attach_class_gate(empty_class_gate(net, gate["n_classes"])) if gate else net


@torch.no_grad()
def fit_class_gate(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> ClassGate:
    """A gate for `head` (trained; copied and used at blend 1) from the training images'
    backbone `features` and `labels`: class means in both spaces. Its settings start at
    weight 0 (no effect) until `set_settings`."""
    labels = torch.as_tensor(labels)
    classes = labels.unique(sorted=True)
    if len(classes) < 2:
        raise ModelError("a class gate needs images of at least 2 classes")
    specialist = copy.deepcopy(head).eval()
    if is_blendable(specialist):
        set_blend(specialist, 1.0)
    for parameter in specialist.parameters():
        parameter.requires_grad_(False)
    unit = F.normalize(features.float(), dim=1)
    special = F.normalize(specialist(features.float()), dim=1)
    gate = ClassGate(specialist, features.shape[1], special.shape[1], len(classes))
    one_hot = (labels.unsqueeze(1) == classes.unsqueeze(0)).float()  # (N, C)
    gate.familiar_means.copy_(F.normalize(one_hot.t() @ unit, dim=1))
    gate.prototypes.copy_(F.normalize(one_hot.t() @ special, dim=1))
    return gate
