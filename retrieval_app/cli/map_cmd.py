"""`retrieval-app map FOLDER [--model M] [--weights FILE] [--method umap|pca|tsne] --out map.html`"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..choices import PROJECTION_METHODS
from .common import add_model_arguments, build_gallery
from .report import printable


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "map", help="a standalone interactive HTML map of the embedding space",
        description="Lay out FOLDER's embeddings in 2-D (UMAP, PCA or t-SNE) and write an interactive HTML map: "
        "one colour per class (per k-means cluster for a folder without labels), hover shows each image's id, class and path; opens offline.",
    )
    parser.add_argument("folder")
    add_model_arguments(parser)
    parser.add_argument("--method", default="umap", choices=PROJECTION_METHODS, help="default umap")
    parser.add_argument("--seed", type=int, default=0, help="random seed of UMAP / t-SNE (same seed, same map)")
    parser.add_argument("--out", default="map.html", metavar="FILE.html")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval import compute_projection, export_map_html
    from ..retrieval.export import check_output_path

    check_output_path(args.out, "html")  # before embedding, not after
    _, gallery = build_gallery(args.folder, args)
    projection = compute_projection(gallery.embeddings, args.method, seed=args.seed)
    if projection.note:
        print(projection.note)
    title = f"{gallery.root.name}: {projection.method.upper()} map of {len(gallery)} images, model {args.model}"
    groups, names, kind = gallery.colour_groups()
    if kind == "cluster":
        print(f"no labels: coloured by {len(names)} k-means clusters of the embeddings")
    records = [replace(r, label=int(g), class_name=names[g]) for r, g in zip(gallery.records, groups)]
    out = export_map_html(records, projection.coords, names, args.out, title=title)
    print(f"wrote {printable(out)}")
    return 0
