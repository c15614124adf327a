"""Mining diagnostics gathered while a loop trains, from what the loss already computed.

Every `every`-th step the batch's valid triplets are typed (hard / semi-hard / easy, see
`losses.statistics`) from the distance matrix the loss kept, and a strided sample of
their d(a, p) and d(a, n) is kept for a histogram. Two views are read from it:

- `interval()`: the statistics since the previous call (the loops attach them to their
  progress reports, a few a second);
- `window()`: the statistics and the histogram since the previous call (attached to each
  validation: per fold measurement in quick mode, per epoch in full mode).

It also counts the steps in a row without a single active triplet (`inactive_steps`):
the loss and its gradient are then exactly zero, the model no longer changes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..losses import LossOutput, TripletLoss
from ..losses.statistics import TripletStatistics, sums_of_gaps

HISTOGRAM_BINS = 24
SAMPLES_PER_BATCH = 64  # distances kept per observed batch, for the histogram
MAX_SAMPLES = 20_000  # per window: older samples are thinned beyond this


class MiningMonitor:
    def __init__(self, loss_fn: TripletLoss, every: int = 1) -> None:
        self.loss_fn = loss_fn
        self.every = max(1, int(every))
        self.steps = 0
        self.inactive_steps = 0
        self._interval = np.zeros(6)
        self._window = np.zeros(6)
        self._ap: list[torch.Tensor] = []
        self._an: list[torch.Tensor] = []
        self._kept = 0

    def observe(self, out: LossOutput, active_fraction: float) -> None:
        """One training step's loss output (and its active fraction, already a float)."""
        self.steps += 1
        self.inactive_steps = 0 if active_fraction > 0 else self.inactive_steps + 1
        if self.steps % self.every or out.distances is None:
            return
        d_ap, d_an = self.loss_fn.valid_gaps(out)
        if not d_ap.numel():
            return
        sums = np.asarray(sums_of_gaps(d_ap, d_an, self.loss_fn.margin))
        self._interval += sums
        self._window += sums
        stride = max(1, d_ap.numel() // SAMPLES_PER_BATCH)
        self._ap.append(d_ap[::stride].float().cpu())
        self._an.append(d_an[::stride].float().cpu())
        self._kept += len(self._ap[-1])
        if self._kept > MAX_SAMPLES:  # a long window: keep every other sample
            self._ap, self._an = [torch.cat(self._ap)[::2]], [torch.cat(self._an)[::2]]
            self._kept = len(self._ap[0])

    def interval(self) -> dict[str, Any] | None:
        """Fractions and mean distances since the previous call (None: nothing observed)."""
        stats = TripletStatistics.from_sums(self._interval)
        self._interval = np.zeros(6)
        return _rounded(stats.to_dict()) if stats is not None else None

    def window(self) -> dict[str, Any] | None:
        """Fractions, mean distances and a histogram of d(a, p) and d(a, n) since the
        previous call (None: nothing observed)."""
        stats = TripletStatistics.from_sums(self._window)
        ap = torch.cat(self._ap).numpy() if self._ap else np.empty(0)
        an = torch.cat(self._an).numpy() if self._an else np.empty(0)
        self._window, self._ap, self._an, self._kept = np.zeros(6), [], [], 0
        if stats is None:
            return None
        return {**_rounded(stats.to_dict()), "histogram": distance_histogram(ap, an)}


def distance_histogram(d_ap: np.ndarray, d_an: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list]:
    """Counts of d(a, p) and d(a, n) over shared bins from 0 to the largest distance."""
    top = float(max(d_ap.max(initial=0.0), d_an.max(initial=0.0)))
    edges = np.linspace(0.0, top if top > 0 else 1.0, bins + 1)
    return {
        "edges": [round(float(e), 5) for e in edges],
        "d_ap": np.histogram(d_ap, edges)[0].astype(int).tolist(),
        "d_an": np.histogram(d_an, edges)[0].astype(int).tolist(),
    }


def _rounded(stats: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 5) if isinstance(value, float) else value for key, value in stats.items()}
