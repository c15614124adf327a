"""Miners: which (anchor, positive, negative) index triplets a batch trains on.

As in pytorch-metric-learning, a miner looks at a batch of embeddings and labels and,
optionally, a *reference set* (``ref_emb``, ``ref_labels``) to mine against: anchors are
rows of the batch, positives and negatives rows of the reference set (the batch itself
when none is given; then an item is never its own positive). A reference set lets a
batch mine against a memory bank or, later, against the other devices' batches.

Every strategy starts from the distance matrix D between the batch and the reference
set and the labels:

- batch-all: every valid triplet (label[a] == ref_label[p] != ref_label[n], p ≠ a when
  the batch is its own reference set);
- batch-hard: per anchor, its farthest positive and its closest negative; anchors that
  lack a positive or a negative are skipped;
- semi-hard: the valid triplets whose negative is farther than the positive but within
  the margin, 0 < D[a, n] − D[a, p] ≤ margin (PML's
  ``TripletMarginMiner(type_of_triplets="semihard")``);
- random: offline triplets drawn by the sampler (`data.triplets`), laid out in the batch
  as [anchors | positives | negatives]; the miner reads that layout.

The choice of triplets never needs gradients: miners work on a detached D."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from ..choices import MINING_STRATEGIES
from ..errors import ModelError
from .distances import DistanceLike, get_distance

ONLINE_MINING_STRATEGIES = ("batch_all", "batch_hard", "semi_hard")


class MinedTriplets(NamedTuple):
    """Index triplets, three LongTensors of equal length: anchors index the batch,
    positives and negatives the reference set (the batch itself when there is none)."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor


# ------------------------------------------------------------------ label masks
def _same_label(labels: torch.Tensor, ref_labels: torch.Tensor | None) -> torch.Tensor:
    ref = labels if ref_labels is None else ref_labels
    return labels.unsqueeze(1) == ref.unsqueeze(0)


def positive_pair_mask(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N, M) bool: reference item j is a positive of anchor i (same label; j ≠ i when
    the batch is its own reference set)."""
    same = _same_label(labels, ref_labels)
    if ref_labels is None:
        same &= ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same


def negative_pair_mask(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N, M) bool: reference item k is a negative of anchor i (different label)."""
    return ~_same_label(labels, ref_labels)


def valid_triplet_mask(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N, M, M) bool: mask[i, j, k] iff j is a positive and k a negative of anchor i
    (without a reference set: i, j, k distinct and labels[i] == labels[j] != labels[k])."""
    return positive_pair_mask(labels, ref_labels).unsqueeze(2) & negative_pair_mask(labels, ref_labels).unsqueeze(1)


# ------------------------------------------------------------------ strategies
def mine_batch_all(distances: torch.Tensor, labels: torch.Tensor, margin: float = 0.0, ref_labels: torch.Tensor | None = None) -> MinedTriplets:
    """Every valid triplet (`distances` and `margin` are not needed; all miners share
    one signature)."""
    return valid_triplets(labels, ref_labels).flat


class TripletGrid(NamedTuple):
    """Every valid triplet of a batch in which all anchors have the same number P of
    positives and Q of negatives, as in a P×K batch: row i of `positives` (N, P) and of
    `negatives` (N, Q) lists anchor i's, ascending. Its triplets are (i, positives[i, j],
    negatives[i, k]) for every i, j, k in that order: the order of `mine_batch_all`'s
    lists. Their distances are then two small gathers from the distance matrix and a
    broadcast, where indexing the matrix with N·P·Q index pairs (and scattering the
    gradient back through them) cost a large share of a head's training step."""

    positives: torch.Tensor
    negatives: torch.Tensor

    def pair_distances(self, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d(a, p) as (N, P, 1) and d(a, n) as (N, 1, Q): broadcast together they give
        every triplet, flattened in the triplets' order."""
        return matrix.gather(1, self.positives).unsqueeze(2), matrix.gather(1, self.negatives).unsqueeze(1)


class ValidTriplets(NamedTuple):
    flat: MinedTriplets
    grid: TripletGrid | None  # None: anchors differ in their numbers of positives or negatives


def valid_triplets(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> ValidTriplets:
    """The batch's valid triplets as index lists, and as a grid where the batch has one."""
    return _valid_triplets_of_pattern(_label_pattern(labels, ref_labels), labels.device)


def _label_pattern(labels: torch.Tensor, ref_labels: torch.Tensor | None) -> tuple:
    """The labels renumbered by first appearance: which items share a label, without
    which labels they are. P×K batches (K of each of P classes, in blocks) all have the
    same pattern, so their valid triplets need to be found only once."""
    codes: dict[int, int] = {}
    batch = tuple(codes.setdefault(label, len(codes)) for label in labels.tolist())
    ref = None if ref_labels is None else tuple(codes.setdefault(label, len(codes)) for label in ref_labels.tolist())
    return batch, ref


@functools.lru_cache(maxsize=16)
def _valid_triplets_of_pattern(pattern: tuple, device: torch.device) -> ValidTriplets:
    # Building the (N, M, M) mask and its nonzero() cost more than the rest of a head's
    # training step; cached per pattern they are free. The tensors are never modified.
    batch, ref = pattern
    labels = torch.tensor(batch, device=device)
    ref_labels = None if ref is None else torch.tensor(ref, device=device)
    anchors, positives, negatives = valid_triplet_mask(labels, ref_labels).nonzero(as_tuple=True)
    return ValidTriplets(MinedTriplets(anchors, positives, negatives), _grid(positive_pair_mask(labels, ref_labels), negative_pair_mask(labels, ref_labels)))


def _grid(positives: torch.Tensor, negatives: torch.Tensor) -> TripletGrid | None:
    """A `TripletGrid` from the (N, M) positive and negative masks, or None when the rows'
    counts differ."""
    n_pos, n_neg = positives.sum(1), negatives.sum(1)
    if len(n_pos) == 0 or bool((n_pos != n_pos[0]).any()) or bool((n_neg != n_neg[0]).any()):
        return None
    rows = len(positives)
    # nonzero() walks row by row, columns ascending: row i's columns are its i-th block
    return TripletGrid(positives.nonzero()[:, 1].reshape(rows, int(n_pos[0])), negatives.nonzero()[:, 1].reshape(rows, int(n_neg[0])))


def mine_batch_hard(distances: torch.Tensor, labels: torch.Tensor, margin: float = 0.0, ref_labels: torch.Tensor | None = None) -> MinedTriplets:
    """Per anchor: the positive farthest from it and the negative closest to it.

    Non-candidates are set to ∓inf before the max/min, so the anchor itself (distance 0)
    can never be chosen as its own positive, even when a real positive coincides with it."""
    d = distances.detach()
    positives, negatives = positive_pair_mask(labels, ref_labels), negative_pair_mask(labels, ref_labels)
    hardest_positive = torch.where(positives, d, torch.full_like(d, -torch.inf)).argmax(1)
    hardest_negative = torch.where(negatives, d, torch.full_like(d, torch.inf)).argmin(1)
    anchors = (positives.any(1) & negatives.any(1)).nonzero(as_tuple=True)[0]
    return MinedTriplets(anchors, hardest_positive[anchors], hardest_negative[anchors])


def mine_semi_hard(distances: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, ref_labels: torch.Tensor | None = None) -> MinedTriplets:
    """Valid triplets with 0 < D[a, n] − D[a, p] ≤ margin: the negative is already farther
    than the positive, but not yet by the margin."""
    d = distances.detach()
    anchors, positives, negatives = mine_batch_all(d, labels, ref_labels=ref_labels)
    # filtering the valid list beats an (N, M, M) gap tensor: most triplets are invalid
    gap = d[anchors, negatives] - d[anchors, positives]
    keep = (gap > 0) & (gap <= margin)
    return MinedTriplets(anchors[keep], positives[keep], negatives[keep])


def mine_laid_out(distances: torch.Tensor, labels: torch.Tensor, margin: float = 0.0, ref_labels: torch.Tensor | None = None) -> MinedTriplets:
    """The triplets a batch of random offline triplets holds: [anchors | positives |
    negatives], a third each (`data.triplets` draws them)."""
    if ref_labels is not None:
        raise ModelError("random triplets are laid out inside the batch; they take no reference set")
    n = len(labels) // 3
    if 3 * n != len(labels):
        raise ValueError(f"a batch of random triplets holds 3·n items, got {len(labels)}")
    index = torch.arange(n, device=labels.device)
    return MinedTriplets(index, index + n, index + 2 * n)


MineFn = Callable[..., MinedTriplets]  # (distances, labels, margin, ref_labels) -> MinedTriplets
MINERS: dict[str, MineFn] = {
    "batch_all": mine_batch_all,
    "batch_hard": mine_batch_hard,
    "semi_hard": mine_semi_hard,
    "random": mine_laid_out,
}
assert tuple(MINERS) == MINING_STRATEGIES, "choices.MINING_STRATEGIES and losses.miners.MINERS must list the same strategies"


def check_batch(embeddings: torch.Tensor, labels, ref_emb: torch.Tensor | None = None, ref_labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels as tensors on the embeddings' device; shapes checked."""
    labels = torch.as_tensor(labels, device=embeddings.device)
    if embeddings.dim() != 2 or labels.dim() != 1 or len(labels) != len(embeddings):
        raise ValueError(f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
    if (ref_emb is None) != (ref_labels is None):
        raise ValueError("give both ref_emb and ref_labels, or neither")
    if ref_emb is None:
        return labels, None
    ref_labels = torch.as_tensor(ref_labels, device=embeddings.device)
    if ref_emb.dim() != 2 or ref_emb.shape[1] != embeddings.shape[1] or ref_labels.dim() != 1 or len(ref_labels) != len(ref_emb):
        raise ValueError(f"expected ref_emb (M, {embeddings.shape[1]}) and ref_labels (M,), got {tuple(ref_emb.shape)} and {tuple(ref_labels.shape)}")
    return labels, ref_labels


class TripletMiner:
    """A strategy with its margin and distance, called as PML's miners are:
    ``miner(embeddings, labels, ref_emb=None, ref_labels=None) -> MinedTriplets``.

    `mine(distances, labels, ref_labels)` mines from a distance matrix already at hand
    (the loss computes one anyway); `valid(...)` gives the batch's valid triplets, the
    population that mining statistics describe."""

    def __init__(self, strategy: str = "batch_all", margin: float = 0.2, distance: DistanceLike = "euclidean") -> None:
        if strategy not in MINERS:
            raise ModelError(f"unknown mining '{strategy}' (choose from {', '.join(MINERS)})")
        self.strategy = strategy
        self.margin = float(margin)
        self.distance = get_distance(distance)
        self._mine = MINERS[strategy]

    def __call__(self, embeddings: torch.Tensor, labels, ref_emb: torch.Tensor | None = None, ref_labels=None) -> MinedTriplets:
        labels, ref_labels = check_batch(embeddings, labels, ref_emb, ref_labels)
        with torch.no_grad():
            distances = self.distance.pairwise(embeddings.detach(), None if ref_emb is None else ref_emb.detach())
        return self.mine(distances, labels, ref_labels)

    def mine(self, distances: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> MinedTriplets:
        return self._mine(distances.detach(), labels, self.margin, ref_labels)

    def mine_with_grid(self, distances: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> tuple[MinedTriplets, TripletGrid | None]:
        """`mine`, and the same triplets as a `TripletGrid` when they form one (batch-all
        mining of a batch whose anchors all have as many positives and negatives)."""
        if self.strategy == "batch_all":
            return valid_triplets(labels, ref_labels)
        return self.mine(distances, labels, ref_labels), None

    def valid(self, distances: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> MinedTriplets:
        """Every valid triplet of the batch: its laid-out triplets for random mining,
        else batch-all's."""
        if self.strategy == "random":
            return mine_laid_out(distances, labels, ref_labels=ref_labels)
        return mine_batch_all(distances, labels, ref_labels=ref_labels)

    def __repr__(self) -> str:
        return f"TripletMiner({self.strategy!r}, margin={self.margin}, distance={self.distance.name!r})"
