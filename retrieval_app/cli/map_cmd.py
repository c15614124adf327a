"""`retrieval-app map FOLDER --model M [--method umap|pca|tsne] --out map.html`"""

from __future__ import annotations

import argparse

from ..retrieval.projection import METHODS
from .common import add_model_arguments, build_gallery


def register(subparsers) -> None:
    parser = subparsers.add_parser("map", help="a standalone interactive HTML map of the embedding space", description="Lay out FOLDER's embeddings in 2-D and write an interactive HTML map (opens offline).")
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--method", default="umap", choices=METHODS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="map.html")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval import compute_projection, export_map_html

    _, gallery = build_gallery(args.folder, args)
    projection = compute_projection(gallery.embeddings, args.method, seed=args.seed)
    if projection.note:
        print(projection.note)
    out = export_map_html(gallery.records, projection.coords, gallery.classes, args.out, title=f"{args.folder} — {projection.method.upper()} of {args.model}")
    print(f"wrote {out}")
    return 0
