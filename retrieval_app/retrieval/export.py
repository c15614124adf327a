"""Embeddings and maps out to formats other tools open. Every write is atomic."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_numpy_save, atomic_write_bytes, atomic_write_text
from ..data.scan import ImageRecord
from ..errors import RetrievalAppError

FORMATS = ("npz", "csv", "parquet", "projector")


def _metadata(records: Sequence[ImageRecord]) -> dict[str, list[str]]:
    return {"id": [r.id for r in records], "class": [r.class_name for r in records], "path": [str(r.path) for r in records]}


def export_embeddings(records: Sequence[ImageRecord], embeddings: np.ndarray, out: str | Path, fmt: str) -> list[Path]:
    """Write `embeddings` (N, D) with id/class/path metadata; returns the files written."""
    out = Path(out)
    if len(records) != len(embeddings):
        raise RetrievalAppError("records and embeddings differ in length")
    if fmt == "npz":
        meta = _metadata(records)
        return [atomic_numpy_save(out, embeddings=embeddings.astype(np.float32), ids=np.asarray(meta["id"]), classes=np.asarray(meta["class"]), paths=np.asarray(meta["path"]))]
    if fmt == "csv":
        return [atomic_write_text(out, _csv_text(records, embeddings))]
    if fmt == "parquet":
        return [_write_parquet(records, embeddings, out)]
    if fmt == "projector":
        return _write_projector(records, embeddings, out)
    raise RetrievalAppError(f"export format must be one of {', '.join(FORMATS)}")


def _csv_text(records, embeddings) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "class", "path", *[f"e{i}" for i in range(embeddings.shape[1])]])
    for record, vector in zip(records, embeddings):
        writer.writerow([record.id, record.class_name, str(record.path), *[f"{v:.7g}" for v in vector]])
    return buffer.getvalue()


def _write_parquet(records, embeddings, out: Path) -> Path:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RetrievalAppError("Parquet export needs pyarrow: pip install 'retrieval-app[parquet]'") from None
    meta = _metadata(records)
    table = pa.table({**meta, "embedding": pa.array(list(embeddings.astype(np.float32)), type=pa.list_(pa.float32()))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return atomic_write_bytes(out, buffer.getvalue())


def _write_projector(records, embeddings, out: Path) -> list[Path]:
    """TensorBoard Embedding Projector's pair: vectors.tsv (no header) and metadata.tsv
    (a header row, required when there is more than one column)."""
    folder = out if out.suffix == "" else out.parent
    vectors = "\n".join("\t".join(f"{v:.7g}" for v in row) for row in embeddings) + "\n"
    clean = lambda text: str(text).replace("\t", " ").replace("\n", " ")  # noqa: E731
    metadata = "id\tclass\tpath\n" + "".join(f"{clean(r.id)}\t{clean(r.class_name)}\t{clean(r.path)}\n" for r in records)
    return [atomic_write_text(folder / "vectors.tsv", vectors), atomic_write_text(folder / "metadata.tsv", metadata)]


def map_figure(records: Sequence[ImageRecord], coords: np.ndarray, classes: Sequence[str], *, title: str = ""):
    """A plotly figure: one trace per class, hover shows id, class and path."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for label, name in enumerate(classes):
        rows = [i for i, r in enumerate(records) if r.label == label]
        if not rows:
            continue
        figure.add_trace(go.Scattergl(
            x=coords[rows, 0], y=coords[rows, 1], mode="markers", name=name, marker={"size": 7},
            customdata=[[records[i].id, str(records[i].path)] for i in rows],
            hovertemplate="%{customdata[0]}<br>class: " + name + "<br>%{customdata[1]}<extra></extra>",
        ))
    figure.update_layout(title=title, legend_title_text="class", xaxis={"showticklabels": False}, yaxis={"showticklabels": False}, template="plotly_white")
    return figure


def export_map_html(records: Sequence[ImageRecord], coords: np.ndarray, classes: Sequence[str], out: str | Path, *, title: str = "Embedding map") -> Path:
    """A standalone HTML file (plotly.js inlined: it opens offline)."""
    html = map_figure(records, coords, classes, title=title).to_html(include_plotlyjs=True, full_html=True)
    return atomic_write_text(out, html)
