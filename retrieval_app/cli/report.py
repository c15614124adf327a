"""What every command tells the user about files it left out: one function, so `embed`,
`eval`, `search`, `map`, `export` and `train` report the same things the same way.

All of it goes to stderr (stdout stays parseable for `--json`), one line per item:

    skipped cats/broken.jpg: file is truncated
    skipped .DS_Store.jpg: hidden file
    warning: class 'owls' has only one image: it cannot be an anchor for training

The scan's skipped files (unreadable, hidden, loose in the root, broken links), its
warnings (empty and one-image classes, very large images) and the files that failed
while embedding are all listed, never only counted."""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, TextIO


def printable(text: object) -> str:
    """`text` safe to print on any terminal: a file name that is not valid UTF-8 (lone
    surrogates in Python) shows its bytes as `\\xff` escapes instead of crashing print."""
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")


def report_left_out(scan, failures: Iterable[tuple[str, str]] = (), *, stream: TextIO | None = None) -> int:
    """Print `scan`'s skipped files and warnings and the embedding `failures` as
    (path, reason); returns how many files were left out in all."""
    stream = stream if stream is not None else sys.stderr
    left_out = [(s.path, s.reason) for s in scan.skipped] + [(_relative(path, scan.root), reason) for path, reason in failures]
    for path, reason in left_out:
        print(f"skipped {printable(path)}: {printable(reason)}", file=stream)
    for warning in scan.warnings:
        print(f"warning: {printable(warning)}", file=stream)
    return len(left_out)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


@contextmanager
def quiet_pillow_size_warnings():
    """Silence Pillow's `DecompressionBombWarning` while a command runs: it names no file
    and would reach stderr raw; the folder scan reports each very large image itself as
    a warning with its path (see `data.scan`)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield
