"""`retrieval-app embed / search / map / export`: output shapes and one-line errors."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from retrieval_app.cli import main
from synthetic import write_class_folder


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RETRIEVAL_APP_MODELS_DIR", str(tmp_path / "models"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("cli-retrieval") / "shapes", n_classes=3, per_class=6, size=48)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_search_json_one_object_per_query(folder, capsys):
    first, second = folder / "class_01" / "img_002.jpg", folder / "class_02" / "img_000.jpg"
    assert main(["search", str(first), str(second), "--gallery", str(folder), "-k", "4", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    results = [json.loads(line) for line in lines]
    assert [r["query"] for r in results] == [str(first), str(second)]
    for result, own_id in zip(results, ["class_01/img_002.jpg", "class_02/img_000.jpg"]):
        assert set(result) == {"query", "neighbours"} and len(result["neighbours"]) == 4
        assert all(set(n) == {"id", "path", "label", "distance"} for n in result["neighbours"])
        top = result["neighbours"][0]
        assert top["id"] == own_id and top["distance"] < 1e-4 and top["label"] == own_id.split("/")[0]
        assert top["path"] == str(folder / own_id)
        distances = [n["distance"] for n in result["neighbours"]]
        assert distances == sorted(distances)


def test_search_table_and_exact_backend(folder, capsys):
    query = folder / "class_00" / "img_001.jpg"
    assert main(["search", str(query), "--gallery", str(folder), "-k", "3", "--backend", "exact"]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith(str(query)) and "euclidean" in out[0]
    rows = [line.split() for line in out[2:]]
    assert [row[0] for row in rows] == ["1", "2", "3"] and rows[0][3] == "class_00/img_001.jpg"
    assert "search: exact search" in captured.err  # the backend, on stderr
    # IVF-Flat on request: its measured recall is reported, the ranking agrees here
    assert main(["search", str(query), "--gallery", str(folder), "-k", "3", "--backend", "ivf_flat"]) == 0
    captured = capsys.readouterr()
    assert "search: IVF-Flat" in captured.err and "recall@10" in captured.err
    assert [line.split()[3] for line in captured.out.splitlines()[2:]] == [row[3] for row in rows]


def test_embed_reports_cache_hits_and_writes_npz(folder, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(folder), "--out", str(out)]) == 0
    assert "18 images in 3 classes" in capsys.readouterr().out
    assert main(["embed", str(folder)]) == 0
    assert "18 from cache, 0 computed" in capsys.readouterr().out
    with np.load(out) as data:
        assert data["embeddings"].shape == (18, 1280) and data["ids"][0] == "class_00/img_000.jpg"
        assert data["class_names"].tolist() == ["class_00", "class_01", "class_02"]
        np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-4)  # bare backbone: L2-normalised


def test_map_writes_a_standalone_html(folder, tmp_path, capsys):
    out = tmp_path / "maps" / "map.html"
    assert main(["map", str(folder), "--method", "pca", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    assert len(html) > 1_000_000 and all(f'"name":"class_0{i}"' in html for i in range(3))


def test_export_csv_and_projector(folder, tmp_path, capsys):
    assert main(["export", str(folder), "--format", "csv", "--out", str(tmp_path / "e.csv")]) == 0
    with open(tmp_path / "e.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 19 and rows[0][:3] == ["id", "class", "path"] and len(rows[0]) == 3 + 1280
    assert main(["export", str(folder), "--format", "projector", "--out", str(tmp_path / "proj")]) == 0
    assert (tmp_path / "proj" / "metadata.tsv").read_text().splitlines()[0] == "id\tclass\tpath"
    assert "vectors.tsv" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["embed", "/no/such/folder"], "does not exist"),
        (["search", "QUERY", "--gallery", "/no/such/folder"], "does not exist"),
        (["search", "/no/such/query.jpg", "--gallery", "FOLDER"], "query image"),
        (["search", "QUERY", "--gallery", "FOLDER", "-k", "0"], "-k must be at least 1"),
        (["map", "FOLDER", "--model", "no_such_model", "--method", "pca"], "neither a checkpoint"),
        (["export", "FOLDER", "--format", "csv", "--out", "OUT", "--batch-size", "0"], "batch size"),
        (["embed", "ONE_CLASS"], "only one class"),
    ],
)
def test_bad_input_is_one_clear_line(argv, expected, folder, tmp_path, capsys):
    one_class = tmp_path / "one"
    write_class_folder(one_class, n_classes=1, per_class=3, size=32)
    names = {"FOLDER": str(folder), "QUERY": str(folder / "class_00" / "img_000.jpg"), "OUT": str(tmp_path / "x.csv"), "ONE_CLASS": str(one_class)}
    code = main([names.get(arg, arg) for arg in argv])
    assert code != 0
    assert expected in one_error_line(capsys)


def test_parquet_without_pyarrow_fails_before_embedding(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["export", str(folder), "--format", "parquet", "--out", str(tmp_path / "e.parquet")]) == 2
    assert "pyarrow" in one_error_line(capsys)
    assert not (tmp_path / "cache").exists()  # nothing was embedded


def test_argument_errors_exit_nonzero(folder, capsys):
    for argv in (["map", str(folder), "--method", "mds"], ["export", str(folder), "--format", "xml", "--out", "x"], ["search", "--gallery", str(folder)]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
