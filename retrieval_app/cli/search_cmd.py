"""`retrieval-app search QUERY_IMAGE... --gallery FOLDER [--model M] [--weights FILE] [-k 10] [--json]`"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..choices import SEARCH_BACKENDS
from ..errors import RetrievalAppError
from .common import add_model_arguments, build_gallery
from .report import printable


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="nearest gallery images of query images",
        description="Find the k nearest images of the gallery FOLDER for each query image, ranked by the "
        "distance the model was trained with.",
    )
    parser.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    parser.add_argument("--gallery", required=True, metavar="FOLDER", help="a folder of class sub-folders")
    add_model_arguments(parser)
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--backend", default="auto", choices=SEARCH_BACKENDS, help="the index: exact, ivf_flat, hnsw, ivf_pq (FAISS), or auto (exact below 50,000 images, IVF-Flat above); saved beside the embedding cache")
    parser.add_argument("--json", action="store_true", help="one JSON object per query per line: {query, neighbours: [{id, path, label, distance}]}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise RetrievalAppError(f"-k must be at least 1, not {args.k}")
    for query in args.queries:
        if not Path(query).is_file():
            raise RetrievalAppError(f"query image {query} does not exist")
    _, gallery = build_gallery(args.gallery, args, quiet=args.json, backend=args.backend)
    print(gallery.index_summary(), file=sys.stderr)  # the backend and its measured recall; stdout stays clean
    results = gallery.neighbours_of_images(args.queries, args.k)
    for query, neighbours in zip(args.queries, results):
        if args.json:
            hits = [{"id": n.id, "path": str(n.path), "label": n.label, "distance": n.distance} for n in neighbours]
            print(json.dumps({"query": query, "neighbours": hits}))
        else:
            print_table(query, neighbours, gallery.distance)
    return 0


def print_table(query: str, neighbours, distance: str) -> None:
    width = max([len(printable(n.label)) for n in neighbours] + [5])
    print(f"{printable(query)}  ({distance} distance)")
    print(f"  {'rank':>4}  {'distance':>8}  {'class':<{width}}  id")
    for rank, n in enumerate(neighbours, 1):
        print(f"  {rank:>4}  {n.distance:8.4f}  {printable(n.label):<{width}}  {printable(n.id)}")
