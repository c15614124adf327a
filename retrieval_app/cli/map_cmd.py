"""`retrieval-app map FOLDER [--model M] [--weights FILE] [--method umap|pca|tsne] --out map.html`,
and `retrieval-app map --animate --model models/NAME --out training.html`: the live map
frames a training run saved, as an animation."""

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
    parser.add_argument("folder", nargs="?", help="image folder (one sub-folder per class); not needed with --animate")
    add_model_arguments(parser)
    parser.add_argument("--method", default="umap", choices=PROJECTION_METHODS, help="default umap")
    parser.add_argument("--seed", type=int, default=0, help="random seed of UMAP / t-SNE (same seed, same map)")
    parser.add_argument("--out", default="map.html", metavar="FILE.html")
    parser.add_argument("--animate", action="store_true", help="animate the training of --model (a checkpoint folder): the live map frames its run saved (frames.npz), with a slider and a play button")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval import compute_projection, export_map_html
    from ..retrieval.export import check_output_path

    check_output_path(args.out, "html")  # before embedding, not after
    if args.animate:
        return animate(args)
    if args.folder is None:
        from ..errors import RetrievalAppError

        raise RetrievalAppError("map needs a FOLDER (or --animate with a trained --model)")
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


def animate(args: argparse.Namespace) -> int:
    """The frames saved by the training run in `--model`, as a standalone animation."""
    from pathlib import Path

    from ..retrieval.map_animation import export_animation_html
    from ..training.map_frames import load_frames

    frames = load_frames(args.model)
    title = f"{Path(args.model).name}: the space learning, {len(frames[0].points)} images · "
    out = export_animation_html(frames, args.out, title=title)
    print(f"wrote {printable(out)} ({len(frames)} frames)")
    return 0
