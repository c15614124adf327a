"""Quick mode without labels: the same head, loss, online mining, dial and guard as
`quick.py`, on augmented views (`views.py`) where each image is its own class.

- **Training rows.** Every image contributes its clean view (the eval transform, what
  the gallery holds) and `views` augmented ones; the label of a row is its image's
  index. Batches are P images × 2 views (`samples_per_class` = 2): the positive of an
  anchor is another view of the same image, the negatives are the batch's other images,
  and batch-hard / semi-hard / batch-all mining work unchanged.
- **Folds of images** instead of classes: in fold i one group of images (dealt by a
  stable hash of their ids) is held out whole. The guard's proxy for "classes it never
  saw" (`val_unseen`) is retrieval of another view among the held-out images' clean and
  augmented views: MAP@R with image identity as the label. "Your classes" (`val_seen`)
  is, without labels, the same retrieval among the trained images' clean view and one
  augmented view kept out of training; when some images are labelled (a labels CSV),
  it is leave-one-out retrieval of those labels among the labelled images' clean views
  (labels never enter training, so all of them can be used).
- **The guard** is quick mode's: a point is kept only if it beats the bare backbone on
  `val_seen` and loses nothing on `val_unseen` in any fold; else the backbone stays."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from ..data.scan import UNLABELLED, ImageRecord
from ..data.split import Split, rank_key
from ..errors import RetrievalAppError
from ..metrics import retrieval_metrics
from .head_loop import HeadLoop
from .quick import FeatureTable, QuickProtocol

MIN_IMAGES = 8  # fewer cannot give a fold both held-out images and batches of others
MIN_HELD_OUT = 2  # a held-out group needs two images for a negative among its views
MIN_VIEWS = 3  # two to train on (a positive pair) and one kept out for validation
VIEWS_PER_POSITIVE = 2  # a batch holds two views of each of its images


def view_id(image_id: str, view: int) -> str:
    """Row id of view `view` of an image (0: the clean view); '#' cannot end a path part here."""
    return f"{image_id}#view{view}"


def view_table(records: Sequence[ImageRecord], clean: torch.Tensor, views: torch.Tensor) -> FeatureTable:
    """Rows 0..N-1: the clean views in record order (so row i is image i, as the live map
    expects); then every augmented view. Labels: the image's index."""
    n, n_views, _ = views.shape
    rows = [_view_record(r, i, 0) for i, r in enumerate(records)]
    rows += [_view_record(r, i, v + 1) for v in range(n_views) for i, r in enumerate(records)]
    features = torch.cat([clean, views.transpose(0, 1).reshape(n * n_views, -1).to(clean.device)])
    return FeatureTable(rows, features, torch.as_tensor([r.label for r in rows], dtype=torch.long, device=clean.device))


def _view_record(record: ImageRecord, index: int, view: int) -> ImageRecord:
    return replace(record, id=view_id(record.id, view), label=index, class_name=record.id)


def image_folds(records: Sequence[ImageRecord], n_views: int, n_folds: int, *, val_fraction: float, seed: int) -> list[Split]:
    """Folds of images: see the module docstring. `records` are the images (with their
    labels, if any); the Splits hold view records."""
    ranked = sorted(range(len(records)), key=lambda i: (rank_key(seed, "fold-image", records[i].id), records[i].id))
    if n_folds >= 2:
        groups = [set(ranked[g::n_folds]) for g in range(n_folds)]
    else:  # one fold: a fraction of the images held out
        groups = [set(ranked[: max(MIN_HELD_OUT, round(val_fraction * len(ranked)))])]
    labelled = _labelled_seen(records)
    folds = []
    for held_out in groups:
        trained = [i for i in range(len(records)) if i not in held_out]
        if len(held_out) < MIN_HELD_OUT or len(trained) < MIN_HELD_OUT * 2:
            continue
        train = [_view_record(records[i], i, v) for i in trained for v in range(1, n_views)]  # the last view stays out
        if labelled:
            seen = labelled
        else:
            seen = [_view_record(records[i], i, v) for i in trained for v in (0, n_views)]
        unseen = [_view_record(records[i], i, v) for i in sorted(held_out) for v in range(n_views + 1)]
        folds.append(Split(train, seen, unseen))
    return folds


def _labelled_seen(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """Clean views of the labelled images, labelled by class, when at least two classes
    have two images (else retrieval of a label says nothing and the proxy is used)."""
    counts: dict[int, int] = {}
    for record in records:
        if record.label != UNLABELLED:
            counts[record.label] = counts.get(record.label, 0) + 1
    if sum(1 for n in counts.values() if n >= 2) < 2:
        return []
    return [replace(r, id=view_id(r.id, 0)) for r in records if r.label != UNLABELLED]


class ViewProtocol(QuickProtocol):
    """`QuickProtocol` over a `view_table`, validated on image folds (module docstring)."""

    def __init__(self, config, make_net, table: FeatureTable, *, images: Sequence[ImageRecord], **kwargs) -> None:
        if config.views < MIN_VIEWS:
            raise RetrievalAppError(f"training without labels needs at least {MIN_VIEWS} augmented views per image (one is kept out for validation)")
        super().__init__(replace(config, samples_per_class=VIEWS_PER_POSITIVE), make_net, table, **kwargs)
        self.images = list(images)
        self.uses_labels = bool(_labelled_seen(self.images))

    def _phase(self, text: str) -> None:
        # The base class counts rows and classes; here rows are views and classes images.
        if text.startswith("fold "):
            text = text.replace(" images", " views").replace(" held-out classes", " held-out images")
        super()._phase(text)

    def _gate_possible(self) -> bool:
        # The class gate's "classes" would be single images here (their views share a
        # label): a probability over every image of the folder says nothing about others.
        return False

    def _folds(self) -> list[Split]:
        return image_folds(self.images, self.config.views, self.config.folds, val_fraction=self.config.resolved_val_fraction(), seed=self.config.seed)

    def _metrics(self, embeddings: torch.Tensor, records: Sequence[ImageRecord]) -> dict[str, float] | None:
        # The records' own labels: image identity for views, the class for labelled images.
        labels = torch.as_tensor([r.label for r in records if r.id in self.table.row_of], dtype=torch.long)
        if len(labels) < 2:
            return None
        metrics = retrieval_metrics(embeddings, labels, distance=self.metric_distance)
        if not metrics.get("n_queries"):
            return None
        return {"map_at_r": float(metrics["map_at_r"]), "precision_at_1": float(metrics["precision_at_1"])}

    def _refit(self, steps: int) -> torch.nn.Module:
        self._phase(f"refitting on all {len(self.images)} images ({len(self.table.records)} views) for {steps} steps")
        net = self.current_net = self.make_net()
        loop = HeadLoop(net, self.table.features, self.table.labels, self.config, lr=self.lr, seed=self.config.seed, cancel=self.cancel)
        if self.clock is not None and self.clock.total_steps is not None:
            self.clock.total_steps = self.clock.steps + steps
        loop.run(steps=steps, on_progress=self._progress("refit"))
        mining = loop.monitor.window()
        self.history.append({"phase": "refit", "step": loop.steps, **({"mining": mining} if mining is not None else {})})
        net.eval()
        return net


def describe_sets(uses_labels: bool) -> tuple[str, str]:
    """What the dial's two estimates mean without class folders: (seen, unseen)."""
    seen = "retrieval of your labels" if uses_labels else "finding another view of a trained image"
    return seen, "finding another view of an image it never saw"
