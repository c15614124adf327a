"""Exports round trip: npz, CSV, Parquet, TensorBoard projector TSVs, HTML map."""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval_app.data.scan import ImageRecord
from retrieval_app.errors import RetrievalAppError
from retrieval_app.retrieval import export_embeddings, export_map_html, map_figure

CLASSES = ["cats", "dogs", "odd\tname"]


@pytest.fixture
def records(tmp_path):
    rows = []
    for i in range(7):
        label = i % 3
        image_id = f"{CLASSES[label]}/img {i}.jpg"  # spaces and a tab in a class name
        rows.append(ImageRecord(image_id, tmp_path / "root" / image_id, label, CLASSES[label], 100 + i, 10**18 + i))
    return rows


@pytest.fixture
def vectors():
    return np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32) * np.float32(1e3)


def test_npz_round_trip(records, vectors, tmp_path):
    (path,) = export_embeddings(records, vectors, tmp_path / "out" / "e.npz", "npz", classes=CLASSES)
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["embeddings"], vectors)
        assert data["ids"].tolist() == [r.id for r in records]
        assert data["classes"].tolist() == [r.class_name for r in records]
        assert data["paths"].tolist() == [str(r.path) for r in records]
        assert data["labels"].tolist() == [r.label for r in records]
        assert data["class_names"].tolist() == CLASSES


def test_csv_round_trip_is_exact(records, vectors, tmp_path):
    (path,) = export_embeddings(records, vectors, tmp_path / "e.csv", "csv")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "class", "path", "e0", "e1", "e2", "e3", "e4"] and len(rows) == 8
    assert [row[0] for row in rows[1:]] == [r.id for r in records]
    assert rows[3][1] == "odd\tname"  # quoted by the CSV writer, not mangled
    np.testing.assert_array_equal(np.asarray([row[3:] for row in rows[1:]], dtype=np.float32), vectors)


def test_parquet_round_trip(records, vectors, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    (path,) = export_embeddings(records, vectors, tmp_path / "e.parquet", "parquet")
    table = pq.read_table(path)
    assert table.column_names == ["id", "class", "path", "label", "embedding"]
    assert table["id"].to_pylist() == [r.id for r in records]
    np.testing.assert_array_equal(np.asarray(table["embedding"].to_pylist(), dtype=np.float32), vectors)


def test_parquet_without_pyarrow_is_a_clear_error(records, vectors, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(RetrievalAppError, match="pyarrow"):
        export_embeddings(records, vectors, tmp_path / "e.parquet", "parquet")
    assert not (tmp_path / "e.parquet").exists()


def test_projector_tsv_pair(records, vectors, tmp_path):
    vectors_tsv, metadata_tsv = export_embeddings(records, vectors, tmp_path / "projector", "projector")
    assert (vectors_tsv.name, metadata_tsv.name) == ("vectors.tsv", "metadata.tsv")
    lines = vectors_tsv.read_text().splitlines()
    assert len(lines) == 7 and all(len(line.split("\t")) == 5 for line in lines)  # no header
    np.testing.assert_array_equal(np.asarray([line.split("\t") for line in lines], dtype=np.float32), vectors)
    meta = metadata_tsv.read_text().splitlines()
    assert meta[0] == "id\tclass\tpath" and len(meta) == 8
    assert all(len(line.split("\t")) == 3 for line in meta)
    assert meta[3].split("\t")[:2] == ["odd name/img 2.jpg", "odd name"]  # tabs in values replaced


def test_bad_export_arguments(records, vectors, tmp_path):
    with pytest.raises(RetrievalAppError, match="format"):
        export_embeddings(records, vectors, tmp_path / "x", "hdf5")
    with pytest.raises(RetrievalAppError, match="records but"):
        export_embeddings(records[:3], vectors, tmp_path / "x.npz", "npz")


def test_writes_leave_no_temporary_files(records, vectors, tmp_path):
    out = tmp_path / "all"
    for fmt, name in (("npz", "e.npz"), ("csv", "e.csv"), ("parquet", "e.parquet"), ("projector", "p")):
        export_embeddings(records, vectors, out / name, fmt)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["e.csv", "e.npz", "e.parquet", "metadata.tsv", "vectors.tsv"]


def _figure_json(html: str) -> dict:
    """The figure spec plotly embeds in the page."""
    match = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{", html, re.S)
    assert match, "no Plotly.newPlot call in the page"
    return {"data": json.loads(match.group(1)), "layout": json.loads(match.group(2))}


def _values(array) -> list:
    """Plotly writes numpy arrays as {"dtype", "bdata": base64} typed arrays."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def test_html_map_has_one_trace_per_class_with_hover_and_inline_plotly(records, tmp_path):
    coords = np.arange(14, dtype=np.float32).reshape(7, 2)
    path = export_map_html(records, coords, CLASSES, tmp_path / "map.html", title="test map")
    html = path.read_text()
    assert "<script" in html and "plotly.js" in html.lower() and len(html) > 1_000_000  # plotly.js inlined: works offline
    assert not re.search(r"<script[^>]*\ssrc=", html)  # nothing fetched from the network
    figure = _figure_json(html)
    assert [trace["name"] for trace in figure["data"]] == CLASSES
    first = figure["data"][0]
    assert _values(first["x"]) == [0.0, 6.0, 12.0] and _values(first["y"]) == [1.0, 7.0, 13.0]  # records 0, 3, 6
    assert [row[0] for row in first["customdata"]] == ["cats/img 0.jpg", "cats/img 3.jpg", "cats/img 6.jpg"]
    assert "customdata[0]" in first["hovertemplate"] and "customdata[2]" in first["hovertemplate"]
    assert figure["layout"]["title"]["text"] == "test map"


def test_map_figure_skips_empty_classes_and_checks_shapes(records):
    figure = map_figure(records, np.zeros((7, 2)), [*CLASSES, "empty"])
    assert [trace.name for trace in figure.data] == CLASSES
    with pytest.raises(RetrievalAppError, match="coordinates"):
        map_figure(records, np.zeros((6, 2)), CLASSES)


def test_records_fixture_paths_are_absolute(records):
    assert all(Path(r.path).is_absolute() for r in records)
