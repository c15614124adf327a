"""Training and embedding over several processes started by `torchrun`.

`torchrun --nproc_per_node N -m retrieval_app train FOLDER ...` starts N copies of the
command with RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT in their environment.
`Distributed.from_env()` reads them: with WORLD_SIZE > 1 it joins the process group
(NCCL when the processes use CUDA, Gloo otherwise) and `close()` leaves it; without
them it is the single-process context whose every operation is the identity, so the
training code has one path for both.

What the ranks share, and how (see README "Distributed training and embedding"):
- one global sequence of P×K batches, dealt out in turn (`PKSampler(rank=, world_size=)`);
- the global batch: `gather_batch` all-gathers every rank's embeddings and labels, with
  the rank's own rows replaced by its local tensor, so gradients reach the local part
  and each rank mines on exactly the concatenated batch. Every rank then computes the
  same global loss; each backpropagates it into its own rows only, and DDP averages the
  ranks' gradients, so the loss is scaled by `world_size` (`loss_scale`) to give the
  gradient single-process training on the concatenated batch would give;
- decisions are shared, so every rank leaves every loop at the same step: per step,
  the most severe of the ranks' go on / stop / cancelled (`agree`); after a
  validation, the dial's choice or an epoch's outcome, made by rank 0, the only rank
  that validates, prints and writes (`share`).

Everything is held by the `Distributed` object the caller owns (no module state)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import RetrievalAppError

# Rank 0 validates (a pass over the held-out images) while the other ranks wait at the
# next collective: the default timeout (10 min for NCCL) would kill a long validation.
DEFAULT_TIMEOUT_S = 3 * 3600
TIMEOUT_ENV = "RETRIEVAL_APP_DIST_TIMEOUT_S"


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no group joined
    owns_group: bool = False  # this object joined the group, so it leaves it

    # ------------------------------------------------------------ life cycle
    @classmethod
    def from_env(cls, device_preference: str = "auto") -> "Distributed":
        """The single-process context, or the process group torchrun's environment
        describes, joined (NCCL for CUDA devices, Gloo for CPUs)."""
        if not launched_by_torchrun():
            return cls()
        rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        use_cuda = device_preference in ("auto", "cuda") and torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if dist.is_initialized():  # a caller's group (e.g. tests): use it, leave it to them
            return cls(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), owns_group=False)
        if use_cuda:
            torch.cuda.set_device(local % torch.cuda.device_count())
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise RetrievalAppError(f"could not join the {backend} process group of {world} processes: {str(exc).splitlines()[0]}") from None
        return cls(rank, world, local, backend, owns_group=True)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def __enter__(self) -> "Distributed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ properties
    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        """Multiplies the (identical) global loss on every rank: DDP averages gradients
        over ranks, and each rank's backward reaches only its own rows."""
        return float(self.world_size)

    def device_preference(self, preference: str) -> str:
        """`auto`/`cuda` become this process's GPU (cuda:LOCAL_RANK) under NCCL."""
        if self.backend == "nccl" and preference in ("auto", "cuda"):
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        if self.enabled and preference == "auto":
            return "cpu"  # Gloo: the processes share the CPUs
        return preference

    # ------------------------------------------------------------ collectives
    def _tensor_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agree(self, code: int) -> int:
        """The largest of the ranks' `code`s on every rank: with codes ordered by
        severity (0 go on, 1 stop, 2 cancelled), one rank out of batches or out of time
        stops them all at the same step."""
        if not self.enabled:
            return code
        value = torch.tensor([int(code)], dtype=torch.long, device=self._tensor_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` (picklable) on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._tensor_device() if self.backend == "nccl" else None)
        return box[0]

    def gather_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (embeddings, labels) concatenated in rank order. The rank's own
        rows are its local tensor, so gradients flow into them; the other ranks' rows
        are constants here (they get their gradients on their own ranks). Local batches
        may differ in length (unreadable images drop out)."""
        if not self.enabled:
            return embeddings, labels
        sizes = [torch.zeros(1, dtype=torch.long, device=embeddings.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(labels)], dtype=torch.long, device=embeddings.device))
        lengths = [int(s.item()) for s in sizes]
        longest = max(lengths)
        padded = torch.zeros((longest, embeddings.shape[1]), dtype=embeddings.dtype, device=embeddings.device)
        padded[: len(labels)] = embeddings.detach()
        padded_labels = torch.full((longest,), -1, dtype=labels.dtype, device=embeddings.device)
        padded_labels[: len(labels)] = labels
        parts = [torch.empty_like(padded) for _ in lengths]
        label_parts = [torch.empty_like(padded_labels) for _ in lengths]
        dist.all_gather(parts, padded)
        dist.all_gather(label_parts, padded_labels)
        rows = [embeddings if r == self.rank else part[:n] for r, (part, n) in enumerate(zip(parts, lengths))]
        return torch.cat(rows), torch.cat([part[:n] for part, n in zip(label_parts, lengths)])

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` in DistributedDataParallel (which first copies rank 0's parameters
        and buffers to every rank), or as it is in a single process."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self._tensor_device().index] if self.backend == "nccl" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def total(self, value: int) -> int:
        """The sum of `value` over the ranks."""
        if not self.enabled:
            return int(value)
        summed = torch.tensor([int(value)], dtype=torch.long, device=self._tensor_device())
        dist.all_reduce(summed)
        return int(summed.item())

    # ------------------------------------------------------------ sharding
    def shard(self, items: list) -> list:
        """This rank's share of `items`: every world_size-th, from its rank."""
        return items[self.rank::self.world_size] if self.enabled else list(items)
