"""How many CPU threads each kind of work gets.

PyTorch's intra-op thread count is set per calling thread (`torch.set_num_threads` sets
the OpenMP/MKL count of the thread that calls it, and the default for threads started
afterwards). Tiny operations - a head on cached features, a 28×28 network - lose far
more to thread hand-offs than they gain from a second core: on a busy 2-core machine a
1280→128 head step ran 52–60 steps/s on one thread and 4–6 on two. Large convolutions
gain from every core. So each workload sets its own count for its own thread, here, and
restores it afterwards."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

# Workload → threads; None means "every core this process may use".
WORKLOAD_THREADS: dict[str, int | None] = {
    "head": 1,  # small matrices on cached features: training steps, validation, metrics
    "small_network": 1,  # networks on tiny inputs (≤ 64 px), e.g. the small CNN on 28×28
    "network": None,  # a backbone on full-size images
}
# Inputs at most this many pixels on a side count as a small network's work.
SMALL_INPUT_SIDE = 64


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_for(workload: str) -> int:
    """The thread count for a registered workload (see `WORKLOAD_THREADS`)."""
    if workload not in WORKLOAD_THREADS:
        raise ValueError(f"unknown workload {workload!r} (choose from {', '.join(WORKLOAD_THREADS)})")
    count = WORKLOAD_THREADS[workload]
    return available_cores() if count is None else min(count, available_cores())


def network_workload(input_size: int) -> str:
    """'small_network' for tiny inputs, else 'network'."""
    return "small_network" if input_size <= SMALL_INPUT_SIDE else "network"


@contextlib.contextmanager
def use_threads(count: int) -> Iterator[int]:
    """Run the body with `count` intra-op threads in this thread, then restore the old count."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def workload_threads(workload: str):
    """`use_threads(threads_for(workload))`."""
    return use_threads(threads_for(workload))
