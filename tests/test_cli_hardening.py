"""Command-line edges: bad devices, output paths and checkpoints are one `error:` line
(exit 2), never a traceback; `eval` needs no --model; `--weights` on every command that
embeds, and the offline message names that flag."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from retrieval_app.cli import main
from synthetic import write_class_folder

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("hardening") / "shapes", n_classes=3, per_class=4, size=32)


def run(argv, capsys):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def only_error_line(err: str) -> str:
    """stderr must be exactly one line, and an `error:` one."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("command", [["embed", "{folder}"], ["eval", "{folder}"], ["search", "{query}", "--gallery", "{folder}"]])
def test_an_unknown_device_is_one_line(command, folder, capsys):
    argv = [a.format(folder=folder, query=folder / "class_00" / "img_000.jpg") for a in command]
    code, _, err = run([*argv, "--device", "tpu9"], capsys)
    assert code == 2 and "unknown device 'tpu9'" in only_error_line(err)


def test_train_with_an_unknown_device_is_one_line(folder, tmp_path, capsys):
    code, _, err = run(["train", folder, "--device", "tpu9", "--out", tmp_path / "m", "--epochs", "1"], capsys)
    assert code == 2 and "unknown device 'tpu9'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["embed", "{folder}", "--out", "{dir}"], "is a folder"),
        (["map", "{folder}", "--method", "pca", "--out", "{dir}"], "is a folder"),
        (["export", "{folder}", "--format", "csv", "--out", "{dir}"], "is a folder"),
        (["export", "{folder}", "--format", "projector", "--out", "{file}"], "is a file"),
        (["embed", "{folder}", "--out", "{file}/e.npz"], "is a file, not a folder"),
    ],
)
def test_an_unusable_output_path_is_refused_before_any_work(argv, expected, folder, tmp_path, capsys):
    (tmp_path / "out_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    names = {"folder": folder, "dir": tmp_path / "out_dir", "file": tmp_path / "a_file"}
    code, _, err = run([a.format(**names) for a in argv], capsys)
    assert code == 2 and expected in only_error_line(err)
    assert not (tmp_path / "cache").exists()  # refused before embedding anything


class WouldRunCode:
    """Unpickling this creates the marker file: what a malicious model.pt would do."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_damaged_and_malicious_checkpoints_are_one_line_and_never_run(folder, tmp_path, capsys):
    random_bytes = tmp_path / "random" / "model.pt"
    random_bytes.parent.mkdir()
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil" / "model.pt"
    evil.parent.mkdir()
    torch.save({"format": 1, "state_dict": {}, "payload": WouldRunCode(marker)}, evil)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)  # loads fine, but is not ours
    for checkpoint in (random_bytes, random_bytes.parent, evil, foreign):
        code, _, err = run(["eval", folder, "--model", checkpoint], capsys)
        path = checkpoint / "model.pt" if checkpoint.is_dir() else checkpoint
        assert code == 2 and only_error_line(err) == f"error: {path}: not a retrieval-app checkpoint (or damaged)"
    assert not marker.exists()


def test_eval_defaults_to_the_default_backbone(folder, capsys):
    code, out, _ = run(["eval", folder], capsys)
    assert code == 0 and "12 images, 3 classes, model efficientnet_lite0" in out


@pytest.mark.parametrize("command", ["eval", "embed", "search", "map", "export", "train"])
def test_every_embedding_command_takes_weights(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--weights FILE" in capsys.readouterr().out


def test_weights_file_gives_a_backbone_its_weights_offline(folder, tmp_path, capsys):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    code, out, err = run(["embed", folder, "--model", "resnet18", "--weights", weights, "--out", tmp_path / "e.npz"], capsys)
    assert code == 0, err
    assert "12 images in 3 classes embedded (512 dims)" in out
    with np.load(tmp_path / "e.npz") as data:
        assert data["embeddings"].shape == (12, 512) and np.isfinite(data["embeddings"]).all()


def test_weights_with_a_checkpoint_is_refused(folder, tmp_path, capsys):
    code, _, err = run(["embed", folder, "--model", tmp_path / "some.pt", "--weights", tmp_path / "w.pth"], capsys)
    assert code == 2 and "--weights applies to a backbone name" in only_error_line(err)


def test_offline_message_names_the_weights_flag(folder, tmp_path, monkeypatch, capsys):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    code, _, err = run(["embed", folder, "--model", "resnet18"], capsys)
    line = only_error_line(err)
    assert code == 2 and "Pass --weights FILE" in line and "weights=FILE" not in line
