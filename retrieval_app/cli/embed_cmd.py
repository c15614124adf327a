"""`retrieval-app embed FOLDER [--model M] [--weights FILE] [--out FILE.npz] [--batch-size N] [--device D]`"""

from __future__ import annotations

import argparse

from .common import add_model_arguments, build_gallery
from .report import printable


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="embed a folder (cached) and optionally save the embeddings",
        description="Embed every image of FOLDER with a model. Unchanged files come from the on-disk cache, "
        "so a second run is near-instant; new or changed files are embedded alone.",
    )
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--out", default=None, metavar="FILE.npz", help="also write embeddings + ids/classes/paths to this .npz")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.export import check_output_path, export_embeddings

    if args.out:
        check_output_path(args.out, "npz")  # before embedding, not after
    _, gallery = build_gallery(args.folder, args)
    removed = f", {gallery.n_removed} removed files dropped from the cache" if gallery.n_removed else ""
    what = f"in {len(gallery.classes)} classes" if gallery.labelled else "without labels"
    print(f"{len(gallery)} images {what} embedded ({gallery.embeddings.shape[1]} dims): "
          f"{gallery.n_cached} from cache, {gallery.n_computed} computed{removed}")
    if args.out:
        (written,) = export_embeddings(gallery.records, gallery.embeddings, args.out, "npz", classes=gallery.classes)
        print(f"wrote {printable(written)}")
    return 0
