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
from .thresholds import add_threshold_arguments, load_calibration


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="nearest gallery images of query images",
        description="Find the k nearest images of the gallery FOLDER for each query image, ranked by the "
        "distance the model was trained with.",
    )
    parser.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    parser.add_argument("--gallery", required=True, metavar="FOLDER", help="a folder of class sub-folders, or of images without labels")
    add_model_arguments(parser)
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--backend", default="auto", choices=SEARCH_BACKENDS, help="the index: exact, ivf_flat, hnsw, ivf_pq (FAISS), or auto (exact below 50,000 images, IVF-Flat above); saved beside the embedding cache")
    parser.add_argument("--json", action="store_true", help="one JSON object per query per line: {query, neighbours: [{id, path, label, distance}]}")
    parser.add_argument("--reject-unknown", action="store_true", help="open-set identification: name each query's identity (its nearest image's class), or 'unknown' when that image is farther than the threshold (default: the calibration's open-set threshold at false-alarm rate 0.01)")
    add_threshold_arguments(parser, far_help="with --reject-unknown: the calibration's open-set threshold at this false-alarm rate (0.001, 0.01 or 0.1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise RetrievalAppError(f"-k must be at least 1, not {args.k}")
    for query in args.queries:
        if not Path(query).is_file():
            raise RetrievalAppError(f"query image {query} does not exist")
    _, gallery = build_gallery(args.gallery, args, quiet=args.json, backend=args.backend)
    print(gallery.index_summary(), file=sys.stderr)  # the backend and its measured recall; stdout stays clean
    vectors = gallery.embed_images(args.queries)
    results = gallery.neighbours_of_vectors(vectors, args.k)
    identities = identify_queries(args, gallery, vectors) if args.reject_unknown else [None] * len(results)
    for query, neighbours, who in zip(args.queries, results, identities):
        if args.json:
            hits = [{"id": n.id, "path": str(n.path), "label": n.label, "distance": n.distance} for n in neighbours]
            extra = {} if who is None else {"identity": who.identity, "nearest_distance": who.nearest_distance, "threshold": who.threshold, "threshold_distance": who.distance}
            print(json.dumps({"query": query, **extra, "neighbours": hits}))
        else:
            print_table(query, neighbours, gallery.distance)
            if who is not None:
                print(f"  identity: {printable(who.identity)} (nearest {printable(who.nearest_label)} at {who.nearest_distance:.4f} "
                      f"{'≤' if who.known else '>'} threshold {who.threshold:.4f}, {who.distance})")
    return 0


def identify_queries(args: argparse.Namespace, gallery, vectors):
    """Open-set answers for the query vectors: the threshold from --threshold, else the
    calibration's open-set threshold at --far (0.01 by default), else its verification
    threshold. The verification threshold is for one pair: against a whole gallery the
    nearest of many images is much closer than a typical impostor pair, so the open-set
    threshold (measured on nearest-neighbour distances) rejects strangers far better."""
    from ..identification import identify
    from ..verification import far_key

    calibration = load_calibration(args, required=True)
    threshold = args.threshold
    if threshold is None:
        open_set = calibration.open_set or {}
        at = open_set.get("threshold_at_far", {})
        key = far_key(args.far if args.far is not None else 0.01)
        if at.get(key) is not None:
            threshold = float(at[key])
        elif args.far is not None:
            raise RetrievalAppError(f"the calibration has no open-set threshold at false-alarm rate {key} (it has: {', '.join(k for k, v in at.items() if v is not None) or 'none'}); give --threshold")
        else:
            threshold = calibration.threshold
    classes = [gallery.classes[label] for label in gallery.labels]
    return identify(vectors, gallery.embeddings, classes, threshold, calibration.distance if calibration is not None else _distance(args))


def _distance(args) -> str:
    from ..training.checkpoint import checkpoint_distance
    from ..verification import verification_distance

    return verification_distance(checkpoint_distance(args.model))


def print_table(query: str, neighbours, distance: str) -> None:
    width = max([len(printable(n.label)) for n in neighbours] + [5])
    print(f"{printable(query)}  ({distance} distance)")
    print(f"  {'rank':>4}  {'distance':>8}  {'class':<{width}}  id")
    for rank, n in enumerate(neighbours, 1):
        print(f"  {rank:>4}  {n.distance:8.4f}  {printable(n.label):<{width}}  {printable(n.id)}")
