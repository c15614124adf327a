"""The fast loop of quick mode: a head trained on cached backbone features.

Everything per step is small (a 64-row batch through one linear map, a 64×64 distance
matrix), so the loop is built for per-step overhead: features stay in one tensor, valid
triplets of a P×K batch are cached by the miner, the distance matrix and the margin loss
are one hand-differentiated autograd node each, the optimizer is torch's fused kernel
called directly (`lean_adamw.py`), the step runs on one thread (`threads.py`) while a
second core prepares the next batches (`prefetch.py`), and progress is reported a few
times a second rather than every step. Validation and checkpoints are the caller's business,
at steps it chooses (`eval_at`).

Under `torchrun` (a `distributed.Distributed` context) the head trains through a module's
`forward` (`FeatureForward`) wrapped in DistributedDataParallel, so the ranks' gradients
are averaged; each rank draws its turns of one global P×K sequence, mines on the batch
gathered from every rank, and the ranks agree at every step whether to go on."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..data.sampler import PKSampler
from ..data.triplets import sample_random_triplets
from ..errors import RetrievalAppError
from ..losses import LossOutput, TripletLoss, get_distance
from ..losses.geometry import GeometryKeeper
from ..networks.embedding_net import TrainingView
from .config import TrainConfig
from .lean_adamw import LeanAdamW
from ..distributed import Distributed
from .mining_monitor import MiningMonitor
from .prefetch import Prefetcher

PROGRESS_INTERVAL_S = 0.2  # how often the loop reports loss and speed
# Mining statistics are taken every this many steps: typing the ~11,500 valid triplets of
# a 64-item batch costs ~0.4 ms against a ~1 ms step (measured on one thread), ~2.5 % of
# the steps' time every 16th step. Not rarer: quick mode's first measurement of a fold
# comes at step 25, and each measurement reports the statistics of the steps before it.
STATS_EVERY = 16

# Largest training view (`EmbeddingNet.training_view`) built beside the cached features:
# above it (the identity head's view holds ~1.1 × the features) the loop trains on the
# features themselves, slower per step but without the second copy.
VIEW_MAX_BYTES = 2 << 30
CHUNK = 16  # batches prepared together (see `HeadLoop._next_batches`, prefetch.py)

ProgressFn = Callable[["StepStats"], None]
EvalFn = Callable[[int, float], None]  # (step, elapsed seconds of this run)


@dataclass
class StepStats:
    step: int  # steps done in this run
    loss: float  # mean since the last report
    active_fraction: float
    images: int  # images seen in this run
    elapsed_s: float
    data: dict = field(default_factory=dict)  # "mining" (statistics since the last report), "inactive_steps"


class TrainingStopped(Exception):
    """Raised inside the loop when the caller's cancel event is set."""


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise RetrievalAppError("nothing to train: the head has no trainable parameters")
    try:  # the fused kernel, called without the general step's upkeep (lean_adamw.py)
        return LeanAdamW(params, lr=lr, weight_decay=weight_decay)
    except (RuntimeError, TypeError):  # no fused kernel for these parameters
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def batch_indices(labels: torch.Tensor, config: TrainConfig, seed: int, *, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """An endless stream of index batches: P×K batches for online mining (rank `rank`'s
    turns of one global sequence), or [anchors | positives | negatives] of random
    triplets for mining="random" (drawn per rank)."""
    if config.mining == "random":
        generator = torch.Generator().manual_seed(seed + rank * 1_000_003)
        per_batch = max(1, config.batch_size // 3)
        while True:
            yield sample_random_triplets(labels, per_batch, generator).t().reshape(-1)
    k = config.samples_per_class
    sampler = PKSampler(labels.tolist(), max(2, config.batch_size // k), k, seed=seed, batches_per_epoch=1 << 62, rank=rank, world_size=world_size)
    for batch in sampler:
        yield torch.as_tensor(batch, dtype=torch.long)


class FeatureForward(torch.nn.Module):
    """`net.embed_features` as a module's `forward`, holding only the head: what DDP
    wraps in quick mode (DDP synchronises gradients only of work done through `forward`;
    the frozen backbone stays outside, so nothing of it is broadcast or bucketed)."""

    def __init__(self, net, embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.head = net.head
        # a bound method or closure (`EmbeddingNet.training_view`): the net is not a submodule
        self._embed = embed or net.embed_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._embed(features)


# Per-step decisions, by severity (`Distributed.agree` takes the largest over the ranks).
GO_ON, STOP, CANCELLED = 0, 1, 2


class HeadLoop:
    """Trains `net`'s head on (features, labels) with the config's loss and mining."""

    def __init__(self, net, features: torch.Tensor, labels: torch.Tensor, config: TrainConfig, *, lr: float, seed: int, cancel: threading.Event | None = None,
                 distributed: Distributed | None = None) -> None:
        self.net = net
        self.labels = labels
        self.config = config
        self.cancel = cancel or threading.Event()
        self.dist = distributed or Distributed()
        # Random triplets are laid out per batch ([a | p | n]): nothing to mine globally.
        self.gather = self.dist.enabled and config.mining != "random"
        view = TrainingView(features, None, None)
        if get_distance(config.distance).rotation_invariant:  # the loss sees the same distances on the view
            # Mining on a batch gathered from every rank compares rows of different batches.
            view = net.training_view(features, max_bytes=VIEW_MAX_BYTES, within_batch=not self.gather)
        self.features = view.inputs.contiguous()  # what the batches are gathered from
        self._prepare = view.prepare
        self.model = self.dist.wrap(FeatureForward(net, view.embed))  # after the head's start is set: DDP copies rank 0's
        self.optimizer = make_optimizer(net.head.parameters(), lr, config.weight_decay)
        self._trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._optimizer_step = getattr(self.optimizer, "fast_step", self.optimizer.step)
        self._indices = batch_indices(labels.cpu(), config, seed, rank=self.dist.rank, world_size=self.dist.world_size)
        # a second core prepares the next batches (not under torchrun: every rank has its cores' share)
        self.batches = Prefetcher(self._next_batches, enabled=None if features.device.type == "cpu" and not self.dist.enabled else False)
        self.loss_fn = TripletLoss(config.mining, margin=config.margin, distance=config.distance, reduction=config.reduction)
        self.monitor = MiningMonitor(self.loss_fn, every=STATS_EVERY)
        # The batch rows are the backbone's features (or an isometric image of them, the
        # view above): normalised as the embeddings are, they are the backbone's embeddings.
        self.keeper = GeometryKeeper(config.keep_geometry, config.distance) if config.keep_geometry > 0 else None
        # Steps in closed form (no autograd graph) where the view and the loss write one out
        # and nothing else joins the step: no DDP (it hooks autograd), no geometry term.
        closed_form_ok = view.embed_with_backward is not None and self.loss_fn.has_closed_form and not self.dist.enabled and self.keeper is None
        self._embed_with_backward = view.embed_with_backward if closed_form_ok else None
        self.closed_form_steps = 0  # how many steps took that path (the rest: autograd)
        self.steps = 0
        self.images = 0

    def _next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(index, labels, rows) of the next `CHUNK` batches, rows prepared for the model.
        They depend on nothing the training step changes, so they can be made ahead
        (`Prefetcher`), and are made together: a few large calls, not many small ones."""
        index = torch.stack([next(self._indices) for _ in range(CHUNK)])
        rows = self.features[index]  # (CHUNK, batch, columns)
        prepared = rows.unbind(0) if self._prepare is None else self._prepare(rows)
        return list(zip(index.unbind(0), self.labels[index].unbind(0), prepared))

    def run(self, *, steps: int | None = None, deadline: float | None = None, eval_at: Callable[[int, float], bool] | None = None,
            on_eval: EvalFn | None = None, on_progress: ProgressFn | None = None, stop=None) -> int:
        """Train until `steps` more steps are done, `time.monotonic()` passes `deadline`
        or `stop` (anything with `is_set()`, e.g. a callback's `StopRequest`) is set;
        calls `on_eval(step, elapsed)` where `eval_at(step, elapsed)` says so. Raises
        `TrainingStopped` when cancelled. Returns the steps done in this run."""
        if steps is None and deadline is None:
            raise ValueError("give steps, a deadline or both")
        self.batches.start()
        try:
            return self._run(steps, deadline, eval_at, on_eval, on_progress, stop)
        finally:
            self.batches.pause()

    def _run(self, steps, deadline, eval_at, on_eval, on_progress, stop) -> int:
        started = time.monotonic()
        target = self.steps + steps if steps is not None else math.inf
        last_report, losses, actives = started, [], []
        self.net.train()
        while True:
            decision = self._decide(target, deadline, stop)
            if decision == CANCELLED:
                raise TrainingStopped()
            if decision == STOP:
                break
            loss, active = self.step()
            losses.append(loss)
            actives.append(active)
            now = time.monotonic()
            if on_progress is not None and (now - last_report >= PROGRESS_INTERVAL_S or self.steps == target):
                data = {"mining": self.monitor.interval(), "inactive_steps": self.monitor.inactive_steps}
                on_progress(StepStats(self.steps, float(torch.stack(losses).mean()), sum(actives) / len(actives), self.images, now - started, data))
                last_report, losses, actives = now, [], []
            if on_eval is not None and eval_at is not None and eval_at(self.steps, now - started):
                on_eval(self.steps, now - started)
                if not self.net.training:  # back from a validation (train() walks every module: ~0.4 ms)
                    self.net.train()
        return self.steps

    def _decide(self, target: float, deadline: float | None, stop) -> int:
        """Go on, stop or cancelled, agreed by every rank (a deadline or a cancel seen by
        one rank alone would leave the others waiting)."""
        if self.steps >= target or (deadline is not None and time.monotonic() >= deadline):
            code = STOP
        elif self.cancel.is_set():
            code = CANCELLED
        elif stop is not None and stop.is_set():
            code = STOP
        else:
            code = GO_ON
        return self.dist.agree(code)

    def step(self) -> tuple[torch.Tensor, float]:
        index, local_labels, rows = next(self.batches)
        out = self._closed_form_gradients(rows, local_labels) if self._embed_with_backward is not None else None
        if out is None:
            out = self._autograd_gradients(rows, local_labels)
        self._optimizer_step()
        self.monitor.observe(out, out.active_fraction)
        self.steps += 1
        self.images += len(index)
        return out.loss.detach(), out.active_fraction

    def _closed_form_gradients(self, rows: torch.Tensor, labels: torch.Tensor) -> LossOutput | None:
        """Sets the head's gradients for this batch without autograd (the view's and the
        loss's hand-written backward, chained by hand): on a 64-row step recording and
        replaying a graph cost about as much as all the arithmetic. None (nothing set)
        where the loss has no closed form for this batch."""
        with torch.no_grad():
            embeddings, set_gradients = self._embed_with_backward(rows)
            result = self.loss_fn.closed_form(embeddings, labels)
            if result is None:
                return None
            out, grad_embeddings = result
            set_gradients(grad_embeddings)
        self.closed_form_steps += 1
        return out

    def _autograd_gradients(self, rows: torch.Tensor, local_labels: torch.Tensor) -> LossOutput:
        local_embeddings = self.model(rows)
        embeddings, labels, scale = local_embeddings, local_labels, 1.0
        if self.gather:  # mine on the global batch; see distributed.py for the scale
            embeddings, labels = self.dist.gather_batch(embeddings, labels)
            scale = self.dist.loss_scale
        out = self.loss_fn(embeddings, labels)
        total = out.loss * scale if scale != 1.0 else out.loss
        if self.keeper is not None:  # on this rank's rows: the term needs no other rank's
            backbone = F.normalize(rows, dim=1) if self.net.normalize else rows
            total = total + self.keeper(local_embeddings, backbone, local_labels)
        for param in self._trained:  # zero_grad(set_to_none=True) without its per-call upkeep
            param.grad = None
        total.backward()
        return out
