"""`retrieval-app search QUERY_IMAGE... --gallery FOLDER --model M [-k 10] [--json]`"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import RetrievalAppError
from .common import add_model_arguments, build_gallery


def register(subparsers) -> None:
    parser = subparsers.add_parser("search", help="nearest gallery images of query images", description="Find the k nearest images of FOLDER for each query image.")
    parser.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    parser.add_argument("--gallery", required=True, metavar="FOLDER")
    add_model_arguments(parser)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="one JSON object per query per line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise RetrievalAppError("-k must be at least 1")
    for query in args.queries:
        if not Path(query).is_file():
            raise RetrievalAppError(f"query image {query} does not exist")
    _, gallery = build_gallery(args.gallery, args, quiet=args.json)
    results = gallery.neighbours_of_images(args.queries, args.k)
    for query, neighbours in zip(args.queries, results):
        if args.json:
            print(json.dumps({"query": query, "neighbours": [{"id": n.id, "path": str(n.path), "label": n.label, "distance": n.distance} for n in neighbours]}))
        else:
            print(query)
            for rank, n in enumerate(neighbours, 1):
                print(f"  {rank:>3}. {n.distance:.4f}  {n.label:<20} {n.id}")
    return 0
