"""Looking closer at the labels: a clicked point's hardest positive and nearest negative,
and the suspicious-labels view (images whose neighbours mostly belong to another class).
The core answers (`Gallery.hardest_pair_of_index`, `retrieval.labels`); this module
turns the answers into gallery items, table rows and a CSV file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..retrieval.labels import SuspiciousLabel, suspicious_labels, write_suspicious_labels_csv

SUSPICIOUS_HEADERS = ["rank", "image", "filed under", "looks like", "share of k", "gap"]
SUSPICIOUS_SHOWN = 24  # pairs of thumbnails in the view (the table and the CSV list all)


def hardest_pair_items(state, index: int) -> tuple[list[tuple[str, str]], str]:
    """Gallery items for point `index`: its farthest image of the same class and its
    nearest image of another class, each captioned with the distance; and one line
    saying the margin between them."""
    gallery = state.require_gallery()
    positive, negative = gallery.hardest_pair_of_index(index)
    items, words = [], []
    if gallery.labels[gallery.check_index(index)] < 0:
        return items, "This image has no label: it has no positive or negative to show."
    if positive is not None:
        items.append((str(state.thumb(positive.index)), f"hardest positive ✓ {positive.label} · {positive.distance:.3f} · {positive.id}"))
    if negative is not None:
        items.append((str(state.thumb(negative.index)), f"nearest negative ✗ {negative.label} · {negative.distance:.3f} · {negative.id}"))
    if positive is not None and negative is not None:
        gap = negative.distance - positive.distance
        verdict = "every image of its class is nearer than any other class" if gap > 0 else "an image of another class is nearer than one of its own"
        words.append(f"d(nearest negative) − d(hardest positive) = {gap:+.3f}: {verdict}.")
    elif positive is None:
        words.append("It is the only image of its class: no positive.")
    return items, " ".join(words)


def find_suspicious(state, k: int) -> tuple[list[SuspiciousLabel], list[list], list[tuple[str, str]], str, str]:
    """(hits, table rows, thumbnail pairs, CSV path, summary) of the loaded folder."""
    gallery = state.require_gallery()
    hits = suspicious_labels(gallery, k=int(k))
    rows = [[rank, hit.id, hit.label, hit.looks_like, f"{hit.share:.0%}", f"{hit.gap:+.3f}"] for rank, hit in enumerate(hits, 1)]
    pairs = []
    for rank, hit in enumerate(hits[:SUSPICIOUS_SHOWN], 1):
        pairs.append((str(state.thumb(hit.index)), f"{rank}. filed under {hit.label} · {hit.id}"))
        pairs.append((str(state.thumb(hit.nearest)), f"{rank}. looks like {hit.looks_like} · {hit.nearest_id}"))
    csv_path = write_suspicious_labels_csv(hits, Path(tempfile.mkdtemp(prefix="retrieval-app-")) / "suspicious_labels.csv")
    summary = (f"**{len(hits)} of {len(gallery)} images** have neighbours (k = {int(k)}) mostly of one other class, most suspicious first "
               f"(gap: how much nearer the class it looks like is than its own)." if hits else f"No suspicious labels among {len(gallery)} images (k = {int(k)}).")
    if len(hits) > SUSPICIOUS_SHOWN:
        summary += f" Thumbnails of the first {SUSPICIOUS_SHOWN}; the table and the CSV list all."
    return hits, rows, pairs, str(csv_path), summary
