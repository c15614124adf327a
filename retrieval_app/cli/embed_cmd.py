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
    from ..distributed import Distributed
    from ..retrieval.export import check_output_path, export_embeddings

    if args.out:
        check_output_path(args.out, "npz")  # before embedding, not after
    # Under torchrun: each rank embeds a shard into the cache, rank 0 merges and goes on.
    with Distributed.from_env(args.device) as distributed:
        shards = _embed_shards(args, distributed) if distributed.enabled else None
        if not distributed.is_main:
            return 0
    _, gallery = build_gallery(args.folder, args)
    counts = gallery if shards is None else shards  # after shards, the gallery found everything cached
    removed = f", {counts.n_removed} removed files dropped from the cache" if counts.n_removed else ""
    n_cached, n_computed = counts.n_cached, counts.n_computed
    by = "" if shards is None else f" by {distributed.world_size} processes"
    what = f"in {len(gallery.classes)} classes" if gallery.labelled else "without labels"
    print(f"{len(gallery)} images {what} embedded{by} ({gallery.embeddings.shape[1]} dims): "
          f"{n_cached} from cache, {n_computed} computed{removed}")
    if args.out:
        (written,) = export_embeddings(gallery.records, gallery.embeddings, args.out, "npz", classes=gallery.classes)
        print(f"wrote {printable(written)}")
    return 0


def _embed_shards(args: argparse.Namespace, distributed):
    """Every rank embeds its shard of the folder into the cache; rank 0 merges them and
    gets the counts (the others None). Rank 0 then builds the gallery from the cache."""
    from ..data import scan_folder
    from ..device import select_device
    from ..retrieval.sharded import sharded_cached_embeddings
    from .common import load_network

    device = select_device(distributed.device_preference(args.device))
    scan = scan_folder(args.folder)
    net = load_network(args, device)
    return sharded_cached_embeddings(net, scan.records, distributed, everyone=False, device=device, batch_size=args.batch_size)
