"""Verification: "are these two images the same identity?", answered by a distance threshold.

A pair is *genuine* when both images have the same label, an *impostor* pair otherwise;
a pair is accepted when its distance is at most the threshold. Over a set of pairs:
- FAR(t): the share of impostor pairs accepted (false accepts);
- TAR(t): the share of genuine pairs accepted (true accepts); FRR = 1 − TAR;
- the ROC curve: (FAR, TAR) over every threshold;
- the EER: the error rate where FAR and FRR meet, min over t of max(FAR(t), FRR(t));
- TAR at FAR f: the best TAR of a threshold whose FAR is at most f.

The calibrated threshold is the EER threshold. A folder has far more impostor pairs than
genuine ones (n² against n²/classes), and that ratio says nothing about the pairs a user
will check, so a threshold that maximised accuracy over the folder's pairs would mostly
minimise false accepts. The EER point weighs both errors equally whatever the ratio; the
thresholds at FAR 1e-2 and 1e-3 are stored too, and any other point can be read off the
stored ROC (`Calibration.threshold_for_far`, the app's slider).

Distances are computed here with NumPy by the model's training distance, so the
threshold is in the units the loss used (squared Euclidean for the FaceNet preset)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import RetrievalAppError

# The false-accept rates every calibration reports TAR at (FaceNet-style operating points).
REPORTED_FARS = (1e-2, 1e-3)
ROC_POINTS = 256  # points of the ROC kept in a checkpoint (the full curve can be millions)
MAX_SET_IMAGES = 4000  # more images in one set: a seeded sample of them (8M pairs)
VERIFY_DISTANCES = ("euclidean", "squared_euclidean", "cosine", "linf")
_CHUNK = 512


# ------------------------------------------------------------------ distances
def verification_distance(train_distance: str) -> str:
    """The distance pairs are compared by: the training distance when it is a named one,
    else Euclidean (a custom callable cannot be stored in a checkpoint)."""
    return train_distance if train_distance in VERIFY_DISTANCES else "euclidean"


def distance_matrix(x: np.ndarray, y: np.ndarray, distance: str) -> np.ndarray:
    """(N, M) float64 distances between the rows of `x` and of `y`."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if distance == "cosine":
        xu = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        yu = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return np.clip(1.0 - xu @ yu.T, 0.0, 2.0)
    if distance in ("euclidean", "squared_euclidean"):
        squared = np.maximum((x * x).sum(1)[:, None] - 2.0 * (x @ y.T) + (y * y).sum(1)[None, :], 0.0)
        return squared if distance == "squared_euclidean" else np.sqrt(squared)
    if distance == "linf":  # chunked: the broadcast difference is N·M·D
        return np.concatenate([np.abs(x[i:i + _CHUNK, None, :] - y[None, :, :]).max(-1) for i in range(0, len(x), _CHUNK)]) if len(x) else np.zeros((0, len(y)))
    raise RetrievalAppError(f"unknown verification distance '{distance}' (choose from {', '.join(VERIFY_DISTANCES)})")


def pair_distance(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    """The distance between two embeddings (1-D vectors)."""
    return float(distance_matrix(np.atleast_2d(a), np.atleast_2d(b), distance)[0, 0])


def all_pairs(embeddings: np.ndarray, labels: np.ndarray, distance: str, *, max_images: int = MAX_SET_IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(genuine distances, impostor distances) of every unordered pair i < j of one set
    (a seeded sample of `max_images` images when there are more)."""
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if len(labels) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), size=max_images, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    if len(labels) < 2:
        return np.zeros(0), np.zeros(0)
    matrix = distance_matrix(embeddings, embeddings, distance)
    upper = np.triu_indices(len(labels), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    values = matrix[upper]
    return values[same], values[~same]


# ------------------------------------------------------------------ the ROC
@dataclass
class Roc:
    """The ROC of accept-if-distance ≤ threshold. Point i accepts every pair with
    distance ≤ `cut[i]` (an observed distance; `cut[0]` = −inf accepts nothing), and
    `threshold[i]` is the middle of the gap to the next observed distance: the same
    pairs are accepted there, and a new pair is judged away from the edge."""

    threshold: np.ndarray
    far: np.ndarray
    tar: np.ndarray
    cut: np.ndarray


def roc_curve(genuine: np.ndarray, impostor: np.ndarray) -> Roc:
    genuine = np.sort(np.asarray(genuine, dtype=np.float64))
    impostor = np.sort(np.asarray(impostor, dtype=np.float64))
    if len(genuine) == 0 or len(impostor) == 0:
        raise RetrievalAppError("verification needs genuine pairs (two images of one identity) and impostor pairs (two identities)")
    cuts = np.unique(np.concatenate([genuine, impostor]))
    tar = np.searchsorted(genuine, cuts, side="right") / len(genuine)
    far = np.searchsorted(impostor, cuts, side="right") / len(impostor)
    following = np.append(cuts[1:], cuts[-1] + max(cuts[-1] - cuts[0], 1.0) * 1e-3)
    threshold = (cuts + following) / 2.0
    first = cuts[0] - max(cuts[-1] - cuts[0], 1.0) * 1e-3
    return Roc(threshold=np.concatenate([[first], threshold]), far=np.concatenate([[0.0], far]), tar=np.concatenate([[0.0], tar]),
               cut=np.concatenate([[-np.inf], cuts]))


def equal_error_rate(roc: Roc) -> tuple[float, int]:
    """(EER, index of its ROC point): min over thresholds of max(FAR, FRR); among equal
    ones the first (the strictest threshold)."""
    worst = np.maximum(roc.far, 1.0 - roc.tar)
    i = int(np.argmin(worst))
    return float(worst[i]), i


def tar_at_far(roc: Roc, far: float) -> tuple[float, int]:
    """(best TAR with FAR ≤ `far`, index of its ROC point; the largest such threshold)."""
    allowed = np.flatnonzero(roc.far <= far + 1e-12)
    i = int(allowed[np.argmax(roc.tar[allowed])])
    # The largest threshold with that TAR and an allowed FAR: accept as much as allowed.
    same = allowed[roc.tar[allowed] == roc.tar[i]]
    i = int(same.max())
    return float(roc.tar[i]), i


def _thin(roc: Roc, keep: Iterable[int], n: int = ROC_POINTS) -> dict[str, list[float]]:
    """At most `n` ROC points (evenly spread along the curve, plus `keep`) for storage."""
    size = len(roc.far)
    picked = set(np.unique(np.linspace(0, size - 1, min(n, size)).round().astype(int)).tolist()) | set(int(k) for k in keep)
    rows = sorted(picked)
    return {"threshold": [float(roc.threshold[i]) for i in rows], "far": [float(roc.far[i]) for i in rows], "tar": [float(roc.tar[i]) for i in rows]}


# ------------------------------------------------------------------ calibration
def far_key(far: float) -> str:
    return f"{far:g}"


@dataclass
class SetReport:
    """EER and TAR at the reported FARs on one set of pairs."""

    eer: float
    tar_at_far: dict[str, float]
    n_genuine: int
    n_impostor: int


@dataclass
class Calibration:
    """A verification threshold and the evidence for it (what a checkpoint stores)."""

    distance: str
    threshold: float  # the operating point: the EER threshold
    eer: float
    tar_at_far: dict[str, float]  # "0.01" -> TAR
    threshold_at_far: dict[str, float]
    roc: dict[str, list[float]]  # thinned: threshold, far, tar (ascending threshold)
    n_genuine: int
    n_impostor: int
    sets: dict[str, SetReport] = field(default_factory=dict)  # per source of pairs
    source: str = ""  # where the pairs came from, in words
    rule: str = "eer"
    open_set: dict[str, Any] | None = None  # `identification.OpenSetReport.to_dict()`

    def rates_at(self, threshold: float) -> tuple[float, float]:
        """(FAR, TAR) of the stored ROC at `threshold` (the last point at or below it)."""
        thresholds = np.asarray(self.roc["threshold"])
        i = max(int(np.searchsorted(thresholds, threshold, side="right")) - 1, 0)
        return float(self.roc["far"][i]), float(self.roc["tar"][i])

    def threshold_for_far(self, far: float) -> float:
        """The largest stored threshold whose FAR is at most `far`."""
        fars = np.asarray(self.roc["far"])
        allowed = np.flatnonzero(fars <= far + 1e-12)
        return float(self.roc["threshold"][int(allowed.max())])

    def accepts(self, distance: float, threshold: float | None = None) -> bool:
        return float(distance) <= (self.threshold if threshold is None else float(threshold))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        try:
            sets = {name: SetReport(**report) for name, report in (data.get("sets") or {}).items()}
            return cls(**{**data, "sets": sets})
        except TypeError as exc:
            raise RetrievalAppError(f"not a verification calibration ({exc})") from None

    def summary(self) -> str:
        tars = ", ".join(f"TAR {self.tar_at_far[key]:.3f} at FAR {key}" for key in self.tar_at_far)
        return f"threshold {self.threshold:.4f} ({self.distance}; EER point): EER {self.eer:.3f}, {tars} ({self.n_genuine} genuine, {self.n_impostor} impostor pairs)"


def calibrate_pairs(pair_sets: dict[str, tuple[np.ndarray, np.ndarray]], distance: str, *, source: str = "", fars: Sequence[float] = REPORTED_FARS) -> Calibration:
    """A calibration from named sets of (genuine, impostor) distances: each set gets its
    own report, the threshold comes from all of them together."""
    sets = {name: g_i for name, g_i in pair_sets.items() if len(g_i[0]) and len(g_i[1])}
    if not sets:
        raise RetrievalAppError("cannot calibrate verification: no set has both a genuine pair (two images of one identity) and an impostor pair")
    genuine = np.concatenate([g for g, _ in sets.values()])
    impostor = np.concatenate([i for _, i in sets.values()])
    roc = roc_curve(genuine, impostor)
    eer, at = equal_error_rate(roc)
    tars, thresholds, keep = {}, {}, [at]
    for far in fars:
        tar, i = tar_at_far(roc, far)
        tars[far_key(far)], thresholds[far_key(far)] = tar, float(roc.threshold[i])
        keep.append(i)
    return Calibration(
        distance=distance, threshold=float(roc.threshold[at]), eer=eer, tar_at_far=tars, threshold_at_far=thresholds,
        roc=_thin(roc, keep), n_genuine=int(len(genuine)), n_impostor=int(len(impostor)),
        sets={name: set_report(g, i, fars) for name, (g, i) in sets.items()}, source=source,
    )


def set_report(genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float] = REPORTED_FARS) -> SetReport:
    roc = roc_curve(genuine, impostor)
    return SetReport(eer=equal_error_rate(roc)[0], tar_at_far={far_key(f): tar_at_far(roc, f)[0] for f in fars}, n_genuine=int(len(genuine)), n_impostor=int(len(impostor)))


def calibrate_embeddings(sets: dict[str, tuple[np.ndarray, np.ndarray]], distance: str, *, source: str = "", seed: int = 0) -> Calibration:
    """A calibration from named sets of (embeddings, labels): every pair within a set."""
    pairs = {name: all_pairs(emb, labels, distance, seed=seed) for name, (emb, labels) in sets.items()}
    return calibrate_pairs(pairs, distance, source=source)


# ------------------------------------------------------------------ one pair
@dataclass
class PairVerdict:
    distance: float
    threshold: float
    same: bool
    far: float | None  # the calibration's FAR / TAR at this threshold
    tar: float | None
    distance_name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_embeddings(a: np.ndarray, b: np.ndarray, calibration: Calibration | None, *, threshold: float | None = None, distance: str | None = None) -> PairVerdict:
    """The verdict on two embeddings: at `threshold` if given, else the calibration's."""
    if calibration is None and threshold is None:
        raise RetrievalAppError("no verification threshold: this model has no calibration; calibrate it (retrieval-app calibrate FOLDER --model M) or give a threshold")
    name = distance or (calibration.distance if calibration is not None else "euclidean")
    value = pair_distance(a, b, name)
    t = float(threshold) if threshold is not None else calibration.threshold
    far, tar = calibration.rates_at(t) if calibration is not None else (None, None)
    return PairVerdict(distance=value, threshold=t, same=value <= t, far=far, tar=tar, distance_name=name)
