"""A selection of gallery images (a lasso or box on the map, a class, a list of ids) and
what is shown of it: its records page by page, a class histogram, a CSV of its ids.

The map, the app's API and scripts all go through these functions, so a selection made
in Python gives what the page shows:

    sel = select(gallery, [3, 17, 42])                  # or select_class(gallery, "cup")
    sel = select(gallery, [5], add_to=sel)              # shift: add to it
    class_histogram(gallery, sel)                       # [("cup", 2), ("pizza", 2)]
    selection_csv(gallery, sel)                         # "index,id,class\\n3,cup/…"

Selections hold gallery positions, unique, ordered by class (the classes' natural order)
and then by position, so the grid lists one class after another as the legend does."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..atomic import atomic_write_text
from ..data.scan import ImageRecord
from ..errors import RetrievalAppError
from .export import _utf8 as utf8_text
from .gallery import Gallery

CSV_COLUMNS = ("index", "id", "class")
PAGE_SIZE = 24


@dataclass(frozen=True)
class Selection:
    """Selected gallery positions (see the module docstring for their order)."""

    indices: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class Page:
    """One page of a selection: its gallery positions, its number (0-based) and how many
    pages there are (at least one, also for an empty selection)."""

    indices: tuple[int, ...]
    number: int
    n_pages: int
    first: int  # position of the page's first image in the selection (0-based)


def _ordered(gallery: Gallery, indices: Iterable[int]) -> Selection:
    unique = np.unique(np.asarray(list(indices), dtype=np.int64))
    order = np.lexsort((unique, gallery.labels[unique])) if len(unique) else unique
    return Selection(tuple(int(i) for i in unique[order]))


def select(gallery: Gallery, indices: Iterable, *, add_to: Selection | None = None) -> Selection:
    """The images at gallery positions `indices` (each checked: they come from a browser
    or a client), plus those of `add_to` when given (a shift-selection)."""
    checked = [gallery.check_index(_as_index(i)) for i in indices]
    return _ordered(gallery, checked + list(add_to.indices if add_to is not None else ()))


def _as_index(value):
    """An integral number as an int (JSON may send 3.0); anything else is left for
    `Gallery.check_index` to refuse with its message."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def select_class(gallery: Gallery, class_name: str) -> Selection:
    """Every image of class `class_name`."""
    try:
        label = gallery.classes.index(class_name)
    except ValueError:
        raise RetrievalAppError(f"no class '{class_name}' in this gallery") from None
    return _ordered(gallery, np.flatnonzero(gallery.labels == label))


def select_ids(gallery: Gallery, ids: Iterable[str]) -> Selection:
    """The images with these ids (paths relative to the folder)."""
    return _ordered(gallery, [gallery.index_of_id(i) for i in ids])


def selected_records(gallery: Gallery, selection: Selection) -> list[ImageRecord]:
    return [gallery.records[i] for i in selection.indices]


def class_histogram(gallery: Gallery, selection: Selection) -> list[tuple[str, int]]:
    """(class, images selected) for every class with at least one, in class order."""
    counts = np.bincount(gallery.labels[list(selection.indices)], minlength=len(gallery.classes)) if len(selection) else np.zeros(len(gallery.classes), dtype=np.int64)
    return [(name, int(c)) for name, c in zip(gallery.classes, counts) if c]


def page_of(selection: Selection, number: int, size: int = PAGE_SIZE) -> Page:
    """Page `number` (0-based, clamped to the pages there are) of `size` images."""
    size = max(1, int(size))
    n_pages = max(1, math.ceil(len(selection) / size))
    number = min(max(0, int(number)), n_pages - 1)
    first = number * size
    return Page(selection.indices[first:first + size], number, n_pages, first)


def selection_csv(gallery: Gallery, selection: Selection) -> str:
    """The selection as CSV text: header `CSV_COLUMNS`, one row per image (names that are
    not valid UTF-8 with their bytes escaped, as the other exports write them)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i in selection.indices:
        record = gallery.records[i]
        writer.writerow([i, utf8_text(record.id), utf8_text(record.class_name)])
    return out.getvalue()


def write_selection_csv(gallery: Gallery, selection: Selection, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, selection_csv(gallery, selection))
    return path


def find_images(gallery: Gallery, text: str) -> list[int]:
    """Gallery positions of the images `text` names: its exact id; else every image whose
    file name is `text` (any case; e.g. "image_0007.jpg" in several classes); else every
    id containing `text` (any case). Ordered by position; empty when nothing matches."""
    text = (text or "").strip()
    if not text:
        raise RetrievalAppError("type an image id or file name to find")
    try:
        return [gallery.index_of_id(text)]
    except RetrievalAppError:
        pass
    wanted = text.casefold()
    by_name = [i for i, r in enumerate(gallery.records) if r.id.rsplit("/", 1)[-1].casefold() == wanted]
    return by_name or [i for i, r in enumerate(gallery.records) if wanted in r.id.casefold()]
