"""Embedding and full-mode training under torchrun: 1 process against N, end to end.

For each process count, with a fresh cache each time (so every image is computed):
- `torchrun --nproc_per_node N -m retrieval_app embed FOLDER`: wall time of the whole
  command (interpreter start, model load, scan, sharded embedding, rank 0's merge and
  gallery), and images/s over the folder;
- optionally (`--train-epochs E`), `torchrun ... train FOLDER --mode full --epochs E`:
  wall time.
The wall time includes starting N interpreters and loading the model in each: on a
small folder that start-up dominates, so use thousands of images to see the scaling.
On GPUs, pass `--device cuda` (NCCL, one process per GPU); on CPUs the processes share
the cores (Gloo), so N > 1 helps only as far as one process leaves cores idle.

    python bench/bench_distributed.py FOLDER [--procs 1 2] [--model efficientnet_lite0] [--device auto] [--train-epochs 0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--backbone", default="small_cnn", help="for --train-epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-epochs", type=int, default=0)
    args = parser.parse_args()

    from retrieval_app.data import scan_folder

    n_images = len(scan_folder(args.folder).records)
    print(f"{n_images} images in {args.folder}; model {args.model}; device {args.device}; {os.cpu_count()} CPUs")
    for procs in args.procs:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   "RETRIEVAL_APP_CACHE_DIR": str(Path(tmp) / "cache"), "RETRIEVAL_APP_MODELS_DIR": str(Path(tmp) / "models")}
            if procs > 1 and args.device in ("auto", "cpu"):
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable]
            embed = timed([*launcher, "-m", "retrieval_app", "embed", args.folder, "--model", args.model, "--device", args.device,
                           "--batch-size", str(args.batch_size)], env)
            line = f"{procs} process{'es' if procs > 1 else ''}: embed {embed:.1f} s ({n_images / embed:.1f} images/s end to end)"
            if args.train_epochs:
                train = timed([*launcher, "-m", "retrieval_app", "train", args.folder, "--backbone", args.backbone, "--mode", "full",
                               "--epochs", str(args.train_epochs), "--device", args.device, "--out", str(Path(tmp) / "models" / "bench")], env)
                line += f"; train {args.train_epochs} epochs {train:.1f} s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
