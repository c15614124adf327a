"""Everything a training run needs to know, as one serialisable dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import RetrievalAppError

from ..choices import (
    DEFAULT_BACKBONE,
    DEFAULT_DISTANCE,
    DEFAULT_HEAD,
    DEFAULT_MINING,
    DEFAULT_REDUCTION,
    DEFAULT_TRAIN_MODE,
    FOLDER_LAYOUTS,
    HEADS,
    MINING_STRATEGIES,
    REDUCTIONS,
    TRAIN_MODES as MODES,
)
# Backbones without pretrained weights can only be trained end to end.
FROM_SCRATCH_BACKBONES = ("small_cnn",)
# Quick mode: passes over the training images per run (each fold, and the refit).
DEFAULT_EPOCHS = {"quick": 100, "full": 10}
DEFAULT_FOLDS = 3
# With a time budget alone the budget decides; epochs are then effectively unbounded.
EPOCHS_UNDER_BUDGET = 1_000_000


@dataclass
class TrainConfig:
    folder: str
    out_dir: str
    backbone: str = DEFAULT_BACKBONE
    mode: str = DEFAULT_TRAIN_MODE  # quick: frozen backbone, cached features, head only; full: end to end
    dim: int = 128
    normalize: bool = True
    head: str | None = None  # None: identity for pretrained backbones, linear from scratch
    weights: str | None = None  # local backbone weights file (offline ResNets)
    distance: str = DEFAULT_DISTANCE
    margin: float = 0.2
    mining: str = DEFAULT_MINING
    reduction: str = DEFAULT_REDUCTION
    epochs: int | None = None
    time_budget: float | None = None  # seconds
    batch_size: int = 64
    samples_per_class: int = 4  # K of the P×K sampler
    lr: float | None = None  # None: a per-mode default
    weight_decay: float = 0.0
    # full mode: the learning rate decays (half cosine, schedule.py) over a run with a known
    # end (a time budget or a number of epochs); False keeps it constant
    lr_decay: bool = True
    patience: int | None = 8  # epochs without a better validation score before stopping
    val_fraction: float | None = None  # held-out images per class; None: 0.2 (0.1 from scratch)
    unseen_class_fraction: float | None = None  # full mode's held-out classes; None: 0.2 (0 from scratch)
    seed: int = 0
    # full mode: random crops of the training images; None: off from scratch, on for a
    # pretrained backbone (see resolved_augment)
    augment: bool | None = None
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA only
    num_workers: int | None = None
    resume: bool = False
    folds: int = DEFAULT_FOLDS  # quick mode: class folds that choose the training length and blend
    blend: float | None = None  # quick mode: None = the recommended point of the dial; 0..1 = fixed
    # quick mode, identity head: append the class gate (networks/class_gate.py) when the
    # class folds find settings that gain on the user's classes and lose on none of theirs
    class_gate: bool = True
    # quick mode: weight of the term that keeps distances between classes at the backbone's
    # (losses/geometry.py); 0 = off
    keep_geometry: float = 0.0
    layout: str | None = None  # how the folder is read: None = "auto" ("unlabelled" with `labels`); see data/scan.py
    labels: str | None = None  # a labels CSV (id,label), see data/labels_csv.py
    views: int = 4  # without labels: augmented views per image the head trains on (training/unlabelled.py)
    preset: str | None = None  # presets.py: fills the settings above that are left at their defaults

    def __post_init__(self) -> None:
        if self.preset is not None:
            from .presets import preset_settings

            defaults = {f.name: f.default for f in fields(self)}
            for key, value in preset_settings(self.preset, defaults, {f.name: getattr(self, f.name) for f in fields(self)}).items():
                setattr(self, key, value)

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "full" if self.backbone in FROM_SCRATCH_BACKBONES else "quick"

    def resolved_head(self) -> str:
        if self.head is not None:
            return self.head
        return "linear" if self.backbone in FROM_SCRATCH_BACKBONES else DEFAULT_HEAD

    def resolved_val_fraction(self) -> float:
        if self.val_fraction is not None:
            return self.val_fraction
        return 0.1 if self.backbone in FROM_SCRATCH_BACKBONES else 0.2

    def resolved_unseen_class_fraction(self) -> float:
        # Held-out classes protect what a pretrained backbone already does for new
        # classes. From scratch there is no such baseline, and every class held out is
        # one the model never learns (Fashion-MNIST, 30 s: MAP@R 0.535 with 2 of 10
        # classes held out, 0.655 without).
        if self.unseen_class_fraction is not None:
            return self.unseen_class_fraction
        return 0.0 if self.backbone in FROM_SCRATCH_BACKBONES else 0.2

    def resolved_augment(self) -> bool:
        # From scratch on small images (Fashion-MNIST, small_cnn, 30 s) the crop slowed
        # learning more than it regularised: MAP@R 0.653-0.675 with it, 0.693 without;
        # at 90 s both 0.715. Fine-tuning a pretrained backbone on photos keeps it.
        if self.augment is not None:
            return self.augment
        return self.backbone not in FROM_SCRATCH_BACKBONES

    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        if self.time_budget is not None:
            return EPOCHS_UNDER_BUDGET
        return DEFAULT_EPOCHS[self.resolved_mode()]

    def resolved_patience(self) -> int | None:
        # "--time-budget alone": the budget decides when to stop, not early stopping.
        if self.time_budget is not None and self.epochs is None:
            return None
        return self.patience

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        # From scratch learns fast. Fine-tuning a pretrained backbone end to end: 1e-4
        # (the backbone at a tenth of it). Quick mode's identity head: 3e-4 gave the best
        # trade-off on caltech101_dev (the class folds then pick length and blend); heads
        # that start away from the backbone move further, and 1e-3 suits them.
        if self.backbone in FROM_SCRATCH_BACKBONES:
            return 1e-3
        if self.resolved_mode() == "full":
            return 1e-4
        return 3e-4 if self.resolved_head() == "identity" else 1e-3

    def validate(self) -> "TrainConfig":
        from ..losses.distances import get_distance
        from ..networks import list_models  # the registry: users may register more backbones

        problems = []
        if self.backbone not in list_models():
            problems.append(f"unknown backbone '{self.backbone}' (choose from {', '.join(list_models())})")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}")
        if self.mode == "quick" and self.backbone in FROM_SCRATCH_BACKBONES:
            problems.append(f"{self.backbone} has no pretrained weights; quick mode needs a pretrained backbone (use --mode full)")
        if self.mining not in MINING_STRATEGIES:
            problems.append(f"mining must be one of {', '.join(MINING_STRATEGIES)}")
        if self.head is not None and self.head not in HEADS:
            problems.append(f"head must be one of {', '.join(HEADS)}")
        if self.head == "identity" and self.backbone in FROM_SCRATCH_BACKBONES:
            problems.append("the identity head keeps a pretrained backbone's features; a network trained from scratch needs the linear or mlp head")
        if self.blend is not None and not 0.0 <= self.blend <= 1.0:
            problems.append("blend must be between 0 (the backbone) and 1 (the trained head)")
        if self.blend is not None and self.resolved_head() == "mlp" and self.blend != 1.0:
            problems.append("only linear heads (identity, linear) can be blended toward their start")
        if self.layout is not None and self.layout not in FOLDER_LAYOUTS:
            problems.append(f"layout must be one of {', '.join(FOLDER_LAYOUTS)}")
        if self.views < 3:
            problems.append("views must be at least 3 (two augmented views to train on, one kept out for validation)")
        if self.folds < 0:
            problems.append("folds must not be negative")
        if self.keep_geometry < 0:
            problems.append("keep_geometry must not be negative")
        if self.reduction not in REDUCTIONS:
            problems.append(f"reduction must be one of {', '.join(REDUCTIONS)}")
        try:
            get_distance(self.distance)
        except Exception as exc:  # the distance registry words its own message
            problems.append(str(exc))
        for name, value, low in (("dim", self.dim, 1), ("batch_size", self.batch_size, 4), ("samples_per_class", self.samples_per_class, 2)):
            if value < low:
                problems.append(f"{name} must be at least {low}")
        if self.margin < 0:
            problems.append("margin must not be negative")
        if self.epochs is not None and self.epochs < 1:
            problems.append("epochs must be at least 1")
        if self.time_budget is not None and self.time_budget <= 0:
            problems.append("time budget must be a positive number of seconds")
        if self.lr is not None and self.lr <= 0:
            problems.append("learning rate must be positive")
        if not 0 <= self.resolved_val_fraction() < 1 or not 0 <= self.resolved_unseen_class_fraction() < 1:
            problems.append("validation fractions must be in [0, 1)")
        if problems:
            raise RetrievalAppError("; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def name(self) -> str:
        return Path(self.out_dir).name
