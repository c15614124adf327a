"""`retrieval-app eval FOLDER --model M [--json]`: leave-one-out retrieval metrics."""

from __future__ import annotations

import argparse
import json

from ..evaluation import evaluate_folder


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="retrieval metrics of a model over a folder", description="Leave-one-out retrieval metrics (P@1, Recall@K, R-Precision, MAP@R) of a model over FOLDER. A bare backbone name means its pretrained features with no head: the honest 'before' of any fine-tuning.")
    parser.add_argument("folder")
    parser.add_argument("--model", required=True, help="a checkpoint (models/NAME or a .pt file) or a backbone name")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = evaluate_folder(args.folder, args.model, batch_size=args.batch_size, device=args.device)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"{report['n_images']} images, {report['n_classes']} classes, model {args.model}")
    for key in ("precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r"):
        print(f"  {key:<15} {report[key]:.4f}")
    if report.get("n_skipped"):
        print(f"  ({report['n_skipped']} unreadable files skipped)")
    return 0
