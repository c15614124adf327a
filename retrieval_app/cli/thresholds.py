"""The threshold flags of `verify` and `search --reject-unknown`, and where a threshold
comes from: `--threshold`, else a calibration file (`calibrate --out`), else the one
stored in the checkpoint by training (or by `calibrate --save`).

Light imports only: every parser is built from this module."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import RetrievalAppError


def add_threshold_arguments(parser: argparse.ArgumentParser, *, far_help: str) -> None:
    parser.add_argument("--calibration", default=None, metavar="FILE.json", help="a calibration written by `retrieval-app calibrate --out` (default: the one stored in the checkpoint)")
    parser.add_argument("--threshold", type=float, default=None, help="a distance threshold of your own (in the model's training distance)")
    parser.add_argument("--far", type=_rate, default=None, metavar="RATE", help=far_help)


def load_calibration(args: argparse.Namespace, *, required: bool):
    """The calibration `--calibration` or the checkpoint names, or None."""
    from ..training.checkpoint import checkpoint_verification
    from ..verification import Calibration

    if args.calibration is not None:
        path = Path(args.calibration)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RetrievalAppError(f"cannot read calibration {args.calibration}: {getattr(exc, 'strerror', None) or exc}") from None
        return Calibration.from_dict(data.get("verification", data) if isinstance(data, dict) else {})
    calibration = checkpoint_verification(args.model)
    if calibration is None and required and args.threshold is None:
        raise RetrievalAppError(
            f"no verification threshold for {args.model}: it has no calibration (bare backbones and models trained before "
            f"calibration existed); run `retrieval-app calibrate FOLDER --model {args.model} --out cal.json` and pass "
            "--calibration cal.json, or give --threshold"
        )
    return calibration


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a rate must be between 0 and 1 (exclusive), got {value}")
    return value
