"""`retrieval-app embed FOLDER --model M [--out FILE.npz]`"""

from __future__ import annotations

import argparse
import sys

from .common import add_model_arguments, build_gallery


def register(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="embed a folder (cached) and optionally save the embeddings", description="Embed every image of FOLDER with a model; unchanged files come from the cache.")
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--out", default=None, help="write embeddings + ids/classes/paths to this .npz")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval import export_embeddings

    scan, gallery = build_gallery(args.folder, args)
    print(f"{len(gallery)} images embedded ({gallery.embeddings.shape[1]} dims): {gallery.n_cached} from cache, {gallery.n_computed} computed")
    for path, reason in [*((s.path, s.reason) for s in scan.skipped), *gallery.failures]:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    if args.out:
        written = export_embeddings(gallery.records, gallery.embeddings, args.out, "npz")
        print(f"wrote {written[0]}")
    return 0
