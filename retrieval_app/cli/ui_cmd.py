"""`retrieval-app ui [FOLDER]` (and bare `retrieval-app`): the browser app."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import DEFAULT_TRAINING_RUNNER, TRAINING_RUNNERS
from ..errors import RetrievalAppError


def register(subparsers) -> None:
    parser = subparsers.add_parser("ui", help="open the app in the browser (default command)", description="Launch the Gradio app on FOLDER (default: sample_data/).")
    parser.add_argument("folder", nargs="?", default=None, help="image folder to open (default: sample_data/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: the local network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public link (login required, folders restricted)")
    parser.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login (with --share a password is generated when omitted)")
    parser.add_argument("--data-root", action="append", default=None, metavar="FOLDER", help="folders that may be loaded in share mode (repeatable; default: FOLDER and sample_data/)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--training-runner", default=DEFAULT_TRAINING_RUNNER, choices=TRAINING_RUNNERS, help="where the app's training runs go: process (default: a crash cannot take the app down) or thread (inside the server)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..paths import sample_data_dir

    folder = Path(args.folder).expanduser().resolve() if args.folder else sample_data_dir()
    if not folder.is_dir():  # checked before gradio loads: a mistyped command fails at once
        raise RetrievalAppError(f"folder {folder} does not exist")
    from ..ui.launch import launch_app

    launch_app(folder=folder, host=args.host, port=args.port, share=args.share, auth=args.auth, data_roots=args.data_root, open_browser=not args.no_browser,
               training_runner=args.training_runner)
    return 0
