"""`retrieval-app export FOLDER --model M --format npz|csv|parquet|projector --out PATH`"""

from __future__ import annotations

import argparse

from ..retrieval.export import FORMATS
from .common import add_model_arguments, build_gallery


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export embeddings + metadata", description="Export FOLDER's embeddings with id/class/path: .npz, CSV, Parquet, or TensorBoard Projector's vectors.tsv + metadata.tsv (PATH is then a folder).")
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, metavar="PATH")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval import export_embeddings

    _, gallery = build_gallery(args.folder, args)
    for path in export_embeddings(gallery.records, gallery.embeddings, args.out, args.format):
        print(f"wrote {path}")
    return 0
