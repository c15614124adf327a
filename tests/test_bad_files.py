"""The bad-file corpus (tests/bad_files.py) through scan, split, thumbnails and every
command (embed, eval, search, map, export, one quick training epoch): every skipped file
is listed with its reason, every readable one is used, non-UTF-8 names work end to end,
and nothing is ever written into the folder."""

from __future__ import annotations

import csv
import json
import os
import stat
import warnings

import pytest
from PIL import Image

from bad_files import LONG_NAME, NON_UTF8_CLASS, NON_UTF8_FILE, snapshot, write_bad_file_corpus
from retrieval_app.cli import main
from retrieval_app.cli.report import printable
from retrieval_app.data import scan_folder, split_records
from retrieval_app.thumbnails import ensure_thumbnails


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_bad_file_corpus(tmp_path_factory.mktemp("bad") / "corpus")


@pytest.fixture(scope="module")
def app_dirs(tmp_path_factory):
    """One cache for the module (each command reuses the embeddings of the first), and
    umask 0022, under which outputs must come out 0644."""
    base = tmp_path_factory.mktemp("app")
    previous_umask = os.umask(0o022)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVAL_APP_CACHE_DIR", str(base / "cache"))
        patch.setenv("RETRIEVAL_APP_MODELS_DIR", str(base / "models"))
        yield base
    os.umask(previous_umask)


def test_scan_lists_every_bad_file_and_keeps_every_readable_one(corpus):
    scan = scan_folder(corpus.root)
    assert {s.path: s.reason for s in scan.skipped}.keys() == corpus.skipped.keys()
    for skipped in scan.skipped:
        assert corpus.skipped[skipped.path] in skipped.reason, skipped
    assert {r.id for r in scan.records} == corpus.readable
    assert scan.classes == sorted(["plain", "odd", NON_UTF8_CLASS, "solo"])
    assert len(scan.warnings) == len(corpus.warnings)
    for word, warning in zip(corpus.warnings, scan.warnings):
        assert word in warning


def test_non_utf8_and_long_names_pass_split_and_thumbnails(corpus, tmp_path):
    records = scan_folder(corpus.root).records
    split = split_records(records, seed=3)
    assert sorted(r.id for r in split.train + split.val_seen + split.val_unseen) == sorted(r.id for r in records)
    thumbs = ensure_thumbnails(records, cache_dir=tmp_path)
    assert all(path is not None and path.is_file() for path in thumbs)
    assert len(set(thumbs)) == len(records)
    by_id = dict(zip((r.id for r in records), thumbs))
    with Image.open(by_id[f"odd/{NON_UTF8_FILE}"]) as thumb, Image.open(by_id[f"odd/{LONG_NAME}"]) as long_thumb:
        assert thumb.size == long_thumb.size == (24, 20)


def run(argv, capsys):
    """main(argv) → (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_reported(err: str, corpus) -> None:
    """Every skipped file on its own line with its reason, every scan warning, nothing raw."""
    lines = err.splitlines()
    for path, word in corpus.skipped.items():
        assert any(line.startswith(f"skipped {path}: ") and word in line for line in lines), path
    for word in corpus.warnings:
        assert any(line.startswith("warning: ") and word in line for line in lines), word
    assert "Traceback" not in err and "Warning:" not in err and "\r" not in err


COMMANDS = {
    "embed": ["embed", "{root}", "--out", "{out}/e.npz"],
    "eval": ["eval", "{root}", "--json"],  # no --model: the default backbone
    "search_json": ["search", "{query}", "--gallery", "{root}", "-k", "40", "--json"],
    "search_table": ["search", "{query}", "--gallery", "{root}", "-k", "40"],
    "map": ["map", "{root}", "--method", "pca", "--out", "{out}/map.html"],
    "export": ["export", "{root}", "--format", "csv", "--out", "{out}/e.csv"],
    # --blend 1: keep the trained head whatever the folds say, so a model file is written
    "train": ["train", "{root}", "--mode", "quick", "--epochs", "1", "--blend", "1", "--out", "{out}/model"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_lists_what_it_skipped_and_writes_nothing_into_the_folder(command, corpus, app_dirs, capsys):
    out_dir = app_dirs / command
    names = {"root": corpus.root, "out": out_dir, "query": corpus.root / "odd" / NON_UTF8_FILE}
    before = snapshot(corpus.root)
    code, out, err = run([arg.format(**names) for arg in COMMANDS[command]], capsys)
    assert code == 0, err
    assert_reported(err, corpus)
    assert snapshot(corpus.root) == before
    check_output[command](out, err, out_dir, corpus)
    for path in out_dir.rglob("*"):  # atomic writes: no temp file left, normal permissions
        assert not path.name.startswith(".")
        assert path.is_dir() or stat.S_IMODE(path.stat().st_mode) == 0o644, path


def _embed(out, err, out_dir, corpus):
    assert f"{len(corpus.readable)} images in 4 classes embedded" in out
    assert (out_dir / "e.npz").is_file()


def _eval(out, err, out_dir, corpus):
    report = json.loads(out)
    assert report["model"] == "efficientnet_lite0"
    assert (report["n_images"], report["n_classes"], report["n_skipped"]) == (len(corpus.readable), 4, len(corpus.skipped))


def _search_json(out, err, out_dir, corpus):
    (line,) = out.splitlines()
    result = json.loads(line)
    assert result["query"].endswith(NON_UTF8_FILE)
    ids = [n["id"] for n in result["neighbours"]]
    assert sorted(ids) == sorted(corpus.readable) and f"odd/{NON_UTF8_FILE}" in ids[:2]  # itself (or its twin) first


def _search_table(out, err, out_dir, corpus):
    lines = out.splitlines()
    assert lines[0].endswith("odd/\\xff\\xfe.png  (euclidean distance)")
    assert {line.split()[-1] for line in lines[2:]} == {printable(i) for i in corpus.readable}


def _map(out, err, out_dir, corpus):
    html = (out_dir / "map.html").read_text(encoding="utf-8")
    assert "caf\\\\xe9" in html and "\\\\xff\\\\xfe.png" in html  # the names' bytes, escaped in JSON


def _export(out, err, out_dir, corpus):
    with open(out_dir / "e.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1 + len(corpus.readable)
    assert {row[0] for row in rows[1:]} == {printable(i) for i in corpus.readable}


def _train(out, err, out_dir, corpus):
    assert "fold 1 step" in err and "model:" in out
    assert (out_dir / "model" / "model.pt").is_file()


check_output = {"embed": _embed, "eval": _eval, "search_json": _search_json, "search_table": _search_table, "map": _map, "export": _export, "train": _train}


def test_a_very_large_image_is_one_warning_line_not_pillows_warning(tmp_path, app_dirs, capsys):
    root = tmp_path / "big"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(root / name / f"{i}.png")
    Image.new("1", (9500, 9500), 0).save(root / "a" / "large.png")  # 90 MP: above Pillow's warning threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run(["embed", root], capsys)
    assert code == 0 and "5 images in 2 classes" in out
    assert [line for line in err.splitlines() if "large.png" in line] == ["warning: a/large.png: very large image (9500×9500 pixels): decoding it takes seconds and gigabytes"]
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
