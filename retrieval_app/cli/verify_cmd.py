"""`retrieval-app verify IMAGE_A IMAGE_B --model M [--threshold T | --far F] [--json]`:
are two images the same identity?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import RetrievalAppError
from .common import add_model_arguments
from .report import printable
from .thresholds import add_threshold_arguments, load_calibration


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="are two images the same identity? (distance against a calibrated threshold)",
        description="Embed two images with a model and compare their distance (the model's training distance) "
        "with its verification threshold: the one calibrated by training (the equal-error point on held-out pairs), "
        "a calibration file, or your own.",
    )
    parser.add_argument("image_a", metavar="IMAGE_A")
    parser.add_argument("image_b", metavar="IMAGE_B")
    add_model_arguments(parser)
    add_threshold_arguments(parser, far_help="use the calibration's threshold for this false-accept rate instead of its equal-error point, e.g. 0.001")
    parser.add_argument("--json", action="store_true", help="print one JSON object: distance, threshold, same, far, tar, ...")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for image in (args.image_a, args.image_b):
        if not Path(image).is_file():
            raise RetrievalAppError(f"image {image} does not exist")
    from ..device import select_device
    from ..retrieval.embed import embed_images
    from ..training.checkpoint import checkpoint_distance
    from ..verification import verification_distance, verify_embeddings
    from .common import load_network

    device = select_device(args.device)
    calibration = load_calibration(args, required=True)
    threshold = args.threshold
    if threshold is None and args.far is not None:
        threshold = calibration.threshold_for_far(args.far)
    net = load_network(args, device)
    a, b = embed_images(net, [args.image_a, args.image_b], device=device)
    distance = calibration.distance if calibration is not None else verification_distance(checkpoint_distance(args.model))
    verdict = verify_embeddings(a, b, calibration, threshold=threshold, distance=distance)
    if args.json:
        print(json.dumps({"image_a": args.image_a, "image_b": args.image_b, "model": str(args.model), **verdict.to_dict()}))
        return 0
    where = "your threshold" if args.threshold is not None else (f"at FAR {args.far:g}" if args.far is not None else "the calibrated equal-error point")
    rates = f"; calibration: FAR {verdict.far:.4f}, TAR {verdict.tar:.3f} there" if verdict.far is not None else ""
    answer = "same identity" if verdict.same else "different identities"
    print(f"{answer}: distance {verdict.distance:.4f} {'≤' if verdict.same else '>'} threshold {verdict.threshold:.4f} ({verdict.distance_name}, {where}{rates})")
    print(f"  {printable(args.image_a)}  vs  {printable(args.image_b)}")
    return 0
