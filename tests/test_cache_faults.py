"""The embedding cache under faults: a run killed with SIGKILL (a real subprocess) at any
moment loses at most the last seconds of work, leaves only files that load, and its
temp files are cleaned up at the next open."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from retrieval_app.data import scan_folder
from retrieval_app.networks import create_model
from retrieval_app.retrieval.cache import PART_PREFIX, _PendingWriter, cached_embeddings, read_store, store_dir
from retrieval_app.retrieval.embed import embed_records
from synthetic import write_class_folder

# A fork server: imports torch and builds the same untrained small_cnn as the `net`
# fixture (same seed: same weights, same cache key) once, prints "ready", then for each
# line "MODE CACHE" on stdin forks a child that embeds into CACHE, prints the child's pid
# and, when the child ends (the test kills it), its wait status. Modes:
# - "trickle": one slow first run whose rows never reach a row-count flush;
# - "churn": first runs into fresh cache folders CACHE/0, CACHE/1, ... over and over, so
#   that writes (a part file every 2 rows, then the store) happen all the time.
# Forking spares each kill a torch import (seconds); torch makes forked children safe.
WORKER = """
import os, sys, time, torch
from retrieval_app.data import scan_folder
from retrieval_app.networks import create_model
from retrieval_app.retrieval.cache import cached_embeddings

torch.manual_seed(0)
net = create_model("small_cnn", dim=16, pretrained=False).eval()
scan = scan_folder(sys.argv[1])
options = dict(device="cpu", num_workers=0, batch_size=2)

def embed(mode, cache):
    if mode == "trickle":
        cached_embeddings(net, scan, cache_dir=cache, flush_rows=10**6, flush_seconds=0.5,
                          progress=lambda done, total: time.sleep(0.2), **options)
        time.sleep(60)  # never reached: the test kills it first
    for run in range(10**6):
        cached_embeddings(net, scan, cache_dir=f"{cache}/{run}", flush_rows=2, **options)

print("ready", flush=True)
for line in sys.stdin:
    mode, cache = line.split()
    pid = os.fork()
    if pid == 0:
        embed(mode, cache)
        os._exit(0)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class ForkServer:
    def __init__(self, folder) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WORKER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def start(self, mode: str, cache) -> int:
        """Fork a child embedding into `cache`; returns its pid."""
        self.process.stdin.write(f"{mode} {cache}\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def sigkill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        status = int(self.process.stdout.readline())
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # killed while working

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(folder):
    server = ForkServer(folder)
    yield server
    server.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("faults") / "images", n_classes=3, per_class=6, size=40)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("small_cnn", dim=16, pretrained=False).eval()


@pytest.fixture(scope="module")
def reference(folder, net):
    return embed_records(net, scan_folder(folder).records, device="cpu", num_workers=0).embeddings


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def temp_files(root) -> list:
    return [p for p in root.rglob(".*.tmp")]


def test_rows_are_flushed_by_time_before_any_row_count_flush(tmp_path, folder):
    records = scan_folder(folder).records
    now = [0.0]
    writer = _PendingWriter(tmp_path, records, flush_rows=1000, flush_seconds=10.0, clock=lambda: now[0])
    vectors = np.ones((2, 4), np.float32)
    writer.add(np.array([0, 1]), vectors)
    now[0] = 9.0
    writer.add(np.array([2, 3]), vectors)
    assert writer.written == []
    now[0] = 10.5
    writer.add(np.array([4, 5]), vectors)
    assert len(writer.written) == 1 and read_store(tmp_path).ids.tolist() == [r.id for r in records[:6]]
    now[0] = 15.0
    writer.add(np.array([6]), vectors[:1])  # 4.5 s after the last write: waits
    assert len(writer.written) == 1


def test_a_kill_before_any_row_count_flush_keeps_the_work_of_earlier_seconds(tmp_path, folder, net, reference, server):
    cache = tmp_path / "cache"
    pid = server.start("trickle", cache)
    where = store_dir(net, folder, "embeddings", cache)
    wait_for(lambda: any(where.glob(f"{PART_PREFIX}*.npz")))
    time.sleep(random.Random(0).uniform(0.0, 0.6))  # now any moment of the run
    server.sigkill(pid)
    kept = read_store(where)
    assert not kept.damaged and 0 < len(kept.ids) < 18
    resumed = cached_embeddings(net, scan_folder(folder), cache_dir=cache, device="cpu", num_workers=0)
    assert resumed.n_cached == len(set(kept.ids.tolist())) and resumed.n_cached + resumed.n_computed == 18
    np.testing.assert_allclose(resumed.embeddings, reference, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_a_random_moment_of_cache_writes_leaves_a_cache_that_loads(tmp_path, folder, net, reference, server, seed):
    cache = tmp_path / "cache"
    pid = server.start("churn", cache)
    wait_for(lambda: any(cache.rglob("*.npz")))  # writing has begun...
    time.sleep(random.Random(seed).uniform(0.0, 0.8))  # ...and goes on until a random moment
    server.sigkill(pid)
    runs = sorted(cache.iterdir(), key=lambda p: int(p.name))
    for run in runs:  # every file of every run, the interrupted one included, loads
        stored = read_store(store_dir(net, folder, "embeddings", run))
        assert not stored.damaged
    last = runs[-1]
    resumed = cached_embeddings(net, scan_folder(folder), cache_dir=last, device="cpu", num_workers=0)
    assert resumed.ok.all()
    np.testing.assert_allclose(resumed.embeddings, reference, atol=1e-5)
    assert temp_files(last) == []  # the killed writer's temp file (if any) is gone
    again = cached_embeddings(net, scan_folder(folder), cache_dir=last, device="cpu", num_workers=0)
    assert (again.n_cached, again.n_computed) == (18, 0)


def test_stale_temp_files_are_removed_when_the_cache_is_opened(tmp_path, folder, net):
    cache = tmp_path / "cache"
    where = store_dir(net, folder, "embeddings", cache)
    where.mkdir(parents=True)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    killed_store = where / f".store.npz.{dead}-00c0ffee.tmp"
    killed_part = where / f".{PART_PREFIX}00000000000000000001-{dead}.npz.{dead}-0badf00d.tmp"
    in_progress = where / f".store.npz.{os.getpid()}-12345678.tmp"  # a live writer's: kept
    for path in (killed_store, killed_part, in_progress):
        path.write_bytes(b"half a file")
    assert cached_embeddings(net, scan_folder(folder), cache_dir=cache, device="cpu", num_workers=0).ok.all()
    assert not killed_store.exists() and not killed_part.exists() and in_progress.exists()
