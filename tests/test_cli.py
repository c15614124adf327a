"""The `retrieval-app` command: train and eval, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval_app.cli import main
from synthetic import write_class_folder

METRIC_KEYS = {"precision_at_1", "recall_at_1", "recall_at_5", "recall_at_10", "r_precision", "map_at_r", "n_images", "n_classes"}


pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("cli") / "shapes", n_classes=5, per_class=8, size=64)


def test_console_script_help_lists_commands():
    exe = Path(sys.executable).with_name("retrieval-app")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "eval"):
        assert command in out.stdout
    module = subprocess.run([sys.executable, "-m", "retrieval_app", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and "--mining" in module.stdout


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "/no/such/folder", "--epochs", "1"], "does not exist"),
        (["eval", "/no/such/folder", "--model", "efficientnet_lite0"], "does not exist"),
        (["eval", "FOLDER", "--model", "no_such_model"], "neither a checkpoint"),
        (["train", "FOLDER", "--backbone", "resnet18", "--epochs", "1"], "could not download resnet-18"),
    ],
)
def test_bad_input_is_one_clear_line(argv, expected, capsys, tmp_path, folder):
    code = main([str(folder) if arg == "FOLDER" else arg for arg in argv])
    err = capsys.readouterr().err.strip()
    assert code != 0
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in err
    assert expected in error_lines[0].lower()


def test_bad_argument_values_exit_nonzero(folder, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(folder), "--mining", "nonsense"])
    assert exit_info.value.code != 0
    code = main(["train", str(folder), "--out", str(tmp_path / "m"), "--margin", "-1"])
    assert code == 2 and "margin" in capsys.readouterr().err


def test_train_then_eval_json(folder, tmp_path, capsys):
    out = tmp_path / "models" / "shapes"
    # The shapes are told apart perfectly by the backbone already, so the folds would
    # keep it; --blend 1 keeps the trained head anyway (the dial's other end).
    assert main(["train", str(folder), "--out", str(out), "--epochs", "2", "--blend", "1", "--batch-size", "16", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    # 5 classes: two folds (a fold must hold out two classes and train on two)
    assert "fold 2 step" in captured.err and "fold 3" not in captured.err and "MAP@R" in captured.err
    assert "dial at" in captured.out and "<- kept" in captured.out and "model:" in captured.out

    assert main(["eval", str(folder), "--model", str(out), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert METRIC_KEYS <= set(trained)
    assert trained["n_images"] == 40 and trained["n_classes"] == 5

    assert main(["eval", str(folder), "--model", "efficientnet_lite0", "--json"]) == 0
    bare = json.loads(capsys.readouterr().out)
    assert 0 <= bare["map_at_r"] <= 1 and bare["precision_at_1"] >= bare["map_at_r"] - 1e-9
    # models/NAME resolves through the models directory as well
    assert main(["eval", str(folder), "--model", "shapes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["map_at_r"] == pytest.approx(trained["map_at_r"])


def test_train_keeps_the_backbone_when_nothing_beats_it(folder, tmp_path, capsys):
    out = tmp_path / "models" / "perfect"
    assert main(["train", str(folder), "--out", str(out), "--epochs", "2", "--batch-size", "16", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "Kept the backbone" in captured.out and "none saved" in captured.out
    assert not (out / "model.pt").exists()
