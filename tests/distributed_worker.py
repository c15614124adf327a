"""One rank of the two-process checks in tests/test_distributed.py, started as
`python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT`.

Each rank writes what it computed to OUT/rank<r>.pt; the test recomputes the same
things in a single process and compares. The inputs are built from fixed seeds, so
both ranks and the test hold the same global data."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from retrieval_app.distributed import Distributed
from retrieval_app.losses import TripletLoss
from retrieval_app.training.config import TrainConfig
from retrieval_app.training.head_loop import HeadLoop

MINING = ("batch_all", "batch_hard", "semi_hard")
PER_RANK = 8  # rows of each rank's batch in the mining check


def global_batch(world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of the whole (concatenated) batch of the mining check."""
    generator = torch.Generator().manual_seed(11)
    embeddings = torch.nn.functional.normalize(torch.randn(PER_RANK * world_size, 6, generator=generator), dim=1)
    labels = torch.randint(0, 3, (PER_RANK * world_size,), generator=generator)
    return embeddings, labels


def make_net():
    """The small CNN with a linear head (no BatchNorm: its batch statistics would be per
    rank), the same start on every call."""
    from retrieval_app.networks import create_model

    torch.manual_seed(123)
    return create_model("small_cnn", dim=8, head="linear", pretrained=False)


def feature_table(feature_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone-like features of 6 classes (10 items each) for the training check."""
    generator = torch.Generator().manual_seed(5)
    labels = torch.arange(6).repeat_interleave(10)
    centres = torch.randn(6, feature_dim, generator=generator)
    return centres[labels] + 0.8 * torch.randn(60, feature_dim, generator=generator), labels


def training_config(mining: str) -> TrainConfig:
    return TrainConfig(folder="unused", out_dir="unused", mining=mining, batch_size=8, samples_per_class=2, margin=0.3, seed=0)


def mining_check(distributed: Distributed) -> dict:
    embeddings, labels = global_batch(distributed.world_size)
    rows = slice(distributed.rank * PER_RANK, (distributed.rank + 1) * PER_RANK)
    out = {}
    for mining in MINING:
        local = embeddings[rows].clone().requires_grad_(True)
        gathered, gathered_labels = distributed.gather_batch(local, labels[rows])
        result = TripletLoss(mining, margin=0.3)(gathered, gathered_labels)
        result.loss.backward()
        out[mining] = {"loss": result.loss.detach(), "triplets": torch.stack(result.triplets), "labels": gathered_labels, "grad": local.grad}
    return out


def training_check(distributed: Distributed, mining: str, steps: int) -> dict:
    net = make_net()
    features, labels = feature_table(net.spec.feature_dim)
    loop = HeadLoop(net, features, labels, training_config(mining), lr=0.01, seed=3, distributed=distributed)
    loop.run(steps=steps)
    return {key: value.detach().clone() for key, value in net.head.state_dict().items()}


def main(out: Path) -> None:
    with Distributed.from_env("cpu") as distributed:
        assert distributed.enabled, "start this with torch.distributed.run"
        result = {"rank": distributed.rank, "world_size": distributed.world_size, "backend": distributed.backend, "mining": mining_check(distributed),
                  "training": {mining: training_check(distributed, mining, steps=6) for mining in ("batch_all", "batch_hard")}}
        torch.save(result, out / f"rank{distributed.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
