"""`retrieval-app train FOLDER --out models/NAME ...`"""

from __future__ import annotations

import argparse
import threading

# Light imports only: the parser is built from these (see cli/__init__.py).
from ..choices import (
    BACKBONES,
    DEFAULT_BACKBONE,
    DEFAULT_DISTANCE,
    DEFAULT_MINING,
    DEFAULT_REDUCTION,
    DEFAULT_TRAIN_MODE,
    DISTANCES,
    HEADS,
    MINING_STRATEGIES,
    PRESETS,
    REDUCTIONS,
    TRAIN_MODES,
)
from ..paths import models_dir
from .common import add_device_argument, add_layout_arguments, add_weights_argument, open_folder_of


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune an embedding network with a triplet loss", description="Train an embedding network on FOLDER (one sub-folder per class) with a triplet loss; the best model is kept in --out.")
    parser.add_argument("folder", help="image folder: one sub-folder per class, or images without labels (see --unlabelled, --labels)")
    parser.add_argument("--preset", default=None, choices=PRESETS, help="a named recipe that fills every setting you leave at its default; facenet: unit-norm 128-d linear head, squared Euclidean distance, margin 0.2, loss summed over semi-hard triplets")
    parser.add_argument("--out", default=None, help="checkpoint folder (default: models/<folder name>)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=BACKBONES)
    parser.add_argument("--mode", default=DEFAULT_TRAIN_MODE, choices=TRAIN_MODES, help="quick: frozen backbone, head only (seconds on a CPU); full: end to end; auto: quick for pretrained backbones")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension of the linear and mlp heads (default 128; the identity head keeps the backbone's)")
    parser.add_argument("--head", default=None, choices=HEADS, help="identity: full-dimension map starting as the backbone (default for pretrained backbones); linear: PCA-started map to --dim (default from scratch); mlp")
    add_weights_argument(parser)
    parser.add_argument("--distance", default=DEFAULT_DISTANCE, choices=DISTANCES)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--mining", default=DEFAULT_MINING, choices=MINING_STRATEGIES)
    parser.add_argument("--reduction", default=DEFAULT_REDUCTION, choices=REDUCTIONS)
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training images; default: 100 per run (quick) / 10 (full), or set by --time-budget alone")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="quick: the whole selection and refit fit in it; full: stop after this long, keeping the best epoch")
    parser.add_argument("--patience", type=int, default=8, help="full mode: stop after this many epochs without a better validation score")
    parser.add_argument("--folds", type=int, default=3, help="quick mode: class folds that estimate new-class retrieval and choose length and blend (default 3)")
    parser.add_argument("--no-class-gate", dest="class_gate", action="store_false", help="quick mode: never append the class gate's part (a class-probability vector for images that look like your classes; kept only when the class folds show it helps)")
    parser.add_argument("--blend", type=_blend, default=None, metavar="auto|W", help="quick mode: where on the specialise-generalise dial to keep the model: auto (the recommended point, default) or W in [0, 1] (0 = the backbone, 1 = the fully trained head)")
    parser.add_argument("--lr-decay", action=argparse.BooleanOptionalAction, default=True, help="full mode: the learning rate decays (half cosine) over a run with a time budget or a number of epochs (default: on)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="full mode: random crops of the training images (default: on for a pretrained backbone, off from scratch)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples-per-class", type=int, default=4, help="K in the P×K batch sampler")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)
    parser.add_argument("--workers", type=int, default=None, help="data-loading worker processes")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--views", type=int, default=4, help="without labels: augmented views per image whose backbone features quick mode trains on (default 4)")
    add_layout_arguments(parser)
    parser.add_argument("--live-map-every", type=float, default=1.0, metavar="SECONDS", help="record a live map frame (a subsample of the images laid out in 2-D) at most this often, into --out/frames.npz for `map --animate` (default 1; 0: off)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import Distributed

    # Under torchrun: one process group for the whole command (see distributed.py).
    with Distributed.from_env(args.device) as distributed:
        return _train(args, distributed)


def _train(args: argparse.Namespace, distributed) -> int:
    from pathlib import Path

    from ..training import TrainConfig, Trainer
    from .progress import TrainingProgressPrinter
    from .report import printable, report_left_out

    out = args.out or str(models_dir() / Path(args.folder).resolve().name)
    config = TrainConfig(
        folder=args.folder, out_dir=out, backbone=args.backbone, mode=args.mode, dim=args.dim, head=args.head,
        weights=args.weights, distance=args.distance, margin=args.margin, mining=args.mining,
        reduction=args.reduction, epochs=args.epochs, time_budget=args.time_budget, patience=args.patience,
        batch_size=args.batch_size, samples_per_class=args.samples_per_class, lr=args.lr, seed=args.seed,
        device=distributed.device_preference(args.device), num_workers=args.workers, resume=args.resume, folds=args.folds, blend=args.blend, class_gate=args.class_gate, augment=args.augment, lr_decay=args.lr_decay,
        preset=args.preset,
        layout="unlabelled" if args.unlabelled else None, labels=args.labels, views=args.views,
    ).validate()  # bad values fail before the folder is scanned
    if not distributed.is_main:  # rank 0 reports; the others train in silence
        Trainer(config, distributed=distributed).run()
        return 0
    # The trainer scans the folder again; scanning here first lists what it will leave out.
    report_left_out(open_folder_of(args.folder, args))
    cancel = threading.Event()
    with TrainingProgressPrinter() as printer:
        try:
            callbacks = _live_map(args.live_map_every) if distributed.is_main else []  # rank 0 alone records frames
            result = Trainer(config, on_event=printer, cancel=cancel, distributed=distributed, callbacks=callbacks).run()
        except KeyboardInterrupt:
            cancel.set()
            raise
    print(printable(result.summary))
    if result.dial is not None and result.dial.points:
        print(dial_table(result.dial))
    if result.verification is not None:
        print("verification: " + printable(result.verification.summary()) + f"; from {printable(result.verification.source)}")
        if result.verification.open_set:
            from ..identification import OpenSetReport

            print(printable(OpenSetReport(**result.verification.open_set).summary()))
    print(f"model: {printable(result.model_path) if result.model_path else 'none saved (the backbone stays the better choice)'}")
    return 0


def _live_map(every: float) -> list:
    if every <= 0:
        return []
    from ..training.live_map import LiveMap

    return [LiveMap(every)]


def _blend(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"blend must be in [0, 1], got {value}")
    return value


def dial_table(dial) -> str:
    """The dial as text: MAP@R estimates on the user's classes and on new classes, per
    blend at the refit length, the baseline first; the kept point is marked."""
    step = dial.refit_step()
    lines = [f"dial at {step} steps (MAP@R estimated over {dial.n_folds or 'no'} class folds)", "   blend   your classes   new classes"]
    lines.append(f"  backbone      {_fmt(dial.baseline_seen)}         {_fmt(dial.baseline_unseen)}")
    chosen = dial.chosen
    for point in dial.curve_over_blend(step):
        if point.blend == 0.0:
            continue
        mark = "  <- kept" if chosen is not None and point.blend == chosen.blend and point.step == chosen.step else ""
        mark = mark or ("  (recommended)" if dial.recommended is not None and point == dial.recommended else "")
        lines.append(f"    {point.blend:4.2f}      {_fmt(point.seen)}         {_fmt(point.unseen)}{mark}")
    gate = dial.gate
    if gate is not None:
        lines.append(f"  + gate      {_fmt(gate['seen'])}         {_fmt(gate['unseen'])}  (class gate, weight {gate['weight']:g}, familiarity from {gate.get('familiarity', 'class means')}, at blend {gate['blend']:.2f})")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"
