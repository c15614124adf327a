"""The live map: a training callback that, every few seconds, embeds a fixed subsample
of the run's images with the model as it is now, lays it out in 2-D aligned with the
previous frame (`retrieval.aligned_layout`), and sends it as an event
(`TrainEvent.data["live_map"]`, a `MapFrame`). At the end of the run the frames are
saved beside the checkpoint (`frames.npz`, see `map_frames.py`).

What is shown:
- full mode: the whole run, every few seconds, and the network at its end;
- quick mode: the first class fold (its last state always, however short it was) and
  the refit. The first fold trains from the start for the longest stretch (under a
  time budget it sets the length the others repeat); the other folds tell the same
  story again on other classes, and would make the map snap back to the start twice.
  The refit is the model the user gets: it starts from the same head as fold 1 (so its
  first frame is the start frame again, at no cost) and ends with the kept blend applied.

What it costs: a frame runs in the training thread, between two steps, so its cost is
the training's loss. Three limits keep it small: frames come at most every `interval_s`
seconds (time-based, not per step: a quick-mode step takes milliseconds); a frame is
skipped while the time since the previous one is less than its cost ÷ `cost_share`
(5 %: a frame that takes 0.2 s waits 4 s); and the subsample holds at most 2,000 points,
fewer when one frame would take longer than `frame_budget_s` to embed (photos through a
whole network on a CPU). Frames use their own random-number state: training with and
without them takes the same steps. Measured in `bench/bench_live_map.py`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..retrieval.aligned_layout import AlignedPCA
from ..threads import workload_threads
from .callbacks import Callback, RunView
from .events import TrainEvent
from .map_frames import MapFrame, MapPoints, save_frames

DEFAULT_INTERVAL_S = 1.0
MAX_POINTS = 2000
MIN_POINTS = 100  # the subsample never shrinks below this (or the run's images) for speed
COST_SHARE = 0.05
FRAME_BUDGET_S = 1.0  # the subsample is sized so that one frame embeds in about this long
CALIBRATION_ROWS = (16, 80)  # two timed embeddings of this many rows
CALIBRATION_TRIES = 3
MAX_FRAMES = 200  # beyond, every other frame is dropped and the interval doubles
QUICK_STAGES = ("fold 1", "refit")


def stratified_subsample(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most `limit` items with every class in proportion to its
    size (largest remainders), each class at least once while `limit` allows."""
    labels = np.asarray(labels)
    if len(labels) <= limit:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * limit / len(labels)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: limit - quota.sum()]:
        quota[i] += 1
    if limit >= len(classes):  # every class shown: lend one from the largest quotas
        for i in np.flatnonzero(quota == 0):
            quota[np.argmax(quota)] -= 1
            quota[i] = 1
    rng = np.random.default_rng(seed)
    rows = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota) if q > 0]
    return np.sort(np.concatenate(rows))


class LiveMap(Callback):
    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, *, max_points: int = MAX_POINTS, cost_share: float = COST_SHARE,
                 frame_budget_s: float | None = FRAME_BUDGET_S, save: bool = True, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError("the live map's interval must be positive")
        self.interval_s = interval_s
        self.max_points = max_points
        self.cost_share = cost_share
        self.frame_budget_s = frame_budget_s
        self.save = save
        self.seed = seed
        self.clock = clock
        self.run: RunView | None = None
        self.frames: list[MapFrame] = []

    # ------------------------------------------------------------ callbacks
    def on_training_start(self, run: RunView) -> None:
        self.run, self.frames, self.emitted = run, [], 0
        self.interval = self.interval_s
        self.started = self.clock()
        self.stage, self.last_step, self.before_refit, self.refit_from = "start", 0, 0, 0
        labels = run.labels
        self.rows = stratified_subsample(labels, self._points_limit(len(labels)), self.seed)
        self.points = MapPoints(tuple(run.records[i].id for i in self.rows), labels[self.rows], tuple(run.classes))
        self.layout = AlignedPCA(self.seed)
        self.next_due = -np.inf
        self._take("start", 0)

    def on_event(self, event: TrainEvent) -> None:
        if self.run is None:
            return
        if event.kind == "data" and "fold_end" in event.data:
            self._fold_end(event.data["fold_end"])
        if event.kind not in ("step", "epoch"):
            return
        stage, step = self._stage_of(event)
        if stage != "refit":
            self.before_refit = event.step  # quick mode's refit counts its steps from here
        elif self.stage != "refit":  # the refit starts from the start: its first frame is free
            self.refit_from = self.before_refit
            self._emit(self._copy(self.frames[0], "refit", 0))
        if stage is None:
            return
        step -= self.refit_from if stage == "refit" else 0
        self.stage, self.last_step = stage, step
        if self.clock() >= self.next_due:
            self._take(stage, step)

    def on_run_end(self, out_dir: Path) -> None:
        if self.run is None:
            return
        if self.run.mode == "full" or self.stage == "refit":  # the model as the run leaves it
            self._take("end", self.last_step)
        if self.save and self.frames and Path(out_dir).is_dir():
            save_frames(out_dir, self.frames)
        self.run = None

    def _fold_end(self, end: dict) -> None:
        """A shown fold ends (by its length, its budget or a stall): its last state is
        drawn whatever the interval, so even a fold of a second or two shows how it moved
        the points (one frame more a run at most)."""
        stage = f"fold {end['fold']}"
        if stage != self.stage or (self.frames[-1].stage == stage and self.frames[-1].step == end["step"]):
            return
        self.last_step = int(end["step"])
        self._take(stage, self.last_step)

    # -------------------------------------------------------------- frames
    def _stage_of(self, event: TrainEvent) -> tuple[str | None, int]:
        """(stage shown, its step as the event counts it), or (None, 0) for a stage not shown."""
        if self.run.mode == "quick":
            if event.kind == "epoch":  # a fold's measurement
                stage, step = f"fold {event.metrics.get('fold')}", int(event.metrics.get("step", 0))
            else:
                stage, step = str(event.data.get("stage", "")), event.step
            return (stage, step) if stage in QUICK_STAGES else (None, 0)
        if event.epoch < 1:  # the start's validation: the start frame shows it
            return None, 0
        return f"epoch {event.epoch}", event.step

    def _take(self, stage: str, step: int) -> None:
        began = self.clock()
        with torch.random.fork_rng(devices=[]):  # frames never change training's random draws
            embeddings = self.run.embed(self.rows)
        with workload_threads("head"):  # a 2-D layout of ≤ 2,000 points: small products, one thread
            coords = self.layout.place(embeddings)
        ended = self.clock()
        # The next frame waits out the interval, and long enough for this one's cost to be
        # at most `cost_share` of the time between them.
        wait = (ended - began) * (1 - self.cost_share) / self.cost_share
        self.next_due = ended + max(self.interval, wait)
        self._emit(MapFrame(self.emitted, stage, int(step), began - self.started, coords, self.points))

    def _copy(self, frame: MapFrame, stage: str, step: int) -> MapFrame:
        return MapFrame(self.emitted, stage, step, self.clock() - self.started, frame.coords, self.points)

    def _emit(self, frame: MapFrame) -> None:
        self.frames.append(frame)
        self.emitted += 1
        if len(self.frames) > MAX_FRAMES:  # a long run: half as many frames, twice as far apart
            self.frames = self.frames[:-1:2] + [self.frames[-1]]
            self.interval *= 2
        self.run.emit(TrainEvent("data", step=frame.step, data={"live_map": frame}))

    def _points_limit(self, n: int) -> int:
        """At most `max_points`; fewer when one frame of that many would take longer than
        `frame_budget_s` to embed. The cost of a row is timed as the difference between
        embedding a few rows and a few more (a fixed cost per call does not count), the
        best of up to three tries while they take under the budget (a busy machine's
        pauses would otherwise shrink the sample)."""
        limit = min(self.max_points, n)
        if self.frame_budget_s is None or limit <= MIN_POINTS:
            return limit
        best = [np.inf, np.inf]
        spent = 0.0
        for _ in range(CALIBRATION_TRIES):
            for position, count in enumerate(CALIBRATION_ROWS):
                began = self.clock()
                with torch.random.fork_rng(devices=[]):
                    self.run.embed(np.arange(count))
                took = self.clock() - began
                best[position], spent = min(best[position], took), spent + took
            if spent > self.frame_budget_s:
                break
        per_row = (best[1] - best[0]) / (CALIBRATION_ROWS[1] - CALIBRATION_ROWS[0])
        if per_row <= 0:
            return limit
        return int(min(limit, max(MIN_POINTS, self.frame_budget_s / per_row)))
