"""Open-set identification: whose image is this, or is it nobody we know?

A query is compared with every gallery image (exactly, by the verification distance);
its identity is the label of its nearest gallery image when that distance is at most the
threshold, and "unknown" otherwise.

The measure (the detection-and-identification rate, as in face recognition benchmarks):
with *known* probes (identities the gallery holds) and *unknown* probes (identities it
does not), at a threshold t
- the false-alarm rate FAR(t) is the share of unknown probes that are accepted (nearest
  distance ≤ t), and
- DIR(t) is the share of known probes whose nearest gallery image has their identity
  *and* lies within t (detected and identified).
DIR at a false-alarm rate f uses the largest t whose FAR is at most f."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .errors import RetrievalAppError
from .verification import distance_matrix, far_key

UNKNOWN = "unknown"
# False-alarm rates the open-set report gives DIR (and a threshold) at. 0.1 too: with a
# few hundred unknown probes, 1e-3 and 1e-2 are the strictest few, and a user who would
# rather name more known people can pick the looser point (`search --far 0.1`).
OPEN_SET_FARS = (1e-3, 1e-2, 1e-1)


@dataclass
class Identification:
    identity: str  # the nearest gallery image's class, or UNKNOWN
    nearest_label: str  # that class even when rejected
    nearest_index: int
    nearest_distance: float
    threshold: float
    distance: str = "euclidean"  # what nearest_distance and threshold measure

    @property
    def known(self) -> bool:
        return self.identity != UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def identify(query_vectors: np.ndarray, gallery_vectors: np.ndarray, gallery_classes: Sequence[str], threshold: float, distance: str) -> list[Identification]:
    """One `Identification` per query row (`gallery_classes[j]`: gallery row j's class name)."""
    gallery_vectors = np.atleast_2d(gallery_vectors)
    if len(gallery_vectors) == 0:
        raise RetrievalAppError("the gallery is empty: nothing to identify against")
    matrix = distance_matrix(np.atleast_2d(query_vectors), gallery_vectors, distance)
    out = []
    for row in matrix:
        j = int(np.argmin(row))
        d = float(row[j])
        label = str(gallery_classes[j])
        out.append(Identification(identity=label if d <= threshold else UNKNOWN, nearest_label=label, nearest_index=j, nearest_distance=d, threshold=float(threshold), distance=distance))
    return out


# ------------------------------------------------------------------ evaluation
@dataclass
class OpenSetScores:
    """Per known probe: its nearest gallery distance and whether that image has its
    identity; per unknown probe: its nearest gallery distance."""

    known_distance: np.ndarray
    known_correct: np.ndarray
    unknown_distance: np.ndarray

    def extend(self, other: "OpenSetScores") -> "OpenSetScores":
        return OpenSetScores(np.concatenate([self.known_distance, other.known_distance]), np.concatenate([self.known_correct, other.known_correct]),
                             np.concatenate([self.unknown_distance, other.unknown_distance]))


def empty_scores() -> OpenSetScores:
    return OpenSetScores(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0))


def rates_at(scores: OpenSetScores, threshold: float) -> tuple[float, float]:
    """(DIR, FAR) at `threshold`."""
    dir_ = float(np.mean(scores.known_correct & (scores.known_distance <= threshold))) if len(scores.known_distance) else 0.0
    far = float(np.mean(scores.unknown_distance <= threshold)) if len(scores.unknown_distance) else 0.0
    return dir_, far


def dir_at_far(scores: OpenSetScores, far: float) -> tuple[float, float]:
    """(DIR, threshold) at the largest threshold whose false-alarm rate is at most `far`.
    The candidates are the unknown probes' distances (the rate changes only there): just
    below the k-th smallest, k − 1 of them are accepted."""
    unknown = np.sort(scores.unknown_distance)
    if len(unknown) == 0 or len(scores.known_distance) == 0:
        raise RetrievalAppError("open-set evaluation needs known and unknown probes")
    allowed = int(np.floor(far * len(unknown) + 1e-9))  # false alarms allowed
    if allowed >= len(unknown):
        threshold = float(np.inf)
    else:
        # Accept everything strictly below the (allowed+1)-th unknown distance.
        threshold = float(np.nextafter(unknown[allowed], -np.inf))
    return rates_at(scores, threshold)[0], threshold


def open_set_scores(vectors: np.ndarray, labels: np.ndarray, distance: str, *, unknown_fraction: float = 0.5, seed: int = 0,
                    unknown_identities: Sequence | None = None) -> OpenSetScores:
    """Deal the identities into known and unknown (a seeded `unknown_fraction` of them,
    or the labels in `unknown_identities`).
    Each image of a known identity is a probe against all other known images (itself
    left out, so its identity is findable only if it has another image); each image of
    an unknown identity is a probe against all known images."""
    vectors, labels = np.asarray(vectors), np.asarray(labels)
    identities = np.unique(labels)
    if len(identities) < 2:
        return empty_scores()
    if unknown_identities is None:
        n_unknown = min(max(1, int(round(unknown_fraction * len(identities)))), len(identities) - 1)
        unknown_identities = np.random.default_rng(seed).choice(identities, size=n_unknown, replace=False)
    unknown_ids = np.asarray(list(unknown_identities))
    is_unknown = np.isin(labels, unknown_ids)
    known_rows, unknown_rows = np.flatnonzero(~is_unknown), np.flatnonzero(is_unknown)
    if len(known_rows) < 2:
        return empty_scores()
    known = distance_matrix(vectors[known_rows], vectors[known_rows], distance)
    np.fill_diagonal(known, np.inf)
    nearest = np.argmin(known, axis=1)
    known_labels = labels[known_rows]
    unknown = distance_matrix(vectors[unknown_rows], vectors[known_rows], distance).min(axis=1) if len(unknown_rows) else np.zeros(0)
    return OpenSetScores(known[np.arange(len(known_rows)), nearest], known_labels[nearest] == known_labels, unknown)


@dataclass
class OpenSetReport:
    dir_at_far: dict[str, float]  # "0.01" -> DIR
    threshold_at_far: dict[str, float]
    dir_at_threshold: float | None  # at the verification threshold, with its FAR
    far_at_threshold: float | None
    rank1: float  # identification rate with no rejection (closed set)
    n_known: int
    n_unknown: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"DIR {self.dir_at_far[k]:.3f} at false-alarm rate {k}" for k in self.dir_at_far]
        if self.dir_at_threshold is not None:
            parts.append(f"at the verification threshold DIR {self.dir_at_threshold:.3f} with false-alarm rate {self.far_at_threshold:.3f}")
        return f"open-set identification ({self.n_known} known, {self.n_unknown} unknown probes): rank-1 {self.rank1:.3f}; " + "; ".join(parts)


def open_set_report(scores: OpenSetScores, *, threshold: float | None = None, fars: Sequence[float] = OPEN_SET_FARS) -> OpenSetReport:
    dirs, thresholds = {}, {}
    for far in fars:
        dirs[far_key(far)], thresholds[far_key(far)] = dir_at_far(scores, far)
    at = rates_at(scores, threshold) if threshold is not None else (None, None)
    return OpenSetReport(
        dir_at_far=dirs, threshold_at_far={k: (v if np.isfinite(v) else None) for k, v in thresholds.items()}, dir_at_threshold=at[0], far_at_threshold=at[1],
        rank1=float(np.mean(scores.known_correct)), n_known=int(len(scores.known_distance)), n_unknown=int(len(scores.unknown_distance)),
    )
