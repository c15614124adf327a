"""`retrieval-app eval FOLDER [--model M] [--weights FILE] [--json]`: leave-one-out retrieval metrics."""

from __future__ import annotations

import argparse
import json

from .common import add_model_arguments, build_gallery

METRIC_KEYS = ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r")


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="retrieval metrics of a model over a folder", description="Leave-one-out retrieval metrics (P@1, Recall@K, R-Precision, MAP@R) of a model over FOLDER. A bare backbone name (the default) means its pretrained features with no head: the honest 'before' of any fine-tuning.")
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_gallery

    scan, gallery = build_gallery(args.folder, args, quiet=args.json)
    report = {**evaluate_gallery(gallery), "model": str(args.model), "n_skipped": len(scan.skipped) + len(gallery.failures)}
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    if not report["labelled"]:  # nothing to measure: said, not an error
        print(f"{report['n_images']} images, model {args.model}: {report['note']}")
        return 0
    partly = f" ({report['n_labelled']} labelled)" if report["n_labelled"] < report["n_images"] else ""
    print(f"{report['n_images']} images{partly}, {report['n_classes']} classes, model {args.model}")
    for key in METRIC_KEYS:
        print(f"  {key:<15} {report[key]:.4f}")
    return 0
