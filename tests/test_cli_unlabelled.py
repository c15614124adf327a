"""A folder without labels through the command line: embed → map → search → eval →
train, and labels from a CSV with bad rows (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retrieval_app.cli import main
from synthetic import write_class_folder

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """12 images of 3 kinds of shapes in one folder, the kind only in the file name."""
    base = tmp_path_factory.mktemp("flat")
    source = write_class_folder(base / "src", n_classes=3, per_class=4, size=48)
    root = base / "photos"
    root.mkdir()
    for path in sorted(source.glob("*/*.jpg")):
        shutil.copy(path, root / f"{path.parent.name}_{path.name}")
    return root


def test_a_flat_folder_through_embed_map_search_eval_and_train(flat, tmp_path, capsys):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in flat.iterdir())
    assert main(["embed", str(flat), "--out", str(tmp_path / "e.npz")]) == 0
    assert "12 images without labels embedded" in capsys.readouterr().out

    assert main(["map", str(flat), "--method", "pca", "--out", str(tmp_path / "map.html")]) == 0
    out = capsys.readouterr().out
    assert "coloured by" in out and "k-means clusters" in out
    html = (tmp_path / "map.html").read_text(encoding="utf-8")
    assert '"cluster 1"' in html and '"cluster 2"' in html  # legend entries: one trace per cluster

    query = flat / "class_01_img_000.jpg"
    assert main(["search", str(query), "--gallery", str(flat), "-k", "3", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert hit["neighbours"][0]["id"] == "class_01_img_000.jpg" and hit["neighbours"][0]["distance"] < 1e-4
    assert all(n["label"] == "" for n in hit["neighbours"])

    # Metrics that need labels: said, not an error.
    assert main(["eval", str(flat), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labelled"] is False and "map_at_r" not in report and report["n_images"] == 12
    assert main(["eval", str(flat)]) == 0
    assert "no labels" in capsys.readouterr().out

    out_dir = tmp_path / "model"
    assert main(["train", str(flat), "--out", str(out_dir), "--views", "3", "--epochs", "1", "--batch-size", "8", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "no labels" in printed and ("Kept the fine-tuned" in printed or "Kept the backbone" in printed)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["dial"]["n_folds"] == 3 and summary["dial"]["baseline_unseen"] is not None
    if (out_dir / "model.pt").exists():  # a kept head searches the folder like any model
        assert main(["search", str(query), "--gallery", str(flat), "--model", str(out_dir), "-k", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["neighbours"][0]["id"] == "class_01_img_000.jpg"
    assert sorted((p.name, p.stat().st_mtime_ns) for p in flat.iterdir()) == before  # nothing written into the folder


def test_labels_from_a_csv_with_bad_rows(flat, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    rows = ["id,label"] + [f"class_0{c}_img_00{i}.jpg,kind{c}" for c in range(2) for i in range(4)]
    rows += ["not_there.jpg,kind0", "class_02_img_000.jpg", "class_02_img_001.jpg,,"]
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["eval", str(flat), "--labels", str(csv), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["labelled"] and report["n_labelled"] == 8 and report["n_classes"] == 2 and report["n_images"] == 12
    assert report["map_at_r"] > 0.5  # the two shapes are told apart
    errors = captured.err
    assert "line 10: unknown id 'not_there.jpg'" in errors
    assert "line 11: expected 2 fields (id,label), found 1" in errors
    assert "line 12: expected 2 fields (id,label), found 3" in errors
    assert main(["eval", str(flat), "--labels", str(tmp_path / "none.csv")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: labels file")
