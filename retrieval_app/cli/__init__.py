"""`retrieval-app` command line. Each sub-command lives in its own module with a
`register(subparsers)` function that adds its parser and sets `func` to a handler
`handler(args) -> int`. Errors meant for the user become one line on stderr.

Building the parsers imports no torch, torchvision, gradio or umap (the choices come
from `retrieval_app.choices`; handlers import what they need when they run), so
`--help` and argument errors answer at once; `tests/test_cli_startup.py` checks it."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import RetrievalAppError

# Sub-command modules, in the order `--help` lists them. A module missing here simply
# is not offered (keeps the CLI usable while parts are developed).
SUBCOMMAND_MODULES = ("ui", "train", "eval", "embed", "search", "map", "export", "verify", "calibrate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrieval-app",
        description="Image similarity search with triplet-loss metric learning. "
        "Without a sub-command, opens the app on sample_data/.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}_cmd":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Bare `retrieval-app [ui options]` opens the app: the default sub-command is `ui`.
    if "ui" in _choices(parser) and not (argv and (argv[0] in _choices(parser) or argv[0] in ("-h", "--help"))):
        argv = ["ui", *argv]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .common import for_command_line
    from .report import quiet_pillow_size_warnings

    try:
        with quiet_pillow_size_warnings():
            return int(args.func(args) or 0)
    except RetrievalAppError as exc:
        print(f"error: {for_command_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._subparsers._group_actions:  # argparse keeps sub-commands here
        return set(action.choices)
    return set()


def run() -> None:
    sys.exit(main())
