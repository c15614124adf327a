"""The live map's frames: a fixed subsample of a run's images laid out in 2-D at moments
of its training, as they travel in events and as they are saved beside a checkpoint.

In an event (`TrainEvent.data["live_map"]`) a frame is a `MapFrame`; every frame of a
run shares one `MapPoints` (the subsample's ids, labels and classes). A run's frames are
saved as `frames.npz` in its checkpoint folder (plain arrays, no pickles), for
`retrieval-app map --animate` and for anything else that wants to replay them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_numpy_save
from ..errors import RetrievalAppError

FRAMES_FILE = "frames.npz"
FRAMES_FORMAT = 1


@dataclass(frozen=True)
class MapPoints:
    """The subsample every frame of a run shows, in the same order."""

    ids: tuple[str, ...]
    labels: np.ndarray  # (n,) int64, indices into `classes`
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class MapFrame:
    index: int  # 0, 1, … in the run
    stage: str  # "start", "fold 1", "refit", "epoch 3", "end"
    step: int  # optimizer steps of that stage (full mode: of the run)
    elapsed_s: float  # seconds since the training data was ready
    coords: np.ndarray  # (n, 2) float32, aligned with the previous frame
    points: MapPoints

    @property
    def label(self) -> str:
        return f"{self.stage} · step {self.step:,}" if self.stage not in ("start", "end") else self.stage


def save_frames(folder: str | Path, frames: Sequence[MapFrame]) -> Path:
    """`folder/frames.npz`, written atomically."""
    if not frames:
        raise ValueError("no frames to save")
    points = frames[0].points
    return atomic_numpy_save(
        Path(folder) / FRAMES_FILE,
        format=np.asarray(FRAMES_FORMAT), coords=np.stack([f.coords for f in frames]).astype(np.float32),
        stages=np.asarray([f.stage for f in frames], dtype=str), steps=np.asarray([f.step for f in frames], dtype=np.int64),
        elapsed_s=np.asarray([f.elapsed_s for f in frames], dtype=np.float64),
        ids=np.asarray(points.ids, dtype=str), labels=points.labels.astype(np.int64), classes=np.asarray(points.classes, dtype=str),
    )


def frames_path(spec: str | Path) -> Path:
    """`spec`'s frames file: a checkpoint folder, its `model.pt`, or the file itself."""
    path = Path(spec)
    if path.suffix == ".npz":
        return path
    return (path.parent if path.is_file() else path) / FRAMES_FILE


def load_frames(spec: str | Path) -> list[MapFrame]:
    """The frames saved with a training run (see `frames_path`); a clear error when there
    are none (a run from before live maps, one trained with them off, or a bare backbone)."""
    path = frames_path(spec)
    if not path.is_file():
        raise RetrievalAppError(f"no live map frames in {path.parent}: train with the live map on (the default) to record them")
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != FRAMES_FORMAT:
                raise RetrievalAppError(f"{path}: frames of an unknown format {int(data['format'])}")
            points = MapPoints(tuple(data["ids"].tolist()), data["labels"].astype(np.int64), tuple(data["classes"].tolist()))
            coords, stages, steps, elapsed = data["coords"], data["stages"].tolist(), data["steps"].tolist(), data["elapsed_s"].tolist()
    except RetrievalAppError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise RetrievalAppError(f"{path}: not a readable frames file ({exc})") from None
    if coords.ndim != 3 or coords.shape[1:] != (len(points), 2):
        raise RetrievalAppError(f"{path}: frames of shape {coords.shape} for {len(points)} points")
    return [MapFrame(i, stage, int(step), float(t), coords[i], points) for i, (stage, step, t) in enumerate(zip(stages, steps, elapsed))]
