"""`retrieval-app train FOLDER --out models/NAME ...`"""

from __future__ import annotations

import argparse
import threading

# Light imports only: the parser is built from these (see cli/__init__.py).
from ..choices import BACKBONES, DEFAULT_BACKBONE, DISTANCES, HEADS, MINING_STRATEGIES, REDUCTIONS, TRAIN_MODES
from ..paths import models_dir
from .common import add_device_argument, add_weights_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune an embedding network with a triplet loss", description="Train an embedding network on FOLDER (one sub-folder per class) with a triplet loss; the best model is kept in --out.")
    parser.add_argument("folder", help="image folder: one sub-folder per class")
    parser.add_argument("--out", default=None, help="checkpoint folder (default: models/<folder name>)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=BACKBONES)
    parser.add_argument("--mode", default="auto", choices=TRAIN_MODES, help="quick: frozen backbone, head only (seconds on a CPU); full: end to end; auto: quick for pretrained backbones")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    parser.add_argument("--head", default="linear", choices=HEADS)
    add_weights_argument(parser)
    parser.add_argument("--distance", default="euclidean", choices=DISTANCES)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--mining", default="batch_all", choices=MINING_STRATEGIES)
    parser.add_argument("--reduction", default="mean", choices=REDUCTIONS)
    parser.add_argument("--epochs", type=int, default=None, help="default: 30 (quick) / 10 (full), or unbounded with --time-budget alone")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop after this long; the best model so far is kept")
    parser.add_argument("--patience", type=int, default=8, help="stop after this many epochs without a better validation score")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples-per-class", type=int, default=4, help="K in the P×K batch sampler")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)
    parser.add_argument("--workers", type=int, default=None, help="data-loading worker processes")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import scan_folder
    from ..training import TrainConfig, Trainer
    from .progress import TrainingProgressPrinter
    from .report import printable, report_left_out

    out = args.out or str(models_dir() / Path(args.folder).resolve().name)
    config = TrainConfig(
        folder=args.folder, out_dir=out, backbone=args.backbone, mode=args.mode, dim=args.dim, head=args.head,
        weights=args.weights, distance=args.distance, margin=args.margin, mining=args.mining,
        reduction=args.reduction, epochs=args.epochs, time_budget=args.time_budget, patience=args.patience,
        batch_size=args.batch_size, samples_per_class=args.samples_per_class, lr=args.lr, seed=args.seed,
        device=args.device, num_workers=args.workers, resume=args.resume,
    ).validate()  # bad values fail before the folder is scanned
    # The trainer scans the folder again; scanning here first lists what it will leave out.
    report_left_out(scan_folder(args.folder))
    cancel = threading.Event()
    with TrainingProgressPrinter() as printer:
        try:
            result = Trainer(config, on_event=printer, cancel=cancel).run()
        except KeyboardInterrupt:
            cancel.set()
            raise
    print(printable(result.summary))
    print(f"model: {printable(result.model_path)}")
    return 0
