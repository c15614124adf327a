"""Pieces several sub-commands share: the model argument and building a gallery."""

from __future__ import annotations

import argparse

from tqdm import tqdm

MODEL_HELP = "a checkpoint (models/NAME, a folder with model.pt, or a .pt file) or a backbone name (its pretrained features)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0", help=MODEL_HELP + " (default: efficientnet_lite0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def build_gallery(folder: str, args: argparse.Namespace, *, quiet: bool = False):
    """Scan, load the model, embed (cached) with a progress bar; returns (scan, gallery)."""
    from ..data import scan_folder
    from ..device import select_device
    from ..retrieval import Gallery
    from ..training.checkpoint import checkpoint_distance, load_embedder

    scan = scan_folder(folder)
    device = select_device(args.device)
    net = load_embedder(args.model, device=device)
    with tqdm(total=len(scan.records), unit="img", desc="embedding", disable=quiet, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        gallery = Gallery.build(scan, net, distance=checkpoint_distance(args.model), progress=progress, device=device, batch_size=args.batch_size)
    return scan, gallery
