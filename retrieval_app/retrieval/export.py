"""Embeddings and maps out to formats other tools open. Every write is atomic.

- `npz`: `embeddings` (N, D) float32, `ids`, `classes` (class name per image), `paths`,
  `labels` (int64), `class_names` (all classes, label order).
- `csv`: header `id,class,path,e0..e{D-1}`, one row per image, floats with 9
  significant digits (float32 round-trips exactly).
- `parquet` (needs pyarrow, `pip install 'retrieval-app[parquet]'`): columns `id`,
  `class`, `path`, `label`, `embedding` (fixed-size list of float32).
- `projector`: TensorBoard Embedding Projector's pair in a folder: `vectors.tsv`
  (tab-separated floats, no header) and `metadata.tsv` (header row `id\\tclass\\tpath`:
  the projector requires a header when there is more than one column; tabs and
  newlines inside values are replaced by spaces).
- `export_map_html`: a standalone interactive plotly map, plotly.js inlined (opens
  offline), one trace per class, hover shows id, class and path.

Text formats stay valid UTF-8: a file name that is not (lone surrogates in Python) is
written with its bytes as backslash escapes (`caf\\xe9`); `.npz` keeps the exact name."""

from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_numpy_save, atomic_write_bytes, atomic_write_text
from ..choices import EXPORT_FORMATS
from ..data.scan import ImageRecord
from ..errors import RetrievalAppError

FORMATS = EXPORT_FORMATS
WEBGL_FROM = 5_000  # points; below, SVG markers (sharper, no WebGL needed)


def export_embeddings(records: Sequence[ImageRecord], embeddings: np.ndarray, out: str | Path, fmt: str, *, classes: Sequence[str] | None = None) -> list[Path]:
    """Write `embeddings` (N, D) with each record's id/class/path; returns the files
    written. `fmt`: one of `FORMATS`; for "projector" `out` is a folder."""
    if fmt not in FORMATS:
        raise RetrievalAppError(f"export format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(records) != len(embeddings):
        raise RetrievalAppError(f"{len(records)} records but embeddings of shape {embeddings.shape}")
    out = check_output_path(out, fmt)
    with _user_errors(out):
        if fmt == "npz":
            return [_write_npz(records, embeddings, out, classes)]
        if fmt == "csv":
            return [atomic_write_text(out, _utf8(_csv_text(records, embeddings)))]
        if fmt == "parquet":
            return [_write_parquet(records, embeddings, out)]
        return _write_projector(records, embeddings, out)


def check_output_path(out: str | Path, fmt: str) -> Path:
    """`out` as a Path when it can take `fmt` (one of `FORMATS`, or "html" for a map);
    otherwise a `RetrievalAppError` saying why, so callers can refuse before any work:
    a folder where a file goes, a file where the projector's folder goes, or a file
    where a parent folder must be."""
    out = Path(out)
    target = _projector_folder(out) if fmt == "projector" else out
    if fmt == "projector" and target.exists() and not target.is_dir():
        raise RetrievalAppError(f"{target} is a file; --format projector writes vectors.tsv and metadata.tsv into a folder")
    if fmt != "projector" and target.is_dir():
        raise RetrievalAppError(f"{target} is a folder; the output must be a file name, e.g. {target / ('embeddings.' + fmt)}")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RetrievalAppError(f"cannot write {target}: {parent} is a file, not a folder")
            break
    return out


@contextmanager
def _user_errors(out: Path):
    """A failed write (permission, full disk, ...) is the user's one-line error."""
    try:
        yield
    except OSError as exc:
        raise RetrievalAppError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from exc


def _projector_folder(out: Path) -> Path:
    return out.parent if out.suffix.lower() == ".tsv" else out


def _write_npz(records, embeddings: np.ndarray, out: Path, classes: Sequence[str] | None) -> Path:
    if classes is None:
        by_label = {r.label: r.class_name for r in records}
        classes = [by_label.get(i, "") for i in range(max(by_label, default=-1) + 1)]
    return atomic_numpy_save(
        out,
        embeddings=embeddings,
        ids=np.asarray([r.id for r in records], dtype=str),
        classes=np.asarray([r.class_name for r in records], dtype=str),
        paths=np.asarray([str(r.path) for r in records], dtype=str),
        labels=np.asarray([r.label for r in records], dtype=np.int64),
        class_names=np.asarray(list(classes), dtype=str),
    )


def _csv_text(records, embeddings: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "class", "path", *[f"e{i}" for i in range(embeddings.shape[1])]])
    for record, vector in zip(records, embeddings):
        writer.writerow([record.id, record.class_name, str(record.path), *[f"{v:.9g}" for v in vector.tolist()]])
    return buffer.getvalue()


def _write_parquet(records, embeddings: np.ndarray, out: Path) -> Path:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RetrievalAppError("Parquet export needs pyarrow: pip install 'retrieval-app[parquet]' (or export npz/csv)") from None
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(embeddings).reshape(-1), type=pa.float32()), embeddings.shape[1])
    table = pa.table({
        "id": [_utf8(r.id) for r in records],
        "class": [_utf8(r.class_name) for r in records],
        "path": [_utf8(r.path) for r in records],
        "label": pa.array([r.label for r in records], type=pa.int64()),
        "embedding": vectors,
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return atomic_write_bytes(out, buffer.getvalue())


def _utf8(value) -> str:
    """`value` as text that encodes to UTF-8: a file name that is not valid UTF-8 (lone
    surrogates in Python) shows its bytes as backslash escapes (`\xff`), as the command
    line prints it, rather than failing the whole export."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _tsv_field(value) -> str:
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _write_projector(records, embeddings: np.ndarray, out: Path) -> list[Path]:
    folder = _projector_folder(out)
    vectors = "".join("\t".join(f"{v:.9g}" for v in row) + "\n" for row in embeddings.tolist())
    metadata = "id\tclass\tpath\n" + "".join(f"{_tsv_field(r.id)}\t{_tsv_field(r.class_name)}\t{_tsv_field(r.path)}\n" for r in records)
    return [atomic_write_text(folder / "vectors.tsv", vectors), atomic_write_text(folder / "metadata.tsv", _utf8(metadata))]


def map_figure(records: Sequence[ImageRecord], coords: np.ndarray, classes: Sequence[str], *, title: str = ""):
    """A plotly figure of a 2-D map: one trace (colour, legend entry) per class; hover
    shows the image id, class and path."""
    import plotly.graph_objects as go

    from ..palette import class_colours

    coords = np.asarray(coords, dtype=np.float32)
    if coords.shape != (len(records), 2):
        raise RetrievalAppError(f"{len(records)} records but map coordinates of shape {coords.shape}")
    scatter = go.Scattergl if len(records) >= WEBGL_FROM else go.Scatter
    labels = np.asarray([r.label for r in records], dtype=np.int64)
    figure = go.Figure()
    colours = class_colours(len(classes))  # distinct up to 60 classes, as in the app
    for label, name in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        if not len(rows):
            continue
        figure.add_trace(scatter(
            x=coords[rows, 0], y=coords[rows, 1], mode="markers", name=_utf8(name), marker={"size": 7, "opacity": 0.85, "color": colours[label]},
            customdata=[[_utf8(records[i].id), _utf8(name), _utf8(records[i].path)] for i in rows],
            # Values come through customdata, not the template, so no name can inject markup.
            hovertemplate="<b>%{customdata[0]}</b><br>class: %{customdata[1]}<br>%{customdata[2]}<extra></extra>",
        ))
    figure.update_layout(
        title=_utf8(title), legend_title_text="class", template="plotly_white", hovermode="closest",
        xaxis={"showticklabels": False, "title": None}, yaxis={"showticklabels": False, "title": None, "scaleanchor": "x"},
    )
    return figure


def export_map_html(records: Sequence[ImageRecord], coords: np.ndarray, classes: Sequence[str], out: str | Path, *, title: str = "Embedding map") -> Path:
    """A standalone HTML file of the map (plotly.js inlined: it opens offline)."""
    out = check_output_path(out, "html")
    html = map_figure(records, coords, classes, title=title).to_html(include_plotlyjs=True, full_html=True)
    with _user_errors(out):
        return atomic_write_text(out, html)
