"""Training and embedding over two processes (Gloo on the CPU), each check a real
`python -m torch.distributed.run --nproc_per_node 2` subprocess compared with the same
work done in one process: gathered mining equals mining on the concatenated batch,
two-process training equals single-process training on the same global batches, the
`train` and `embed` commands run under the launcher, and the shards merge into the
cache one process would have written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval_app.data.sampler import PKSampler
from retrieval_app.losses import TripletLoss
from synthetic import write_class_folder

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300  # two fresh interpreters importing torch, on a busy machine


def launch(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`args` under torchrun with two CPU processes; our code first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1",
           "RETRIEVAL_APP_CACHE_DIR": str(tmp_path / "cache"), "RETRIEVAL_APP_MODELS_DIR": str(tmp_path / "models"), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_without_torchrun_every_operation_is_the_single_process_one(monkeypatch):
    from retrieval_app.distributed import Distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single = Distributed.from_env("auto")
    assert not single.enabled and single.is_main and single.loss_scale == 1.0 and single.backend is None
    embeddings, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    gathered, gathered_labels = single.gather_batch(embeddings, labels)
    assert gathered is embeddings and gathered_labels is labels
    module = torch.nn.Linear(2, 2)
    assert single.wrap(module) is module and single.agree(2) == 2 and single.share({"a": 1}) == {"a": 1}
    assert single.shard([1, 2, 3]) == [1, 2, 3] and single.total(5) == 5
    assert Distributed(rank=1, world_size=3).shard(list(range(7))) == [1, 4]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    launch([str(ROOT / "tests" / "distributed_worker.py"), str(out)], out)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_both_ranks_joined_one_gloo_group(ranks):
    assert [(r["rank"], r["world_size"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]


@pytest.mark.parametrize("mining", worker.MINING)
def test_gathered_mining_equals_mining_on_the_concatenated_batch(ranks, mining):
    embeddings, labels = worker.global_batch(2)
    embeddings = embeddings.clone().requires_grad_(True)
    single = TripletLoss(mining, margin=0.3)(embeddings, labels)
    single.loss.backward()
    assert len(single.triplets[0]) > 0
    for rank, result in enumerate(ranks):
        got = result["mining"][mining]
        assert torch.equal(got["labels"], labels)
        assert torch.equal(got["triplets"], torch.stack(single.triplets))  # the same triplets, in the same order
        assert torch.allclose(got["loss"], single.loss.detach(), atol=1e-6)
        # the gradient reaches this rank's rows, as the global loss's gradient there
        rows = slice(rank * worker.PER_RANK, (rank + 1) * worker.PER_RANK)
        assert torch.allclose(got["grad"], embeddings.grad[rows], atol=1e-6)
        assert got["grad"].abs().sum() > 0


def single_process_training(mining: str, steps: int, world_size: int = 2) -> dict[str, torch.Tensor]:
    """What the two ranks' run should equal: one process training on the concatenation
    of consecutive P×K batches of the same sequence (written out here, not through
    HeadLoop), with the global batch's loss."""
    config = worker.training_config(mining)
    net = worker.make_net()
    features, labels = worker.feature_table(net.spec.feature_dim)
    k = config.samples_per_class
    sequence = iter(PKSampler(labels.tolist(), config.batch_size // k, k, seed=3, batches_per_epoch=1 << 62))
    optimizer = torch.optim.AdamW(net.head.parameters(), lr=0.01, weight_decay=config.weight_decay)
    loss_fn = TripletLoss(mining, margin=config.margin)
    net.train()
    for _ in range(steps):
        index = torch.as_tensor([i for _ in range(world_size) for i in next(sequence)])
        loss = loss_fn(net.embed_features(features[index]), labels[index]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.head.state_dict()


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
def test_two_process_training_equals_one_process_on_the_same_global_batches(ranks, mining):
    expected = single_process_training(mining, steps=6)
    start = worker.make_net().head.state_dict()
    for result in ranks:
        got = result["training"][mining]
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.allclose(got[key], expected[key], atol=1e-5), key
    moved = max(float((expected[key] - start[key]).abs().max()) for key in expected)
    assert moved > 1e-3  # the comparison is about trained weights, not the start


def test_train_command_under_torchrun_writes_the_model_on_rank_0_only(tmp_path):
    data = write_class_folder(tmp_path / "digits", n_classes=5, per_class=12, size=28)
    out = tmp_path / "models" / "ddp"
    done = launch(["-m", "retrieval_app", "train", str(data), "--backbone", "small_cnn", "--mode", "full", "--epochs", "2",
                   "--batch-size", "16", "--out", str(out), "--device", "cpu"], tmp_path)
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    assert done.stdout.count("model: ") == 1  # rank 0 alone reports
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    assert not any(key.startswith("module.") for key in state["state_dict"])  # the network, not its DDP wrapper


def test_embed_command_under_torchrun_merges_shards_into_the_cache_one_process_would_write(tmp_path):
    from retrieval_app.data import scan_folder
    from retrieval_app.retrieval.cache import read_store, store_dir
    from retrieval_app.retrieval.embed import embed_records
    from retrieval_app.training.checkpoint import load_embedder

    data = write_class_folder(tmp_path / "shapes", n_classes=3, per_class=5, size=48)
    done = launch(["-m", "retrieval_app", "embed", str(data), "--device", "cpu", "--batch-size", "4"], tmp_path)
    assert "15 images in 3 classes embedded by 2 processes" in done.stdout and "15 computed" in done.stdout

    scan = scan_folder(data)
    net = load_embedder("efficientnet_lite0")
    folder = store_dir(net, data, "embeddings", tmp_path / "cache")
    # the parts were merged and removed (beside the store: the saved search index)
    assert [p.name for p in folder.iterdir() if p.name != "index"] == ["store.npz"]
    stored = read_store(folder)
    single = embed_records(net, scan.records, device="cpu", batch_size=4, num_workers=0)
    position = stored.positions()
    assert sorted(position) == sorted(r.id for r in scan.records)
    merged = stored.vectors[[position[r.id] for r in scan.records]]
    np.testing.assert_allclose(merged, single.embeddings, atol=1e-5)
