"""The class gate: what the embedding adds for images that look like the user's classes.

A fine-tuned head that specialises in the user's classes wins on new images of those
classes and loses on classes it never saw; blending it toward the backbone trades one for
the other for *every* image alike. The gate decides per image instead. The embedding of
an image x with backbone features f is

    [ base(x) / |base(x)|  |  weight · s(x) · p(x) ]       (then L2-normalised)

- base: the head at its kept blend (the identity head at blend 0 is the bare backbone);
- p(x): which of the user's classes x looks like - the softmax of a linear classifier
  (a "linear probe", cross-entropy on the backbone's L2-normalised features), sharpened
  (temperature ½) and used as it is: near a unit vector where the probe is sure, shorter
  where it hesitates between classes. Two images the probe puts in the same class get a
  large inner product; an unsure image adds less. (As a unit vector, every unsure image
  got the same length of class part: caltech101_dev and Fashion-MNIST, same folds and
  settings, closed splits 0.0006 and 0.0055 MAP@R lower, open splits within 0.0003.) A probe
  on frozen pretrained features classifies new images of the trained classes better than
  class means in a triplet-trained head's space (caltech101_dev, half the images of
  each class: 95 % correct, 0.56 s to fit on one thread; see the README);
- s(x) in [0, 1]: how familiar x looks - a sigmoid of its backbone features' similarity
  to the user's training images (familiarity.py: to the nearest class mean, or to the
  5th nearest training image), around a threshold. An image of a class the user never
  trained on scores low, gets s ≈ 0 and so keeps (up to one scale shared by all such
  images) the distances its base embedding had.

`weight`, `threshold`, `softness` and the kind of familiarity are chosen on class folds
(training/gate_selection.py): among the settings that make no fold's held-out classes
worse than the bare backbone, the best over both of the folds' held-out sets. The gate
reads backbone features only, never the head, so queries never touch the head's `blend`
(the app answers several at once)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .familiarity import DEFAULT_FAMILIARITY, FAMILIARITY_KINDS, familiarity, fit_references

# The probe sees unit features times this: unit vectors alone make logits too small for
# a few hundred steps of Adam to separate a hundred classes.
PROBE_INPUT_SCALE = 10.0
PROBE_STEPS = 100  # Adam steps (full-batch up to PROBE_BATCH images); accuracy on held-out images flat from 100 to 600
PROBE_LR = 0.01
PROBE_WEIGHT_DECAY = 1e-4
PROBE_BATCH = 4096  # larger folders: a random batch of this many images per step
PROBE_TEMPERATURE = 0.5  # the class part's softmax: sharper than the probe was trained with
# What a checkpoint's config records; a gate of another kind (the first version took its
# class part from a copy of the head, the second used the probe's softmax as a unit
# vector, with settings chosen for that) cannot be loaded into this one.
GATE_KIND = "linear probe, sharpened softmax"


class ClassGate(nn.Module):
    """See the module docstring. Build it with `fit_class_gate`, or empty (to load a
    checkpoint into) with `ClassGate(feature_dim, n_classes)`."""

    def __init__(self, feature_dim: int, n_classes: int, n_references: int | None = None) -> None:
        super().__init__()
        if n_classes < 2:
            raise ModelError(f"a class gate needs at least 2 classes, got {n_classes}")
        self.probe = nn.Linear(feature_dim, n_classes)
        # familiarity.py: unit rows in backbone space (default: one per class, the class means)
        self.register_buffer("references", torch.zeros(n_references or n_classes, feature_dim))
        self.register_buffer("reference_rank", torch.ones((), dtype=torch.long))
        self.register_buffer("weight", torch.zeros(()))
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("softness", torch.ones(()))

    @property
    def n_classes(self) -> int:
        return self.probe.out_features

    def familiarity(self, features: torch.Tensor) -> torch.Tensor:
        return familiarity(features, self.references, int(self.reference_rank))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Models saved before the familiarity kinds kept their class means under another
        # name and had no rank (1): the same familiarity, so they load unchanged.
        old = prefix + "familiar_means"
        if old in state_dict and prefix + "references" not in state_dict:
            state_dict[prefix + "references"] = state_dict.pop(old)
            state_dict.setdefault(prefix + "reference_rank", torch.ones((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.probe(F.normalize(features, dim=1) * PROBE_INPUT_SCALE)

    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, n_classes): the probe's sharpened softmax (rows sum to 1; length ≤ 1)."""
        return torch.softmax(self.class_logits(features) / PROBE_TEMPERATURE, dim=1)

    def forward(self, features: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return gated_embedding(base, self.familiarity(features), self.class_probabilities(features),
                               weight=float(self.weight), threshold=float(self.threshold), softness=float(self.softness))

    def config(self) -> dict:
        return {"n_classes": self.n_classes, "n_references": int(self.references.shape[0]), "kind": GATE_KIND}

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


def empty_class_gate(net, n_classes: int, n_references: int | None = None) -> ClassGate:
    """A gate shaped for `net`'s backbone features (what a checkpoint's weights load into)."""
    return ClassGate(net.spec.feature_dim, int(n_classes), int(n_references) if n_references else None)


def with_class_gate_from_config(net, config: dict):
    """`net` with an empty gate attached when its `config` says it had one."""
    gate = config.get("class_gate")
    if not gate:
        return net
    if gate.get("kind") != GATE_KIND:
        raise ModelError("this model was saved with an earlier version of the class gate, which this version cannot load: train it again")
    return net.attach_class_gate(empty_class_gate(net, gate["n_classes"], gate.get("n_references")))


def fit_class_gate(features: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, familiarity_kind: str = DEFAULT_FAMILIARITY) -> ClassGate:
    """A gate from the training images' backbone `features` and `labels`: reference
    points of `familiarity_kind` (familiarity.py) and the linear probe (class
    probabilities). Its settings start at weight 0 (no effect) until `set_settings`."""
    labels = torch.as_tensor(labels)
    classes, targets = labels.unique(sorted=True, return_inverse=True)
    if len(classes) < 2:
        raise ModelError("a class gate needs images of at least 2 classes")
    features = features.float()
    generator = torch.Generator().manual_seed(seed)
    references = fit_references(familiarity_kind, features, labels, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gate = ClassGate(features.shape[1], len(classes), len(references)).to(features.device)
    gate.references.copy_(references)
    gate.reference_rank.fill_(FAMILIARITY_KINDS[familiarity_kind].rank)
    _train_probe(gate, features, targets, generator)
    gate.eval()
    return gate


def _train_probe(gate: ClassGate, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> None:
    optimizer = torch.optim.Adam(gate.probe.parameters(), lr=PROBE_LR, weight_decay=PROBE_WEIGHT_DECAY)
    with torch.enable_grad():
        for _ in range(PROBE_STEPS):
            rows = torch.randperm(len(features), generator=generator)[:PROBE_BATCH].to(features.device) if len(features) > PROBE_BATCH else slice(None)
            loss = F.cross_entropy(gate.class_logits(features[rows]), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for parameter in gate.probe.parameters():
        parameter.requires_grad_(False)
