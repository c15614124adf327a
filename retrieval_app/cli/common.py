"""Flags and steps several sub-commands share: the model flags (`--model`, `--weights`,
`--batch-size`, `--device`), loading the model they name, and building a gallery.

Only light modules are imported at the top: every parser is built from this module, and
`--help` or a bad argument must answer without importing torch."""

from __future__ import annotations

import argparse

from ..choices import DEFAULT_BACKBONE

MODEL_HELP = "a checkpoint (models/NAME, a folder with model.pt, or a .pt file) or a backbone name (its pretrained features)"
DEVICE_HELP = "auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
WEIGHTS_HELP = "a local weights file (a state_dict .pth) for the backbone, instead of downloading its ImageNet weights (for ResNets when offline)"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, metavar="FILE", help=WEIGHTS_HELP)


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """How the folder is read: class folders (default; a flat folder of images opens
    without labels by itself), every image without labels, or labels from a CSV."""
    parser.add_argument("--unlabelled", action="store_true", help="use every image below the folder without labels, whatever its sub-folders (a flat folder of images is read this way anyway)")
    parser.add_argument("--labels", default=None, metavar="FILE.csv", help="labels from a CSV of id,label rows (id = the image's path relative to the folder); images it does not name have no label")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that embeds images with an existing model."""
    parser.add_argument("--model", default=DEFAULT_BACKBONE, help=f"{MODEL_HELP} (default: {DEFAULT_BACKBONE})")
    add_weights_argument(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_device_argument(parser)
    add_layout_arguments(parser)


def open_folder_of(folder: str, args: argparse.Namespace):
    """The folder scanned as the layout flags say (`add_layout_arguments`)."""
    from ..data.labels_csv import open_folder

    return open_folder(folder, layout="unlabelled" if getattr(args, "unlabelled", False) else None, labels=getattr(args, "labels", None))


def load_network(args: argparse.Namespace, device):
    """The embedding network `--model` names; with `--weights`, a bare backbone's
    pretrained features come from that file instead of the packaged / downloaded ones."""
    from ..training.checkpoint import is_backbone_name, load_embedder

    if args.weights is None:
        return load_embedder(args.model, device=device)
    if not is_backbone_name(args.model):
        from ..errors import ModelError

        raise ModelError(f"--weights applies to a backbone name, not to the checkpoint '{args.model}' (a checkpoint holds its own weights)")
    from ..networks import create_model

    # What load_embedder builds for a bare name (pooled features, no head, L2-normalised),
    # with the backbone's weights from the user's file.
    net = create_model(args.model, head=None, normalize=True, pretrained=True, weights=args.weights)
    return net.eval().to(device)


def build_gallery(folder: str, args: argparse.Namespace, *, quiet: bool = False, backend: str = "auto"):
    """Scan, load the model, embed (cached) with a progress bar, then report every file
    left out; returns (scan, gallery). `backend`: the search index (`choices.SEARCH_BACKENDS`)."""
    from tqdm import tqdm

    from ..device import select_device
    from ..retrieval import Gallery
    from ..training.checkpoint import checkpoint_distance
    from .report import report_left_out

    device = select_device(args.device)  # a bad --device fails before any work
    scan = open_folder_of(folder, args)
    net = load_network(args, device)
    # disable=None: no bar when stderr is not a terminal (a log would fill with \r updates).
    with tqdm(total=len(scan.records), unit="img", desc="embedding", disable=True if quiet else None, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        gallery = Gallery.build(scan, net, distance=checkpoint_distance(args.model), progress=progress, device=device, batch_size=args.batch_size, backend=backend)
    report_left_out(scan, gallery.failures)
    return scan, gallery


def for_command_line(message: str) -> str:
    """An error message as one line in the command line's terms: the core's messages
    name Python arguments (`weights=FILE`) where a CLI user passes flags."""
    message = message.replace("weights=FILE", "--weights FILE")
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
