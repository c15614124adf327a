"""`retrieval-app calibrate FOLDER --model M [--out FILE.json] [--save] [--json]`: the
verification threshold, ROC, EER, TAR at FAR and open-set identification rates of a
model on a labelled folder it did not train on (for a bare backbone, any folder)."""

from __future__ import annotations

import argparse
import json

from ..errors import RetrievalAppError
from .common import add_model_arguments, build_gallery
from .report import printable


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="verification threshold, ROC, EER and open-set rates of a model on a folder",
        description="Every pair of images of FOLDER (one sub-folder per identity) is a genuine pair (same identity) "
        "or an impostor pair; the threshold is the equal-error point of their distances. Use images the model did "
        "not train on. Also reports open-set identification: half the identities play unknown people, and the "
        "detection-and-identification rate (DIR) is given at false-alarm rates 0.01 and 0.001.",
    )
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write the calibration here (for `verify --calibration`)")
    parser.add_argument("--save", action="store_true", help="store the calibration in the checkpoint (not for a bare backbone)")
    parser.add_argument("--seed", type=int, default=0, help="which identities play unknown people in the open-set report")
    parser.add_argument("--json", action="store_true", help="print the calibration as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_json
    from ..training.checkpoint import add_to_checkpoint, checkpoint_distance, is_backbone_name
    from ..training.calibration import calibrate_labelled
    from ..verification import verification_distance

    if args.save and is_backbone_name(args.model):
        raise RetrievalAppError(f"--save stores the calibration in a checkpoint; {args.model} is a bare backbone: use --out FILE.json")
    distance = verification_distance(checkpoint_distance(args.model))
    _, gallery = build_gallery(args.folder, args, quiet=args.json)
    calibration = calibrate_labelled(gallery.embeddings, gallery.labels, distance, seed=args.seed, source=f"every pair of {gallery.root.name}/ ({len(gallery)} images)")
    if args.out:
        atomic_write_json(args.out, calibration.to_dict())
    if args.save:
        add_to_checkpoint(args.model, verification=calibration.to_dict())
    if args.json:
        print(json.dumps(calibration.to_dict()))
        return 0
    print(printable(calibration.summary()))
    if calibration.open_set:
        from ..identification import OpenSetReport

        print(printable(OpenSetReport(**calibration.open_set).summary()))
    for note, path in (("wrote", args.out), ("stored in", args.model if args.save else None)):
        if path:
            print(f"{note} {printable(path)}")
    return 0

