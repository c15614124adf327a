"""`retrieval-app export FOLDER [--model M] [--weights FILE] --format npz|csv|parquet|projector --out PATH`"""

from __future__ import annotations

import argparse

from ..choices import EXPORT_FORMATS
from .common import add_model_arguments, build_gallery
from .report import printable


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export embeddings + metadata",
        description="Export FOLDER's embeddings with each image's id, class and path: .npz, CSV, Parquet "
        "(needs pyarrow), or TensorBoard Embedding Projector's vectors.tsv + metadata.tsv (PATH is then a folder).",
    )
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--out", required=True, metavar="PATH")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.export import check_output_path, export_embeddings

    # Both before embedding, not after.
    check_output_path(args.out, args.format)
    if args.format == "parquet":
        _require_pyarrow()
    _, gallery = build_gallery(args.folder, args)
    for path in export_embeddings(gallery.records, gallery.embeddings, args.out, args.format, classes=gallery.classes):
        print(f"wrote {printable(path)}")
    return 0


def _require_pyarrow() -> None:
    from ..errors import RetrievalAppError

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise RetrievalAppError("Parquet export needs pyarrow: pip install 'retrieval-app[parquet]' (or use --format npz/csv)") from None
